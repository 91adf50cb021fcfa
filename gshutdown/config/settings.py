"""The resolved settings: one frozen, typed ``Settings`` object per process.

Where a value comes from, first found wins:

    command line  >  environment  >  configuration file  >  default

``resolve()`` takes what the command line gave and the configuration file
set, reads the environment, and returns a ``Settings`` that also records
where each value came from (``--print-config`` shows both). Bad values raise
``SettingError`` with a one-line message. Everything below the command line
reads ``Settings`` fields, never option names.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

from gshutdown.config.parsers import SettingError, milliseconds, octal, scheme_header, yes_no
from gshutdown.config.table import BY_NAME, SETTINGS, Kind, Setting

__all__ = ["BY_NAME", "SETTINGS", "Kind", "Setting", "SettingError", "Settings", "resolve"]

#: A listener as ``--bind`` gives it: ``(host, port)`` or ``"unix:PATH"``.
BindAddress = Union[tuple[str, int], str]


@dataclass(frozen=True)
class Settings:
    """Every setting's value, typed; one field per row of ``table.SETTINGS``, in its order.

    Times are in seconds, sizes in bytes. ``None`` means "no limit" where a
    field allows it, and "not set" for paths and names.
    """

    #: The application: ``MODULE:NAME``, ``MODULE`` or ``FILE.py[:NAME]``.
    app: Optional[str]
    #: Listeners to bind.
    bind: list[BindAddress]
    #: Seconds a graceful shutdown may take before connections are forced.
    graceful_timeout: float
    #: Seconds of readiness at 503, still serving, before the listener closes.
    drain_delay: float
    #: Path the server answers itself with readiness ("" for none).
    readiness_path: str
    #: Path the server answers itself with Prometheus metrics (None: none).
    metrics_path: Optional[str]
    #: A listener of its own for the readiness and metrics paths (None: they are on the app's listeners).
    admin_bind: Optional[BindAddress]
    #: Seconds an idle connection may still start a request once a shutdown begins.
    idle_grace: float
    #: Keep-alive idle seconds (None: no limit).
    idle_timeout: Optional[float]
    #: Seconds to receive a request head (None: no limit).
    read_header_timeout: Optional[float]
    #: Seconds of the longest wait for the next piece of a request body (None: no limit).
    read_body_timeout: Optional[float]
    #: Seconds one response write may take (None: no limit).
    write_timeout: Optional[float]
    #: Connections served at once (None: no limit).
    max_connections: Optional[int]
    #: WebSockets open at once (None: 9/10 of ``max_connections``).
    max_websockets: Optional[int]
    #: Largest WebSocket message received through ``wsgi.websocket``, in bytes.
    max_websocket_message: int
    #: Hijacked connections at once, outside max_connections (None: no limit).
    max_hijacked: Optional[int]
    #: Largest request body in bytes (None: no limit).
    max_body_size: Optional[int]
    #: Bytes per second a request body must keep up (None: no minimum).
    min_body_rate: Optional[int]
    #: Listen backlog, in connections.
    backlog: int
    #: Longest request line, in bytes.
    limit_request_line: int
    #: Most header fields in a request.
    limit_request_fields: int
    #: Longest header field in bytes (None: only the head limit).
    limit_request_field_size: Optional[int]
    #: Close every connection after its response.
    no_keep_alive: bool
    #: Send ``wsgi.file_wrapper`` files with reads and writes, never ``sendfile()``.
    no_sendfile: bool
    #: The ``Server`` header value ("" for none).
    server_header: str
    #: Access log file, ``-`` for stderr (None: off).
    access_log: Optional[str]
    #: Access log format: gunicorn's atoms or ``json`` (None: Common Log Format).
    access_log_format: Optional[str]
    #: The server's own log file (None: stderr).
    error_log: Optional[str]
    #: debug, info, warning, error or critical.
    log_level: str
    #: A JSON file of a ``logging.config.dictConfig()`` dictionary, or the dictionary.
    log_config: Union[str, dict[str, Any], None]
    #: Send the app's stdout and stderr to the error log.
    capture_output: bool
    #: Seconds a greenlet may block the event loop before it is logged (0: off).
    max_blocking_time: float
    #: Do not monkey-patch before importing the app.
    no_monkey_patch: bool
    #: Pid file path.
    pid: Optional[str]
    #: Directory to change to before loading the app.
    chdir: Optional[str]
    #: User to switch to after binding (name or uid).
    user: Optional[str]
    #: Group to switch to after binding (name or gid).
    group: Optional[str]
    #: Process umask (None: inherited).
    umask: Optional[int]
    #: Permission bits of unix sockets bound (None: what the umask leaves).
    unix_socket_mode: Optional[int]
    #: ``NAME=VALUE`` pairs set in the environment before the app loads.
    raw_env: list[str]
    #: Comma-separated directories put first on ``sys.path`` before the app is imported.
    pythonpath: Optional[str]
    #: The process title's name (needs ``setproctitle``; None: the title is left alone).
    proc_name: Optional[str]
    #: Restart when the app's code changes (development).
    reload: bool
    #: More files whose change restarts, with ``reload``.
    reload_extra_files: list[str]
    #: Peers whose forwarding headers and PROXY addresses are believed.
    forwarded_allow_ips: str
    #: Ignore ``X-Forwarded-*`` and ``Forwarded`` from every peer.
    no_proxy_headers: bool
    #: ``(HEADER, VALUE)``: from a trusted peer, HEADER at VALUE means https, at anything else
    #: http (None: ``X-Forwarded-Proto`` and ``Forwarded``'s ``proto``, as ``forwarded`` reads them).
    secure_scheme_headers: Optional[list[tuple[str, str]]]
    #: Upper-cased names of ``_`` headers a trusted peer may send into the environ, comma-separated.
    forwarder_headers: str
    #: Every connection begins with a PROXY protocol header.
    proxy_protocol: bool
    #: PEM certificate chain (serves HTTPS).
    certfile: Optional[str]
    #: PEM private key (None: in ``certfile``).
    keyfile: Optional[str]
    #: PEM CA bundle to verify client certificates with.
    ca_certs: Optional[str]
    #: Client certificates: none, optional or required (None: by ``ca_certs``).
    cert_reqs: Optional[str]
    #: OpenSSL cipher list for TLS 1.2.
    ciphers: Optional[str]
    #: Worker processes (0: serve in this one process).
    workers: int
    #: Import the app in the master before forking.
    preload: bool
    #: Seconds new workers or a new master get to become ready.
    ready_timeout: float
    #: Each worker listens on its own ``SO_REUSEPORT`` socket.
    reuse_port: bool
    #: Requests after which a worker is replaced (0: never).
    max_requests: int
    #: Up to this many requests added to each worker's ``max_requests``.
    max_requests_jitter: int
    #: Seconds a worker's event loop may be blocked before it is replaced (0: off).
    timeout: float

    # -- not settings: where each value came from, and what to tell the user
    #: Setting name -> ``CLI``, ``ENV``, ``FILE`` or ``DEFAULT``.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    #: Warnings about the configuration, logged once logging is set up.
    warnings: tuple[str, ...] = field(default=(), compare=False)
    #: gunicorn's server hooks a configuration file defines, by name (``on_starting``, ``post_fork``, ...).
    hooks: Mapping[str, Callable[..., Any]] = field(default_factory=dict, compare=False)

    @classmethod
    def defaults(cls, **changes: Any) -> Settings:
        """Every setting at its default, with ``changes`` applied."""
        values = {setting.name: _fresh(setting.default) for setting in SETTINGS}
        values.update(changes)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (unknown names raise TypeError)."""
        return dataclasses.replace(self, **changes)


