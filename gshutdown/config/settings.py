"""Every setting of the ``gshutdown`` command, in one table.

Each ``Setting`` is a command-line option, a ``GSHUTDOWN_<NAME>`` environment
variable and a name in a configuration file (``-c FILE``, a Python file of
``name = value`` lines, as gunicorn's: gunicorn's names are understood too).
Where a value comes from, first found wins:

    command line  >  environment  >  configuration file  >  default

``resolve()`` returns the values as an ``argparse.Namespace`` and records where
each came from (``--print-config`` shows both). Bad values raise
``SettingError`` with a one-line message.
"""

from __future__ import annotations

import argparse
import enum
import os
import runpy
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional


class SettingError(ValueError):
    """A bad value or name: one line for the user, exit status 2."""


class Kind(enum.Enum):
    VALUE = "value"  # one value, parsed from text
    FLAG = "flag"  # on/off
    LIST = "list"  # repeatable (--bind), comma-separated in the environment


_YES = ("1", "true", "yes", "on")
_NO = ("", "0", "false", "no", "off")


def yes_no(text: str) -> bool:
    """1/true/yes/on or 0/false/no/off (an empty value is off)."""
    value = text.strip().lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise SettingError(f"want 1/true/yes/on or 0/false/no/off, not {text!r}")


def _number_of_seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SettingError(f"not a number of seconds: {text!r}") from None


def seconds(text: str) -> float:
    value = _number_of_seconds(text)
    if value < 0 or value != value:
        raise SettingError(f"must be zero or more seconds: {text!r}")
    return value


def milliseconds(text: str) -> float:
    """Milliseconds where the user writes them, seconds inside."""
    return seconds(text) / 1000


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SettingError(f"not a whole number: {text!r}") from None
    if value < minimum:
        raise SettingError(f"must be at least {minimum}: {text!r}")
    return value


def count(text: str) -> int:
    return _whole_number(text, 1)


def count_or_zero(text: str) -> int:
    return _whole_number(text, 0)


def optional_count(text: str) -> Optional[int]:
    """A count of at least 1, or ``none`` for no limit."""
    if text.strip().lower() == "none":
        return None
    return count(text)


def limit_seconds(text: str) -> Optional[float]:
    """A timeout of more than 0 seconds, or ``none`` for no limit (0 would read as either)."""
    if text.strip().lower() == "none":
        return None
    value = _number_of_seconds(text)
    if not value > 0:  # NaN included
        raise SettingError(f"must be more than 0 seconds, or 'none' for no limit: {text!r}")
    return value


def socket_mode(text: str) -> int:
    """Permission bits, octal: 000 to 777."""
    value = octal(text)
    if not 0 <= value <= 0o777:
        raise SettingError(f"permission bits go from 000 to 777: {text!r}")
    return value


def octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise SettingError(f"not an octal mode: {text!r}") from None


def text(value: str) -> str:
    return value


def optional_text(value: str) -> Optional[str]:
    return value or None


def name_value(value: str) -> str:
    """``NAME=VALUE`` for the environment."""
    if "=" not in value or value.startswith("="):
        raise SettingError(f"want NAME=VALUE, not {value!r}")
    return value


def log_level(value: str) -> str:
    level = value.lower()
    if level not in ("debug", "info", "warning", "error", "critical"):
        raise SettingError(f"not a log level (debug, info, warning, error, critical): {value!r}")
    return level


def trusted_peers(value: str) -> str:
    """``*`` or comma-separated addresses and CIDR networks (checked, kept as text)."""
    from gshutdown.protocol.forwarded import TrustedProxies

    try:
        TrustedProxies(value)
    except ValueError as exc:
        raise SettingError(str(exc).removeprefix("forwarded_allow_ips: ")) from None
    return value


def client_certificates(value: str) -> Optional[str]:
    """``none``, ``optional`` or ``required`` (gunicorn's 0, 1, 2)."""
    choice = {"0": "none", "1": "optional", "2": "required"}.get(value.strip(), value.strip().lower())
    if choice not in ("none", "optional", "required"):
        raise SettingError(f"want none, optional or required, not {value!r}")
    return choice


