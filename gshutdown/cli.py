"""``gshutdown [options] APP``: parse options, load the app, hand over to the runner.

Every option also reads a ``GSHUTDOWN_<NAME>`` environment variable (the
command line wins). Bad input ends with one line on stderr and exit status 2;
a port already in use, with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any, Callable, NoReturn, Optional, Sequence

from gshutdown.addresses import bind_failure_reason, describe_listener

EXIT_START_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the brief for every bad input.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"GSHUTDOWN_{name}", default)


_YES = ("1", "true", "yes", "on")
_NO = ("", "0", "false", "no", "off")


def _env_flag(name: str) -> bool:
    """A yes/no ``GSHUTDOWN_<NAME>``: 1/true/yes/on or 0/false/no/off (or unset)."""
    value = _env(name, "").strip().lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise argparse.ArgumentTypeError(f"GSHUTDOWN_{name}: want 1/true/yes/on or 0/false/no/off, not {value!r}")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"must be zero or more seconds: {text!r}")
    return value


def _limit_seconds(text: str) -> Optional[float]:
    """A timeout that must be more than 0 seconds, or ``none`` for no limit."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:  # NaN included
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, or 'none' for no limit: {text!r}")
    return value


def _socket_mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r}") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"permission bits go from 000 to 777: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def parse_bind(text: str) -> Any:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or ``unix:PATH`` to a listener."""
    if text.startswith("unix:"):
        if len(text) == 5:
            raise argparse.ArgumentTypeError("unix: needs a path")
        return text
    host, sep, port = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"bad address {text!r} (want HOST:PORT, [::1]:PORT or unix:PATH)")
    if host.startswith("["):
        if not host.endswith("]"):
            raise argparse.ArgumentTypeError(f"bad address {text!r}")
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"bad address {text!r} (put IPv6 addresses in brackets)")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return (host or "0.0.0.0", number)


def build_parser() -> argparse.ArgumentParser:
    from gshutdown import __version__

    p = _Parser(
        prog="gshutdown",
        description="Serve a WSGI application on gevent, and stop it without losing a request.",
    )
    p.add_argument("app", metavar="APP", help="MODULE:NAME, MODULE (finds app/application), or FILE.py[:NAME]")
    p.add_argument(
        "-b",
        "--bind",
        action="append",
        type=parse_bind,
        help="HOST:PORT, [::1]:PORT or unix:PATH; repeatable (default 127.0.0.1:8000)",
    )
    p.add_argument(
        "--graceful-timeout",
        type=_seconds,
        default=_env("GRACEFUL_TIMEOUT", "30"),
        help="seconds a graceful shutdown may take before connections are forced (default 30)",
    )
    p.add_argument(
        "--drain-delay",
        type=_seconds,
        default=_env("DRAIN_DELAY", "0"),
        help="seconds to keep serving with readiness at 503 before closing the listener (default 0)",
    )
    p.add_argument(
        "--idle-timeout",
        type=_limit_seconds,
        default=_env("IDLE_TIMEOUT", "5"),
        help="keep-alive idle seconds, or 'none' (default 5)",
    )
    p.add_argument(
        "--read-header-timeout",
        type=_limit_seconds,
        default=_env("READ_HEADER_TIMEOUT", "10"),
        help="seconds to receive a request head, or 'none' (default 10)",
    )
    p.add_argument(
        "--max-connections",
        type=_count,
        default=_env("MAX_CONNECTIONS", "1000"),
        help="most connections served at once; the rest wait in the backlog (default 1000)",
    )
    p.add_argument(
        "--max-body-size",
        type=_count,
        default=_env("MAX_BODY_SIZE"),
        metavar="BYTES",
        help="largest request body; larger ones get 413 (default: no limit)",
    )
    p.add_argument(
        "--unix-socket-mode",
        type=_socket_mode,
        default=_env("UNIX_SOCKET_MODE"),
        metavar="MODE",
        help="octal permission bits of unix: sockets bound, e.g. 660 (default: as the umask leaves them)",
    )
    p.add_argument("--backlog", type=_count, default=_env("BACKLOG", "2048"), help="listen backlog (default 2048)")
    p.add_argument(
        "--readiness-path",
        default=_env("READINESS_PATH", "/-/ready"),
        help="path the server answers itself: 200, or 503 once draining ('' to disable; default /-/ready)",
    )
    p.add_argument("--access-log", default=_env("ACCESS_LOG"), metavar="FILE", help="access log file, '-' for stderr")
    p.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error", "critical"],
        help="log level (default info)",
    )
    p.add_argument(
        "--no-monkey-patch",
        action="store_true",
        default=False,
        help="do not call gevent.monkey.patch_all() before importing the app",
    )
    p.add_argument("--pid", default=_env("PID"), metavar="FILE", help="write the process id to FILE")
    p.add_argument(
        "-w",
        "--workers",
        type=_count,
        default=_env("WORKERS"),
        help="run a master process with this many worker processes (enables SIGHUP reload "
        "and SIGUSR2 upgrade); default: serve in this one process",
    )
    p.add_argument(
        "--preload",
        action="store_true",
        default=False,
        help="with --workers: import the app in the master before forking",
    )
    p.add_argument(
        "--ready-timeout",
        type=_seconds,
        default=_env("READY_TIMEOUT", "30"),
        help="with --workers: seconds new workers or a new master get to become ready (default 30)",
    )
    p.add_argument("--version", action="version", version=f"gshutdown {__version__}")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.no_monkey_patch = args.no_monkey_patch or _env_flag("NO_MONKEY_PATCH")
        args.preload = args.preload or _env_flag("PRELOAD")
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if not args.bind:
        env_bind = _env("BIND")
        try:
            args.bind = [parse_bind(item) for item in env_bind.split(",")] if env_bind else [("127.0.0.1", 8000)]
        except argparse.ArgumentTypeError as exc:
            parser.error(f"GSHUTDOWN_BIND: {exc}")
    return args


def load_app(spec: str) -> Any:
    """Import ``MODULE:NAME``, ``MODULE`` or ``FILE.py[:NAME]`` and return the app.

    ``NAME`` may end in ``()`` to call a factory with no arguments.

    Raises:
        UsageError: it cannot be imported or is not callable.
    """
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    target, _, name = spec.partition(":")
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise UsageError(f"no such file: {target}")
        directory, filename = os.path.split(os.path.abspath(target))
        sys.path.insert(0, directory)
        target = filename[:-3]
    try:
        module = importlib.import_module(target)
    except ImportError as exc:
        if getattr(exc, "name", None) and target.startswith(exc.name or "\0"):
            raise UsageError(f"cannot import {target!r}: {exc}") from None
        raise UsageError(f"importing {target!r} failed: {exc}") from None
    except Exception as exc:
        raise UsageError(f"importing {target!r} failed: {type(exc).__name__}: {exc}") from None
    names = [name] if name else ["app", "application"]
    for candidate in names:
        call = candidate.endswith("()")
        attr = candidate[:-2] if call else candidate
        obj = getattr(module, attr, None)
        if obj is None:
            continue
        if call:
            try:
                obj = obj()
            except Exception as exc:
                raise UsageError(f"{target}:{candidate} failed: {type(exc).__name__}: {exc}") from None
        if not callable(obj):
            raise UsageError(f"{target}:{attr} is not a WSGI application (not callable)")
        return obj
    raise UsageError(f"no {' or '.join(names)} in module {target!r}")


def _configure_logging(level: str, access_log: Optional[str]) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s [%(process)d] [%(levelname)s] %(message)s",
        stream=sys.stderr,
    )
    access = logging.getLogger("gshutdown.access")
    access.propagate = False
    if access_log:
        handler: logging.Handler = (
            logging.StreamHandler(sys.stderr) if access_log == "-" else logging.FileHandler(access_log)
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console script; returns the exit status."""
    args = parse_args(argv)
    if args.workers:
        _configure_logging(args.log_level, args.access_log)
        from gshutdown.master import Master, bind_listeners

        try:
            listeners = bind_listeners(args.bind, args.backlog, args.unix_socket_mode)
        except OSError as exc:
            print(f"gshutdown: error: {exc}", file=sys.stderr)
            return EXIT_START_FAILED
        return Master(args, listeners).run()
    return serve(args)