def _fresh(default: Any) -> Any:
    # A list default must not be shared between Settings objects.
    return list(default) if isinstance(default, list) else default


#: Where a value came from.
CLI, ENV, FILE, DEFAULT = "command line", "environment", "config file", "default"
#: gunicorn's options in one environment variable (also the source it names):
#: below the command line and the GSHUTDOWN_* variables, above the file.
GUNICORN_CMD_ARGS = "GUNICORN_CMD_ARGS"
#: What an option the command line did not give holds after parsing.
NOT_GIVEN: Any = type("NotGiven", (), {"__repr__": lambda self: "NOT_GIVEN"})()


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


def resolve(
    given: argparse.Namespace,
    file_values: Optional[Mapping[str, Any]] = None,
    warnings: tuple[str, ...] = (),
    gunicorn_cmd_args: Optional[argparse.Namespace] = None,
) -> Settings:
    """Every setting's value by precedence (command line, environment, file, default).

    ``given`` holds what the command line set (``NOT_GIVEN`` where it set
    nothing), and ``gunicorn_cmd_args`` what ``GUNICORN_CMD_ARGS`` did (below
    the ``GSHUTDOWN_*`` variables); ``warnings`` are kept in the result for
    the runner to log.

    Raises:
        SettingError: an environment variable holds a bad value.
    """
    file_values = file_values or {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        value, source = _given(given, setting), CLI
        if value is NOT_GIVEN:
            value, source = _from_env(setting), ENV
        if value is NOT_GIVEN and gunicorn_cmd_args is not None:
            value, source = _given(gunicorn_cmd_args, setting), GUNICORN_CMD_ARGS
        if value is NOT_GIVEN and setting.name in file_values:
            value, source = file_values[setting.name], FILE
        if value is NOT_GIVEN:
            value, source = _fresh(setting.default), DEFAULT
        values[setting.name] = value
        sources[setting.name] = source
    return Settings(**values, sources=sources, warnings=warnings)


def _given(namespace: argparse.Namespace, setting: Setting) -> Any:
    value = getattr(namespace, setting.name, NOT_GIVEN)
    # argparse's default for a repeatable option is None: nothing given.
    return NOT_GIVEN if value is None and setting.kind is Kind.LIST else value


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


def render(settings: Settings) -> str:
    """The resolved settings as a configuration file that sets them, each with its source."""
    lines = []
    for setting in SETTINGS:
        value = getattr(settings, setting.name)
        if setting.name == "bind":
            from gshutdown.config.addresses import describe_listener

            shown = repr([describe_listener(item) for item in value])
        elif setting.name == "admin_bind" and value is not None:
            from gshutdown.config.addresses import describe_listener

            shown = repr(describe_listener(value))
        elif setting.parse is octal and value is not None:
            shown = oct(value)
        elif setting.parse is milliseconds:
            shown = repr(value * 1000)
        elif setting.parse is scheme_header and value is not None:
            shown = repr(dict(value))  # gunicorn's form, which a file reads back
        else:
            shown = repr(value)
        lines.append(f"{setting.name} = {shown}  # {settings.sources[setting.name]}")
    return "\n".join(lines) + "\n"
