"""``gshutdown [options] APP``: parse the options, then hand over.

Without ``--workers`` the runner serves in this process (``runner.serve``);
with it, the master supervises worker processes (``master.main``). Every
option also reads a ``GSHUTDOWN_<NAME>`` environment variable (the command
line wins). Bad input ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, NoReturn, Optional, Sequence

from gshutdown.exit_status import ExitStatus


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the brief for every bad input.
        self.exit(ExitStatus.USAGE, f"{self.prog}: error: {message}\n")


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


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
    return value


def _count(text: str) -> int:
    return _whole_number(text, 1)


def _count_or_zero(text: str) -> int:
    return _whole_number(text, 0)


def _milliseconds(text: str) -> float:
    """Milliseconds on the command line, seconds inside."""
    return _seconds(text) / 1000


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
        type=_seconds,
        default=_env("IDLE_TIMEOUT", "5"),
        help="keep-alive idle seconds (default 5)",
    )
    p.add_argument(
        "--read-header-timeout",
        type=_seconds,
        default=_env("READ_HEADER_TIMEOUT", "10"),
        help="seconds to receive a request head (default 10)",
    )
    p.add_argument("--max-connections", type=_count, default=_env("MAX_CONNECTIONS"), help="most open connections")
    p.add_argument("--backlog", type=_count, default=_env("BACKLOG", "2048"), help="listen backlog (default 2048)")
    p.add_argument(
        "--readiness-path",
        default=_env("READINESS_PATH", "/-/ready"),
        help="path the server answers itself: 200, or 503 once draining ('' to disable; default /-/ready)",
    )
    p.add_argument("--access-log", default=_env("ACCESS_LOG"), metavar="FILE", help="access log file, '-' for stderr")
    p.add_argument(
        "--error-log",
        default=_env("ERROR_LOG"),
        metavar="FILE",
        help="server log file (default '-': stderr); SIGUSR1 reopens both logs",
    )
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
    p.add_argument(
        "--reuse-port",
        action="store_true",
        default=False,
        help="with --workers: each worker listens on its own SO_REUSEPORT socket, and the kernel spreads "
        "connections over them (default: one shared accept queue)",
    )
    p.add_argument(
        "--max-requests",
        type=_count_or_zero,
        default=_env("MAX_REQUESTS", "0"),
        help="with --workers: replace a worker after it has served this many requests (default 0: never)",
    )
    p.add_argument(
        "--max-requests-jitter",
        type=_count_or_zero,
        default=_env("MAX_REQUESTS_JITTER", "0"),
        help="with --max-requests: add 0 to this many requests per worker, so they do not restart together",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=_env("TIMEOUT", "0"),
        help="with --workers: replace a worker whose event loop is blocked this many seconds, "
        "logging its stack (default 0: off)",
    )
    p.add_argument(
        "--max-blocking-time",
        type=_milliseconds,
        default=_env("MAX_BLOCKING_TIME", "0"),
        metavar="MS",
        help="log, with its stack, every greenlet that blocks the event loop over MS milliseconds (default 0: off)",
    )
    p.add_argument("--version", action="version", version=f"gshutdown {__version__}")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.no_monkey_patch = args.no_monkey_patch or _env_flag("NO_MONKEY_PATCH")
        args.preload = args.preload or _env_flag("PRELOAD")
        args.reuse_port = args.reuse_port or _env_flag("REUSE_PORT")
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if not args.bind:
        env_bind = _env("BIND")
        try:
            args.bind = [parse_bind(item) for item in env_bind.split(",")] if env_bind else [("127.0.0.1", 8000)]
        except argparse.ArgumentTypeError as exc:
            parser.error(f"GSHUTDOWN_BIND: {exc}")
    if not args.workers:
        for name in ("max_requests", "timeout", "reuse_port"):
            if getattr(args, name):
                parser.error(f"--{name.replace('_', '-')} needs --workers")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console script; returns the exit status."""
    args = parse_args(argv)
    if args.workers:
        from gshutdown import master

        return master.main(args)
    from gshutdown import runner

    return runner.serve(args)