def bind_address(value: str) -> Any:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or ``unix:PATH`` to a listener."""
    if value.startswith("unix:"):
        if len(value) == 5:
            raise SettingError("unix: needs a path")
        return value
    host, sep, port = value.rpartition(":")
    if not sep:
        raise SettingError(f"bad address {value!r} (want HOST:PORT, [::1]:PORT or unix:PATH)")
    if host.startswith("["):
        if not host.endswith("]"):
            raise SettingError(f"bad address {value!r}")
        host = host[1:-1]
    elif ":" in host:
        raise SettingError(f"bad address {value!r} (put IPv6 addresses in brackets)")
    try:
        number = int(port)
    except ValueError:
        raise SettingError(f"bad port in {value!r}") from None
    if not 0 <= number <= 65535:
        raise SettingError(f"port out of range in {value!r}")
    return (host or "0.0.0.0", number)


@dataclass(frozen=True)
class Setting:
    """One setting; ``name`` is its attribute, its config-file name, and its env suffix."""

    name: str
    flags: tuple[str, ...]
    parse: Callable[[str], Any]
    default: Any
    help: str
    kind: Kind = Kind.VALUE
    metavar: Optional[str] = None
    #: Its names in a gunicorn configuration file, when they differ.
    gunicorn: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        return f"GSHUTDOWN_{self.name.upper()}"


S = Setting
#: Every setting, in the order ``--help`` and ``--print-config`` show them.
SETTINGS: tuple[Setting, ...] = (
    S("app", (), text, None, "MODULE:NAME, MODULE (finds app/application), or FILE.py[:NAME]", gunicorn=("wsgi_app",)),
    S(
        "bind",
        ("-b", "--bind"),
        bind_address,
        [("127.0.0.1", 8000)],
        "HOST:PORT, [::1]:PORT or unix:PATH; repeatable",
        kind=Kind.LIST,
        metavar="ADDRESS",
    ),
    # -- shutdown
    S(
        "graceful_timeout",
        ("--graceful-timeout",),
        seconds,
        30.0,
        "seconds a graceful shutdown may take before connections are forced (Kubernetes' grace: 30)",
    ),
    S(
        "drain_delay",
        ("--drain-delay",),
        seconds,
        0.0,
        "seconds to keep serving with readiness at 503 before closing the listener",
    ),
    S(
        "readiness_path",
        ("--readiness-path",),
        text,
        "/-/ready",
        "path the server answers itself: 200, or 503 once draining ('' to disable)",
    ),
    S(
        "metrics_path",
        ("--metrics-path",),
        optional_text,
        None,
        "path the server answers itself with Prometheus metrics (needs pip install 'gshutdown[metrics]')",
        metavar="PATH",
    ),
    S(
        "idle_grace",
        ("--idle-grace",),
        seconds,
        0.1,
        "at shutdown, idle connections get this read deadline: a request arriving inside it is served",
    ),
    # -- timeouts and limits
    S(
        "idle_timeout",
        ("--idle-timeout",),
        limit_seconds,
        5.0,
        "keep-alive idle seconds, or 'none' (uvicorn: 5)",
        gunicorn=("keepalive",),
    ),
    S(
        "read_header_timeout",
        ("--read-header-timeout",),
        limit_seconds,
        10.0,
        "seconds to receive a request head, then 408, or 'none' (Go's ReadHeaderTimeout)",
    ),
    S(
        "read_body_timeout",
        ("--read-body-timeout",),
        limit_seconds,
        30.0,
        "longest wait for the next piece of a request body the application reads, or 'none'",
    ),
    S(
        "write_timeout",
        ("--write-timeout",),
        limit_seconds,
        30.0,
        "longest time one response write may take against a client not reading, or 'none'",
    ),
    S(
        "max_connections",
        ("--max-connections",),
        optional_count,
        1000,
        "connections served at once, the rest wait in the backlog (gunicorn worker_connections: 1000); 'none'",
        gunicorn=("worker_connections",),
    ),
    S(
        "max_websockets",
        ("--max-websockets",),
        optional_count,
        None,
        "WebSockets open at once, beyond it upgrades get 503 (default: 9/10 of max-connections)",
    ),
    S(
        "max_websocket_message",
        ("--max-websocket-message",),
        count,
        1024 * 1024,
        "largest WebSocket message received through wsgi.websocket, in bytes; beyond it, close 1009",
        metavar="BYTES",
    ),
    S(
        "max_body_size",
        ("--max-body-size",),
        optional_count,
        None,
        "largest request body in bytes; larger ones get 413 before the app runs (nginx client_max_body_size)",
        metavar="BYTES",
    ),
    S(
        "min_body_rate",
        ("--min-body-rate",),
        optional_count,
        500,
        "bytes per second a request body must keep up once read_body_timeout is spent (Apache MinRate), or 'none'",
        metavar="BYTES",
    ),
    S("backlog", ("--backlog",), count, 2048, "listen backlog (gunicorn: 2048)"),
    S("limit_request_line", ("--limit-request-line",), count, 8190, "longest request line in bytes, then 414"),
    S("limit_request_fields", ("--limit-request-fields",), count, 100, "most header fields in a request, then 431"),
    S(
        "limit_request_field_size",
        ("--limit-request-field-size",),
        optional_count,
        None,
        "longest header field (name and value) in bytes, then 431 (gunicorn: 8190); 'none': the 64 KiB head limit only",
    ),
    S(
        "no_keep_alive",
        ("--no-keep-alive",),
        yes_no,
        False,
        "close every connection after its response",
        kind=Kind.FLAG,
    ),
    S("server_header", ("--server-header",), text, "gshutdown", "the Server header value ('' to send none)"),
    # -- logging
    S(
        "access_log",
        ("--access-log",),
        optional_text,
        None,
        "access log file, '-' for stderr",
        metavar="FILE",
        gunicorn=("accesslog",),
    ),
    S(
        "access_log_format",
        ("--access-log-format",),
        optional_text,
        None,
        "gunicorn's atoms, e.g. '%%(h)s \"%%(r)s\" %%(s)s %%(D)s', or 'json' (default: Common Log Format)",
        metavar="FORMAT",
    ),
    S(
        "error_log",
        ("--error-log",),
        optional_text,
        None,
        "server log file (default '-': stderr)",
        metavar="FILE",
        gunicorn=("errorlog",),
    ),
    S(
        "log_level",
        ("--log-level",),
        log_level,
        "info",
        "debug, info, warning, error or critical",
        gunicorn=("loglevel",),
    ),
    S(
        "log_config",
        ("--log-config",),
        optional_text,
        None,
        "a JSON file holding a logging.config.dictConfig() dictionary",
        metavar="FILE",
        gunicorn=("logconfig_dict",),
    ),
    S(
        "max_blocking_time",
        ("--max-blocking-time",),
        milliseconds,
        0.0,
        "log, with its stack, every greenlet that blocks the event loop over MS milliseconds (0: off)",
        metavar="MS",
    ),
    # -- process
    S(
        "no_monkey_patch",
        ("--no-monkey-patch",),
        yes_no,
        False,
        "do not call gevent.monkey.patch_all() before importing the app",
        kind=Kind.FLAG,
    ),
    S("pid", ("--pid",), optional_text, None, "write the process id to FILE", metavar="FILE", gunicorn=("pidfile",)),
    S("chdir", ("--chdir",), optional_text, None, "change to DIR before loading the app", metavar="DIR"),
    S("user", ("--user",), optional_text, None, "after binding, switch to this user (name or uid)"),
    S("group", ("--group",), optional_text, None, "after binding, switch to this group (name or gid)"),
    S("umask", ("--umask",), octal, None, "process umask, octal (gunicorn: 0); unix socket files get it too"),
    S(
        "unix_socket_mode",
        ("--unix-socket-mode",),
        socket_mode,
        None,
        "octal permission bits of unix: sockets bound, e.g. 660 (default: what the umask leaves)",
        metavar="MODE",
    ),
    S(
        "raw_env",
        ("-e", "--env"),
        name_value,
        [],
        "NAME=VALUE set in the environment before the app is loaded; repeatable",
        kind=Kind.LIST,
        metavar="NAME=VALUE",
    ),
    # -- workers
    # -- proxies and TLS
    S(
        "forwarded_allow_ips",
        ("--forwarded-allow-ips",),
        trusted_peers,
        "127.0.0.1,::1",
        "peers whose X-Forwarded-For/-Proto, Forwarded and PROXY addresses are believed: IPs and CIDRs, "
        "comma-separated, '*' for any (gunicorn's)",
    ),
    S(
        "no_proxy_headers",
        ("--no-proxy-headers",),
        yes_no,
        False,
        "ignore X-Forwarded-* and Forwarded even from trusted peers (uvicorn --no-proxy-headers)",
        kind=Kind.FLAG,
    ),
    S(
        "proxy_protocol",
        ("--proxy-protocol",),
        yes_no,
        False,
        "every connection begins with a PROXY v1/v2 header (HAProxy, nginx, AWS NLB); without a valid one: 400",
        kind=Kind.FLAG,
    ),
    S("certfile", ("--certfile",), optional_text, None, "PEM certificate chain: serve HTTPS", metavar="FILE"),
    S("keyfile", ("--keyfile",), optional_text, None, "PEM private key (default: in --certfile)", metavar="FILE"),
    S(
        "ca_certs",
        ("--ca-certs",),
        optional_text,
        None,
        "PEM CA bundle to verify client certificates with",
        metavar="FILE",
    ),
    S(
        "cert_reqs",
        ("--cert-reqs",),
        client_certificates,
        None,
        "client certificates: none, optional or required (default: required with --ca-certs, else none)",
    ),
    S("ciphers", ("--ciphers",), optional_text, None, "OpenSSL cipher list for TLS 1.2"),
    S(
        "workers",
        ("-w", "--workers"),
        count_or_zero,
        0,
        "run a master with this many worker processes (reload, upgrade); 0: serve in this one process",
    ),
    S(
        "preload",
        ("--preload",),
        yes_no,
        False,
        "with --workers: import the app in the master before forking",
        kind=Kind.FLAG,
        gunicorn=("preload_app",),
    ),
    S(
        "ready_timeout",
        ("--ready-timeout",),
        seconds,
        30.0,
        "with --workers: seconds new workers or a new master get to become ready",
    ),
    S(
        "reuse_port",
        ("--reuse-port",),
        yes_no,
        False,
        "with --workers: each worker listens on its own SO_REUSEPORT socket (default: one shared accept queue)",
        kind=Kind.FLAG,
    ),
    S(
        "max_requests",
        ("--max-requests",),
        count_or_zero,
        0,
        "with --workers: replace a worker after it has served this many requests (0: never)",
    ),
    S(
        "max_requests_jitter",
        ("--max-requests-jitter",),
        count_or_zero,
        0,
        "with --max-requests: add 0 to this many requests per worker, so they do not restart together",
    ),
    S(
        "timeout",
        ("--timeout",),
        seconds,
        0.0,
        "with --workers: replace a worker whose event loop is blocked this many seconds, logging its stack (0: off)",
    ),
)
del S

BY_NAME: Mapping[str, Setting] = {setting.name: setting for setting in SETTINGS}
_BY_FILE_NAME: Mapping[str, Setting] = {
    **{setting.name: setting for setting in SETTINGS},
    **{alias: setting for setting in SETTINGS for alias in setting.gunicorn},
}
#: gunicorn settings that mean nothing here: accepted in a file, with a warning.
GUNICORN_IGNORED = frozenset(
    {
        "worker_class",
        "threads",
        "proc_name",
        "default_proc_name",
        "spew",
        "check_config",
        "print_config",
        "worker_tmp_dir",
        "capture_output",
        "enable_stdio_inheritance",
        "statsd_host",
        "statsd_prefix",
        "sendfile",
        "strip_header_spaces",
        "reload_engine",
        "reload_extra_files",
        "reload",
        "daemon",
        "syslog",
        "syslog_addr",
        "syslog_prefix",
        "syslog_facility",
        "disable_redirect_access_to_syslog",
        "tmp_upload_dir",
        "secure_scheme_headers",
        "initgroups",
        "paste",
        "pythonpath",
        "logger_class",
        "forwarder_headers",
        "header_map",
        "permit_unconventional_http_method",
        "casefold_http_method",
    }
)
#: gunicorn's server hooks: functions gshutdown does not call (its own are on_shutdown and every).
GUNICORN_HOOKS = frozenset(
    {
        "on_starting",
        "on_reload",
        "when_ready",
        "pre_fork",
        "post_fork",
        "post_worker_init",
        "worker_int",
        "worker_abort",
        "pre_exec",
        "pre_request",
        "post_request",
        "child_exit",
        "worker_exit",
        "nworkers_changed",
        "on_exit",
        "ssl_context",
    }
)

#: Where a value came from.
CLI, ENV, FILE, DEFAULT = "command line", "environment", "config file", "default"
#: What an option the command line did not give holds after parsing.
NOT_GIVEN: Any = type("NotGiven", (), {"__repr__": lambda self: "NOT_GIVEN"})()


def read_config_file(path: str) -> tuple[dict[str, Any], list[str]]:
    """The settings a Python configuration file sets, by our names, and warnings to log.

    Raises:
        SettingError: the file is missing, does not run, or sets an unknown name.
    """
    if not os.path.isfile(path):
        raise SettingError(f"config file not found: {path}")
    try:
        namespace = runpy.run_path(path)
    except SyntaxError as exc:
        raise SettingError(f"config file {path}, line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:
        raise SettingError(f"config file {path} failed: {type(exc).__name__}: {exc}") from None
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in namespace.items():
        if key.startswith("_") or type(value).__name__ == "module":
            continue  # imports and private helpers of the file itself
        setting = _BY_FILE_NAME.get(key)
        if setting is not None:
            values[setting.name] = _from_file(setting, key, value, path)
        elif key in GUNICORN_HOOKS:
            warnings.append(f"config file: gunicorn's {key} hook is not called (see gshutdown.on_shutdown)")
        elif key in GUNICORN_IGNORED:
            if key == "daemon" and value:
                raise SettingError("config file: daemon = True is not supported: run under systemd or a container")
            warnings.append(f"config file: gunicorn's {key} means nothing here; ignored")
        elif callable(value):
            continue  # a helper function or class of the file
        else:
            raise SettingError(f"config file {path}: unknown setting {key!r}")
    return values, warnings


def _from_file(setting: Setting, key: str, value: Any, path: str) -> Any:
    try:
        if setting.name == "log_config" and isinstance(value, dict):
            return value  # gunicorn's logconfig_dict: the dictionary itself
        if setting.kind is Kind.FLAG:
            if not isinstance(value, bool):
                raise SettingError(f"want True or False, not {value!r}")
            return value
        if setting.kind is Kind.LIST:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
                raise SettingError(f"want a string or a list of strings, not {value!r}")
            return [setting.parse(item) for item in items]
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise SettingError(f"want a string or a number, not {value!r}")
        if setting.parse is octal and isinstance(value, int):
            return value  # umask = 0o022, as gunicorn files write it
        return setting.parse(str(value))
    except SettingError as exc:
        raise SettingError(f"config file {path}: {key}: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per setting, each defaulting to "not given" (``resolve`` fills it in)."""
    for setting in SETTINGS:
        if not setting.flags:
            parser.add_argument(
                setting.name, metavar=setting.name.upper(), nargs="?", default=NOT_GIVEN, help=setting.help
            )
            continue
        help_text = setting.help
        if setting.kind is Kind.FLAG:
            parser.add_argument(
                *setting.flags, dest=setting.name, action="store_const", const=True, default=NOT_GIVEN, help=help_text
            )
            continue
        if setting.default not in (None, [], False):
            help_text += f" (default {_show(setting, setting.default)})"
        parser.add_argument(
            *setting.flags,
            dest=setting.name,
            type=_argparse_type(setting.parse),
            action="append" if setting.kind is Kind.LIST else "store",
            # argparse appends to a list default: None stands for "not given" there.
            default=None if setting.kind is Kind.LIST else NOT_GIVEN,
            metavar=setting.metavar,
            help=help_text,
        )


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        try:
            return parse(value)
        except SettingError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__  # argparse names it in "invalid <name> value"
    return convert


