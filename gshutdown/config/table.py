"""Every setting of the ``gshutdown`` command, in one table.

Each ``Setting`` is a command-line option, a ``GSHUTDOWN_<NAME>`` environment
variable and a name in a configuration file (``-c FILE``; gunicorn's names are
understood too: ``gunicorn_names`` says what each becomes). ``settings.Settings``
has one typed field per row, in the same order; ``settings.resolve`` fills it, and ``--print-config``, ``--help``
and the README's table are all made from these rows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from gshutdown.config.parsers import (
    bind_address,
    client_certificates,
    count,
    count_or_zero,
    directories,
    header_names,
    limit_seconds,
    log_level,
    milliseconds,
    name_value,
    octal,
    optional_count,
    optional_text,
    scheme_header,
    seconds,
    socket_mode,
    text,
    trusted_peers,
    yes_no,
)


class Kind(enum.Enum):
    VALUE = "value"  # one value, parsed from text
    FLAG = "flag"  # on/off
    LIST = "list"  # repeatable (--bind), comma-separated in the environment


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

    @property
    def env(self) -> str:
        return f"GSHUTDOWN_{self.name.upper()}"


S = Setting
#: Every setting, in the order ``--help`` and ``--print-config`` show them.
SETTINGS: tuple[Setting, ...] = (
    S("app", (), text, None, "MODULE:NAME, MODULE (finds app/application), or FILE.py[:NAME]"),
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
    ),
    S(
        "log_level",
        ("--log-level",),
        log_level,
        "info",
        "debug, info, warning, error or critical",
    ),
    S(
        "log_config",
        ("--log-config",),
        optional_text,
        None,
        "a JSON file holding a logging.config.dictConfig() dictionary, or a logging.config.fileConfig() file",
        metavar="FILE",
    ),
    S(
        "capture_output",
        ("--capture-output",),
        yes_no,
        False,
        "send what the app prints (stdout and stderr) to the error log",
        kind=Kind.FLAG,
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
    S(
        "pid",
        ("--pid",),
        optional_text,
        None,
        "write the process id to FILE",
        metavar="FILE",
    ),
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
    S(
        "pythonpath",
        ("--pythonpath",),
        directories,
        None,
        "comma-separated directories put first on sys.path before the app is imported",
        metavar="DIRS",
    ),
    S(
        "proc_name",
        ("-n", "--name"),
        optional_text,
        None,
        "process title 'gshutdown: master [NAME]', '... worker [NAME]' or '... [NAME]' (needs setproctitle)",
        metavar="NAME",
    ),
    S(
        "reload",
        ("--reload",),
        yes_no,
        False,
        "development: restart when a .py file under the app's directory changes (needs gshutdown[reload])",
        kind=Kind.FLAG,
    ),
    S(
        "reload_extra_files",
        ("--reload-extra-file",),
        text,
        [],
        "with --reload: a file (of any kind) whose change restarts too; repeatable",
        kind=Kind.LIST,
        metavar="FILE",
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
        "secure_scheme_headers",
        ("--secure-scheme-header",),
        scheme_header,
        None,
        "HEADER=VALUE: from a trusted peer, HEADER set to VALUE means https, to anything else http (gunicorn's; "
        "repeatable; default: X-Forwarded-Proto and Forwarded's proto)",
        kind=Kind.LIST,
        metavar="HEADER=VALUE",
    ),
    S(
        "forwarder_headers",
        ("--forwarder-headers",),
        header_names,
        "SCRIPT_NAME,PATH_INFO",
        "header names with '_' a trusted peer may send into the environ (SCRIPT_NAME mounts the app), "
        "comma-separated, '*' for any (gunicorn's); other '_' names are dropped",
        metavar="NAMES",
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
