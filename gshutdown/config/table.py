"""Every setting of the ``gshutdown`` command, in one table.

(Over 500 lines of data: one row per setting, each with its flags, parser,
default, help and README text.)

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
    #: The README's "meaning" column, when it says more than ``help``.
    doc: str = ""
    #: The README's "default" column, when the default itself does not read well there.
    shown_default: Optional[str] = None

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
        doc="`HOST:PORT`, `[::1]:PORT`, `unix:PATH`; repeatable",
        shown_default="`127.0.0.1:8000`",
    ),
    # -- shutdown
    S(
        "graceful_timeout",
        ("--graceful-timeout",),
        seconds,
        30.0,
        "seconds a graceful shutdown may take before connections are forced (Kubernetes' grace: 30)",
        doc="seconds for the drain before connections are forced",
    ),
    S(
        "drain_delay",
        ("--drain-delay",),
        seconds,
        0.0,
        "seconds to keep serving with readiness at 503 before closing the listener",
        doc="seconds of readiness 503 while still serving, before the listener closes",
    ),
    S(
        "readiness_path",
        ("--readiness-path",),
        text,
        "/-/ready",
        "path the server answers itself: 200, or 503 once draining ('' to disable)",
        doc="answered by the server: 200, then 503 once draining (`''` disables)",
    ),
    S(
        "metrics_path",
        ("--metrics-path",),
        optional_text,
        None,
        "path the server answers itself with Prometheus metrics (needs pip install 'gshutdown[metrics]')",
        metavar="PATH",
        doc="answered by the server with Prometheus metrics (see Metrics; `pip install 'gshutdown[metrics]'`)",
        shown_default="none",
    ),
    S(
        "admin_bind",
        ("--admin-bind",),
        bind_address,
        None,
        "HOST:PORT or unix:PATH of a separate listener for the readiness and metrics paths; "
        "the app's port then no longer answers them",
        metavar="ADDRESS",
        doc="a listener of their own for the readiness and metrics paths (see Kubernetes); "
        "the app's port then leaves them to the app",
        shown_default="none",
    ),
    S(
        "idle_grace",
        ("--idle-grace",),
        seconds,
        0.1,
        "at shutdown, idle connections get this read deadline: a request arriving inside it is served",
        doc="seconds an idle connection may still start a request once a shutdown begins",
    ),
    # -- timeouts and limits
    S(
        "idle_timeout",
        ("--idle-timeout", "--keep-alive"),
        limit_seconds,
        5.0,
        "keep-alive idle seconds, or 'none' (uvicorn: 5)",
        doc="keep-alive idle seconds (gunicorn `--keep-alive`, 2 there)",
    ),
    S(
        "read_header_timeout",
        ("--read-header-timeout",),
        limit_seconds,
        10.0,
        "seconds to receive a request head, then 408, or 'none' (Go's ReadHeaderTimeout)",
        doc="seconds to receive a request head, then 408",
    ),
    S(
        "read_body_timeout",
        ("--read-body-timeout",),
        limit_seconds,
        30.0,
        "longest wait for the next piece of a request body the application reads, or 'none'",
        doc="longest wait for the next piece of a request body",
    ),
    S(
        "write_timeout",
        ("--write-timeout",),
        limit_seconds,
        30.0,
        "longest time one response write may take against a client not reading, or 'none'",
        doc="longest time one response write may take",
    ),
    S(
        "max_connections",
        ("--max-connections", "--worker-connections"),
        optional_count,
        1000,
        "connections served at once, the rest wait in the backlog (gunicorn worker_connections: 1000); 'none'",
        doc="connections served at once, the rest wait in the backlog (gunicorn `--worker-connections`, also 1000)",
    ),
    S(
        "max_websockets",
        ("--max-websockets",),
        optional_count,
        None,
        "WebSockets open at once, beyond it upgrades get 503 (default: 9/10 of max-connections)",
        shown_default="9/10 of `--max-connections`",
    ),
    S(
        "max_websocket_message",
        ("--max-websocket-message",),
        count,
        1024 * 1024,
        "largest WebSocket message received through wsgi.websocket, in bytes; beyond it, close 1009",
        metavar="BYTES",
        shown_default="1 MiB",
    ),
    S(
        "max_hijacked",
        ("--max-hijacked",),
        optional_count,
        1000,
        "hijacked connections (WebSockets, upgrades) at once, outside max-connections; past it 503; 'none'",
        doc="hijacked connections (WebSockets, upgrades) at once; they do not count against `--max-connections`, "
        "so they never take every slot from plain HTTP; past it a hijack is answered 503",
    ),
    S(
        "max_body_size",
        ("--max-body-size",),
        optional_count,
        None,
        "largest request body in bytes; larger ones get 413 before the app runs (nginx client_max_body_size)",
        metavar="BYTES",
        doc="larger request bodies get 413 before the app runs (nginx `client_max_body_size`)",
        shown_default="none",
    ),
    S(
        "min_body_rate",
        ("--min-body-rate",),
        optional_count,
        500,
        "bytes per second a request body must keep up once read_body_timeout is spent (Apache MinRate), or 'none'",
        metavar="BYTES",
        doc=(
            "past `--read-body-timeout`, a body must keep up this many bytes per second (Apache's `MinRate`), so a "
            "trickle cannot hold a connection forever"
        ),
    ),
    S("backlog", ("--backlog",), count, 2048, "listen backlog (gunicorn: 2048)", doc="listen backlog (gunicorn's)"),
    S(
        "limit_request_line",
        ("--limit-request-line",),
        count,
        8190,
        "longest request line in bytes, then 414",
        doc="longest request line in bytes, then 414 (gunicorn's, 4094 there)",
    ),
    S(
        "limit_request_fields",
        ("--limit-request-fields",),
        count,
        100,
        "most header fields in a request, then 431",
        doc="most header fields, then 431 (gunicorn's)",
    ),
    S(
        "limit_request_field_size",
        ("--limit-request-field-size",),
        optional_count,
        None,
        "longest header field (name and value) in bytes, then 431 (gunicorn: 8190); 'none': the 64 KiB head limit only",
        doc="longest header field in bytes, then 431; otherwise only the 64 KiB head limit (gunicorn's, 8190 there)",
        shown_default="none",
    ),
    S(
        "no_keep_alive",
        ("--no-keep-alive",),
        yes_no,
        False,
        "close every connection after its response",
        kind=Kind.FLAG,
        doc="every response closes its connection",
    ),
    S(
        "no_sendfile",
        ("--no-sendfile",),
        yes_no,
        False,
        "send wsgi.file_wrapper files with reads and writes, not sendfile() (gunicorn's --no-sendfile)",
        kind=Kind.FLAG,
        doc="`wsgi.file_wrapper` files go out with reads and writes, never `sendfile()`",
    ),
    S(
        "server_header",
        ("--server-header",),
        text,
        "gshutdown",
        "the Server header value ('' to send none)",
        doc="the `Server` field (`''`: none)",
    ),
    # -- logging
    S(
        "access_log",
        ("--access-log", "--access-logfile"),
        optional_text,
        None,
        "access log file, '-' for stderr",
        metavar="FILE",
        doc="one line per request; `-` for stderr (gunicorn `--access-logfile`)",
        shown_default="off",
    ),
    S(
        "access_log_format",
        ("--access-log-format", "--access-logformat"),
        optional_text,
        None,
        "gunicorn's atoms, e.g. '%%(h)s \"%%(r)s\" %%(s)s %%(D)s', or 'json' (default: Common Log Format)",
        metavar="FORMAT",
        doc=(
            'gunicorn\'s atoms (`%(h)s "%(r)s" %(s)s %(D)s %({name}i)s` ...), or `json` (one object per request, '
            "response time in `duration_s`)"
        ),
        shown_default="Common Log Format",
    ),
    S(
        "error_log",
        ("--error-log", "--error-logfile", "--log-file"),
        optional_text,
        None,
        "server log file (default '-': stderr)",
        metavar="FILE",
        doc="the server's own log (gunicorn `--error-logfile`)",
        shown_default="`-` (stderr)",
    ),
    S(
        "log_level",
        ("--log-level",),
        log_level,
        "info",
        "debug, info, warning, error or critical",
        shown_default="info",
    ),
    S(
        "log_config",
        ("--log-config",),
        optional_text,
        None,
        "a JSON file holding a logging.config.dictConfig() dictionary, or a logging.config.fileConfig() file",
        metavar="FILE",
        doc=(
            "a JSON file with a `logging.config.dictConfig()` dictionary, applied last (or a `fileConfig()` INI "
            "file, gunicorn's `logconfig`)"
        ),
    ),
    S(
        "capture_output",
        ("--capture-output",),
        yes_no,
        False,
        "send what the app prints (stdout and stderr) to the error log",
        kind=Kind.FLAG,
        doc="what the app prints (stdout, stderr) goes to the error log (gunicorn's)",
    ),
    S(
        "max_blocking_time",
        ("--max-blocking-time",),
        milliseconds,
        0.0,
        "log, with its stack, every greenlet that blocks the event loop over MS milliseconds (0: off)",
        metavar="MS",
        doc=(
            "log, with its stack, each greenlet that blocks the event loop over MS milliseconds (gevent's own "
            "monitor thread)"
        ),
        shown_default="0 (off)",
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
        doc="written atomically, removed at exit",
    ),
    S(
        "chdir",
        ("--chdir",),
        optional_text,
        None,
        "change to DIR before loading the app",
        metavar="DIR",
        doc="change directory before loading the app",
    ),
    S(
        "user",
        ("--user",),
        optional_text,
        None,
        "after binding, switch to this user (name or uid)",
        doc="switch to this user (name or uid) once the listeners are bound",
    ),
    S(
        "group",
        ("--group",),
        optional_text,
        None,
        "after binding, switch to this group (name or gid)",
        doc="switch to this group (name or gid) once the listeners are bound",
    ),
    S(
        "umask",
        ("--umask",),
        octal,
        None,
        "process umask, octal (gunicorn: 0); unix socket files get it too",
        doc="process umask, octal; unix socket files get it",
        shown_default="inherited",
    ),
    S(
        "unix_socket_mode",
        ("--unix-socket-mode",),
        socket_mode,
        None,
        "octal permission bits of unix: sockets bound, e.g. 660 (default: what the umask leaves)",
        metavar="MODE",
        doc="octal permission bits of `unix:` sockets, e.g. `660`",
        shown_default="umask",
    ),
    S(
        "raw_env",
        ("-e", "--env"),
        name_value,
        [],
        "NAME=VALUE set in the environment before the app is loaded; repeatable",
        kind=Kind.LIST,
        metavar="NAME=VALUE",
        doc="set in the environment before the app loads; repeatable",
    ),
    S(
        "pythonpath",
        ("--pythonpath",),
        directories,
        None,
        "comma-separated directories put first on sys.path before the app is imported",
        metavar="DIRS",
        doc="comma-separated directories put first on `sys.path` before the app is imported (gunicorn's)",
    ),
    S(
        "proc_name",
        ("-n", "--name"),
        optional_text,
        None,
        "process title 'gshutdown: master [NAME]', '... worker [NAME]' or '... [NAME]' (needs setproctitle)",
        metavar="NAME",
        doc=(
            "process title `gshutdown: master [NAME]`, `... worker [NAME]`, or `gshutdown: [NAME]` for the one "
            "process, with `setproctitle` installed (`pip install 'gshutdown[proctitle]'`; without it the title "
            "is left alone)"
        ),
    ),
    S(
        "reload",
        ("--reload",),
        yes_no,
        False,
        "development: restart when a .py file under the app's directory changes (needs gshutdown[reload])",
        kind=Kind.FLAG,
        doc=(
            "development: restart when a `.py` file under the app's directory changes (`pip install "
            "'gshutdown[reload]'`, watchfiles): with `--workers` a reload (SIGHUP; with `--preload` an upgrade, "
            "SIGUSR2), so code that fails to import leaves the old workers serving; without, a graceful drain, "
            "then the process re-executes itself (same pid), unless a SIGTERM or SIGINT came during that drain: "
            "then it exits once the drain is over (a second one forces, as always)"
        ),
    ),
    S(
        "reload_extra_files",
        ("--reload-extra-file",),
        text,
        [],
        "with --reload: a file (of any kind) whose change restarts too, or a glob pattern "
        "('templates/**/*.html'); repeatable",
        kind=Kind.LIST,
        metavar="FILE",
        doc="with `--reload`: a file of any kind whose change restarts too, or a glob pattern "
        "(`templates/**/*.html`, matched against each change, so a file created later counts); repeatable",
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
        doc="peers whose forwarding headers and PROXY addresses are believed (see Behind a proxy)",
    ),
    S(
        "no_proxy_headers",
        ("--no-proxy-headers",),
        yes_no,
        False,
        "ignore X-Forwarded-* and Forwarded even from trusted peers (uvicorn --no-proxy-headers)",
        kind=Kind.FLAG,
        doc="ignore `X-Forwarded-*` and `Forwarded` from every peer",
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
        doc=(
            "gunicorn's `secure_scheme_headers`: from a trusted peer, HEADER at VALUE means https, at any other "
            "value http; repeatable (see Behind a proxy)"
        ),
    ),
    S(
        "forwarder_headers",
        ("--forwarder-headers",),
        header_names,
        "SCRIPT_NAME,PATH_INFO",
        "header names with '_' a trusted peer may send into the environ (SCRIPT_NAME mounts the app), "
        "comma-separated, '*' for any (gunicorn's); other '_' names are dropped",
        metavar="NAMES",
        doc="header names with `_` a trusted peer may send into the environ (gunicorn's)",
    ),
    S(
        "proxy_protocol",
        ("--proxy-protocol",),
        yes_no,
        False,
        "every connection begins with a PROXY v1/v2 header (HAProxy, nginx, AWS NLB); without a valid one: 400",
        kind=Kind.FLAG,
        doc="every connection begins with a PROXY v1/v2 header",
    ),
    S(
        "certfile",
        ("--certfile",),
        optional_text,
        None,
        "PEM certificate chain: serve HTTPS",
        metavar="FILE",
        doc="PEM certificate chain: serve HTTPS (see TLS)",
    ),
    S(
        "keyfile",
        ("--keyfile",),
        optional_text,
        None,
        "PEM private key (default: in --certfile)",
        metavar="FILE",
        doc="PEM private key (default: in `--certfile`)",
    ),
    S(
        "ca_certs",
        ("--ca-certs",),
        optional_text,
        None,
        "PEM CA bundle to verify client certificates with",
        metavar="FILE",
        doc="PEM CA bundle to verify client certificates with",
    ),
    S(
        "cert_reqs",
        ("--cert-reqs",),
        client_certificates,
        None,
        "client certificates: none, optional or required (default: required with --ca-certs, else none)",
        doc="verify client certificates: `none`, `optional`, `required` (default: `required` with `--ca-certs`)",
    ),
    S("ciphers", ("--ciphers",), optional_text, None, "OpenSSL cipher list for TLS 1.2"),
    S(
        "workers",
        ("-w", "--workers"),
        count_or_zero,
        0,
        "run a master with this many worker processes (reload, upgrade); 0: serve in this one process",
        doc="a master with N worker processes (reload and upgrade)",
        shown_default="one process",
        metavar="N",
    ),
    S(
        "preload",
        ("--preload",),
        yes_no,
        False,
        "with --workers: import the app in the master before forking",
        kind=Kind.FLAG,
        doc="with `--workers`: import the app in the master",
    ),
    S(
        "ready_timeout",
        ("--ready-timeout",),
        seconds,
        30.0,
        "with --workers: seconds new workers or a new master get to become ready",
        doc="with `--workers`: seconds new workers/master get to become ready",
    ),
    S(
        "reuse_port",
        ("--reuse-port",),
        yes_no,
        False,
        "with --workers: each worker listens on its own SO_REUSEPORT socket (default: one shared accept queue)",
        kind=Kind.FLAG,
        doc=(
            "with `--workers`: each worker listens on its own `SO_REUSEPORT` socket and the kernel spreads "
            "connections by a hash of the peer; the default is one accept queue shared by the workers, which a "
            "blocked or busy worker simply stops taking from, and which also works for unix sockets and systemd "
            "socket activation"
        ),
    ),
    S(
        "max_requests",
        ("--max-requests",),
        count_or_zero,
        0,
        "with --workers: replace a worker after it has served this many requests (0: never)",
        doc=(
            "with `--workers`: replace a worker after about N requests; its replacement starts first, and it drains "
            "only once that one is ready (gunicorn `--max-requests`)"
        ),
        shown_default="0 (off)",
        metavar="N",
    ),
    S(
        "max_requests_jitter",
        ("--max-requests-jitter",),
        count_or_zero,
        0,
        "with --max-requests: add 0 to this many requests per worker, so they do not restart together",
        doc="adds 0 to J to each worker's N, so they do not all restart together (gunicorn's)",
        metavar="J",
    ),
    S(
        "timeout",
        ("--timeout",),
        seconds,
        0.0,
        "with --workers: replace a worker whose event loop is blocked this many seconds, logging its stack (0: off)",
        doc=(
            "with `--workers`: a worker whose event loop is blocked S seconds (CPU loop, unpatched C call) is killed "
            "and replaced, its stack written to the log; its connections count as forced (gunicorn `--timeout`, "
            "which is 30 there and a heartbeat file)"
        ),
        shown_default="0 (off)",
        metavar="S",
    ),
)
del S

BY_NAME: Mapping[str, Setting] = {setting.name: setting for setting in SETTINGS}


#: Rows of the README's option table that are not settings.
_COMMAND_ROWS = (
    ("`-c/--config FILE`", "", "a Python file of settings"),
    ("`--print-config`", "", "print the settings and their sources, then exit"),
)


def readme_table() -> str:
    """The README's option table, in Markdown: one row per setting, in table order."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    rows += [f"| {option} | {default} | {meaning} |" for option, default, meaning in _COMMAND_ROWS]
    for setting in SETTINGS:
        if not setting.flags:
            continue  # APP, the positional argument
        option = "/".join(setting.flags) + (f" {setting.metavar}" if setting.metavar else "")
        rows.append(f"| `{option}` | {_readme_default(setting)} | {setting.doc or setting.help} |")
    return "\n".join(rows) + "\n"


def _readme_default(setting: Setting) -> str:
    if setting.shown_default is not None:
        return setting.shown_default
    default = setting.default
    if setting.kind is Kind.FLAG:
        return "on" if default else "off"
    if default is None or default == []:
        return ""
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, str):
        return f"`{default}`"
    return str(default)