def resolve(given: argparse.Namespace, file_values: Optional[Mapping[str, Any]] = None) -> argparse.Namespace:
    """Every setting's value by precedence (command line, environment, file, default).

    ``given`` holds what the command line set (``NOT_GIVEN`` where it set
    nothing). The result has an attribute per setting, and ``sources``
    (name -> where from).

    Raises:
        SettingError: an environment variable holds a bad value.
    """
    file_values = file_values or {}
    out = argparse.Namespace()
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        value, source = getattr(given, setting.name, NOT_GIVEN), CLI
        if value is None and setting.kind is Kind.LIST:
            value = NOT_GIVEN
        if value is NOT_GIVEN:
            value, source = _from_env(setting), ENV
        if value is NOT_GIVEN and setting.name in file_values:
            value, source = file_values[setting.name], FILE
        if value is NOT_GIVEN:
            value, source = setting.default, DEFAULT
        setattr(out, setting.name, value)
        sources[setting.name] = source
    out.sources = sources
    return out


def _from_env(setting: Setting) -> Any:
    raw = os.environ.get(setting.env)
    if raw is None:
        return NOT_GIVEN
    try:
        if setting.kind is Kind.LIST:
            return [setting.parse(item) for item in raw.split(",") if item]
        if setting.kind is Kind.FLAG:
            return yes_no(raw)
        return setting.parse(raw)
    except SettingError as exc:
        raise SettingError(f"{setting.env}: {exc}") from None


def _show(setting: Setting, value: Any) -> str:
    if setting.name == "bind":
        from gshutdown.config.addresses import describe_listener

        return ", ".join(describe_listener(item) for item in value)
    if setting.parse is octal and value is not None:
        return oct(value)
    return str(value)


def render(args: argparse.Namespace) -> str:
    """The resolved settings as a configuration file that sets them, each with its source."""
    lines = []
    for setting in SETTINGS:
        value = getattr(args, setting.name)
        if setting.name == "bind":
            from gshutdown.config.addresses import describe_listener

            shown = repr([describe_listener(item) for item in value])
        elif setting.parse is octal and value is not None:
            shown = oct(value)
        elif setting.parse is milliseconds:
            shown = repr(value * 1000)
        else:
            shown = repr(value)
        lines.append(f"{setting.name} = {shown}  # {args.sources[setting.name]}")
    return "\n".join(lines) + "\n"