def serve(
    args: argparse.Namespace,
    listeners: Optional[Sequence[Any]] = None,
    *,
    on_ready: Optional[Callable[[], Any]] = None,
) -> int:
    """Serve ``args.app`` in this process until a signal; return the exit status.

    Args:
        args: parsed options.
        listeners: sockets to serve on instead of binding ``args.bind``
            (a worker gets its master's).
        on_ready: called once listening (a worker tells its master);
            by default systemd is notified.
    """
    if not args.no_monkey_patch:
        # Before the app is imported: legacy apps rely on patched sockets,
        # and modules that bind socket/threading names early must see them.
        from gevent import monkey

        monkey.patch_all()
    _configure_logging(args.log_level, args.access_log)
    log = logging.getLogger("gshutdown")
    from gshutdown import jobs, systemd
    from gshutdown.runner import KUBERNETES_GRACE, Runner, adopt_app_hooks, build_app
    from gshutdown.server import Server

    try:
        app = load_app(args.app)
    except UsageError as exc:
        print(f"gshutdown: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.drain_delay + args.graceful_timeout > KUBERNETES_GRACE and listeners is None:
        log.warning(
            "drain delay + graceful timeout = %g s, over Kubernetes' default %g s grace: "
            "raise terminationGracePeriodSeconds to match",
            args.drain_delay + args.graceful_timeout,
            KUBERNETES_GRACE,
        )
    wrapped, readiness = build_app(app, readiness_path=args.readiness_path or None, access_log=bool(args.access_log))
    if listeners is None:
        listeners = systemd.listen_fds() or args.bind
    options = dict(
        idle_timeout=args.idle_timeout,
        read_header_timeout=args.read_header_timeout,
        max_connections=args.max_connections,
        max_body_size=args.max_body_size,
        backlog=args.backlog,
        unix_socket_mode=args.unix_socket_mode,
    )
    servers = []
    try:
        for listener in listeners:
            server = Server(listener, wrapped, **options)
            server.init_socket()  # bind now, to report a busy port before anything else
            servers.append(server)
    except OSError as exc:
        print(
            f"gshutdown: error: cannot listen on {describe_listener(listener)}: {bind_failure_reason(exc)}",
            file=sys.stderr,
        )
        for server in servers:
            server.close()
        return EXIT_START_FAILED
    # Only now: a usage or bind error must stay the one line on stderr.
    log.info(
        "gevent monkey-patching %s",
        "disabled (--no-monkey-patch)" if args.no_monkey_patch else "applied before importing the app",
    )
    servers[0].jobs.adopt(jobs.app_jobs)
    runner = Runner(
        servers,
        graceful_timeout=args.graceful_timeout,
        drain_delay=args.drain_delay,
        readiness=readiness,
        pidfile=None if on_ready else args.pid,
        hooks=adopt_app_hooks(),
        on_ready=on_ready,
    )
    return runner.run()
