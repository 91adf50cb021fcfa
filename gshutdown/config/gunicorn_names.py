"""What each of gunicorn's settings and server hooks becomes here: one row per name.

A gunicorn configuration file (``-c FILE``) is read by these rows
(``config_file``), and the README's "Coming from gunicorn" tables are written
from them (``scripts/readme_tables.py``), so the two cannot disagree. A test
checks that every name of the installed gunicorn's ``KNOWN_SETTINGS`` has a
row: a setting gunicorn adds cannot go unclassified.

Handling:

- ``HONOURED``: the same name here, with gunicorn's meaning (``note`` tells a
  different default or limit).
- ``MAPPED``: read as our setting ``target`` (a different name or form).
- ``IGNORED``: means nothing here; setting it logs one warning with ``note``,
  the reason (a value that asks for nothing, such as False, None or 0, or
  one of ``accepted``, which ask for what happens here anyway, is taken
  silently).
- ``REFUSED``: a value other than ``accepted`` (or one asking for nothing) is
  an error: running on would do something other than the file asks.
- ``HOOK``: a gunicorn server hook; the file's function is handed on
  (``config_file.ConfigFile.hooks``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping, Optional


class Handling(enum.Enum):
    HONOURED = "honoured"
    MAPPED = "mapped"
    IGNORED = "ignored"
    REFUSED = "refused"
    HOOK = "hook"


@dataclass(frozen=True)
class GunicornName:
    """One of gunicorn's settings or hooks, and what it becomes here."""

    handling: Handling
    #: Our setting it sets (HONOURED: the same name; MAPPED: ours), or None.
    target: Optional[str] = None
    #: MAPPED: how; IGNORED/REFUSED: why; HONOURED: what differs, if anything.
    note: str = ""
    #: IGNORED and REFUSED: values that ask for what happens here anyway (no warning, no error).
    accepted: tuple[Any, ...] = ()


def _same(note: str = "", *, target: Optional[str] = None) -> GunicornName:
    return GunicornName(Handling.HONOURED, target, note)


def _mapped(target: Optional[str], note: str = "") -> GunicornName:
    return GunicornName(Handling.MAPPED, target, note)


def _ignored(why: str, accepted: tuple[Any, ...] = ()) -> GunicornName:
    return GunicornName(Handling.IGNORED, None, why, accepted)


def _refused(why: str, accepted: tuple[Any, ...] = ()) -> GunicornName:
    return GunicornName(Handling.REFUSED, None, why, accepted)


def _hook(when: str) -> GunicornName:
    return GunicornName(Handling.HOOK, None, when)


_HTTP_ONLY = "HTTP/1.1 only; no switch here"
_PARSER = "requests are parsed by httptools; no switch here"
_NO_SYSLOG = "no syslog handler built in: add a logging.handlers.SysLogHandler in logconfig_dict"
_NO_STATSD = "no StatsD: Prometheus metrics with --metrics-path"
_WSGI_ONLY = "gunicorn's ASGI worker's; gshutdown serves WSGI"
_NO_DIRTY = "no dirty arbiters (gunicorn's separate pool for long jobs)"
_NO_CONTROL = "no control socket: signal the master (HUP, TTIN, TTOU, USR2)"
_NO_PASTE = "no PasteDeploy: name the WSGI app (APP or wsgi_app)"

#: Every gunicorn setting and hook (gunicorn 27's, and older names still seen in files), by name.
GUNICORN_NAMES: Mapping[str, GunicornName] = {
    # -- config file
    "config": _mapped(
        None,
        (
            "`-c FILE` (or `GSHUTDOWN_CONFIG`), default `./gunicorn.conf.py` as gunicorn's;"
            " inside a file it means nothing"
        ),
    ),
    "wsgi_app": _mapped("app", "the APP argument; the command line's wins"),
    # -- server socket
    "bind": _same(),
    "backlog": _same(),
    # -- worker processes
    "workers": _same("gunicorn's default is a master and 1 worker; here 0 (the default) serves in one process"),
    "worker_class": _ignored(
        "always gevent: gshutdown is a gevent server (gunicorn -k gshutdown.gunicorn.Worker keeps gunicorn's arbiter)",
        accepted=(
            "gevent",
            "egg:gunicorn#gevent",
            "gunicorn.workers.ggevent.GeventWorker",
            # gshutdown serves gevent-websocket's WebSockets itself.
            "geventwebsocket.gunicorn.workers.GeventWebSocketWorker",
        ),
    ),
    "threads": _ignored("one greenlet per connection, no thread pool", accepted=(1,)),
    "worker_connections": _mapped("max_connections"),
    "max_requests": _same("needs workers"),
    "max_requests_jitter": _same("needs workers"),
    "timeout": _same("needs workers; off unless set (gunicorn: 30): a worker whose event loop is blocked that long"),
    "graceful_timeout": _same(),
    "keepalive": _mapped("idle_timeout", "seconds (5 here, 2 in gunicorn)"),
    # -- security
    "limit_request_line": _same("8190 here, 4094 in gunicorn"),
    "limit_request_fields": _same(),
    "limit_request_field_size": _same("none here (the 64 KiB head limit), 8190 in gunicorn"),
    # -- debugging
    "reload": _same("watchfiles (pip install 'gshutdown[reload]'); with workers a reload (SIGHUP), else a re-exec"),
    "reload_engine": _ignored("watchfiles picks inotify or polling itself", accepted=("auto",)),
    "reload_extra_files": _same("files and glob patterns, as gunicorn 26.1 reads them"),
    "spew": _ignored("no line tracing: use a debugger or py-spy"),
    "check_config": _ignored("a command-line action: a bad file is a one-line error at start anyway"),
    "print_config": _mapped(None, "`--print-config` on the command line; inside a file it means nothing"),
    # -- server mechanics
    "preload_app": _mapped("preload"),
    "sendfile": _mapped(
        "no_sendfile", "`sendfile = False` is `--no-sendfile`; None (gunicorn's default) sends with it"
    ),
    "reuse_port": _same(),
    "chdir": _same(),
    "daemon": _refused("run under systemd or a container"),
    "raw_env": _same("SCRIPT_NAME=/prefix mounts the app there"),
    "pidfile": _mapped("pid"),
    "worker_tmp_dir": _ignored("no heartbeat files: workers report to the master over a pipe"),
    "user": _same(),
    "group": _same(),
    "umask": _same(),
    "initgroups": _ignored("supplementary groups are always dropped; the group given (or the user's) stays"),
    "tmp_upload_dir": _ignored("gunicorn itself never used it"),
    "secure_scheme_headers": _same("header names compared case-insensitively"),
    "forwarded_allow_ips": _same("also trusts X-Forwarded-For/Forwarded (REMOTE_ADDR) and PROXY addresses"),
    "forwarder_headers": _same(),
    "header_map": _ignored(
        "headers with '_' are dropped (gunicorn's 'drop'), except forwarder_headers", accepted=("drop",)
    ),
    "pythonpath": _same(),
    "paste": _ignored(_NO_PASTE),
    "raw_paste_global_conf": _ignored(_NO_PASTE),
    "proxy_protocol": _same("v1 and v2 are both read whatever the value: off, or v1/v2/auto/True (on)"),
    "proxy_allow_ips": _ignored("PROXY addresses are believed from forwarded_allow_ips"),
    "protocol": _refused("HTTP only (no uwsgi protocol)", accepted=("http",)),
    "uwsgi_allow_ips": _ignored("no uwsgi protocol"),
    "strip_header_spaces": _ignored(_PARSER),
    "permit_obsolete_folding": _ignored(_PARSER),
    "permit_unconventional_http_method": _ignored(_PARSER),
    "permit_unconventional_http_version": _ignored(_PARSER),
    "casefold_http_method": _ignored(_PARSER),
    "http_parser": _ignored(_PARSER),
    "root_path": _ignored("ASGI's root_path; a WSGI app is mounted by SCRIPT_NAME in the environment (raw_env)"),
    # -- logging
    "accesslog": _mapped("access_log"),
    "disable_redirect_access_to_syslog": _ignored(_NO_SYSLOG),
    "access_log_format": _same("also `json`"),
    "errorlog": _mapped("error_log"),
    "loglevel": _mapped("log_level"),
    "capture_output": _same("with the error log on stderr, stdout goes there too"),
    "logger_class": _ignored("the logging module is the logger: configure it with logconfig_dict"),
    "logconfig": _mapped("log_config", "a logging.config.fileConfig() file"),
    "logconfig_dict": _mapped("log_config", "the dictionary; wins over logconfig_json and logconfig, as in gunicorn"),
    "logconfig_json": _mapped("log_config", "a JSON file of a dictConfig() dictionary"),
    "syslog": _ignored(_NO_SYSLOG),
    "syslog_addr": _ignored(_NO_SYSLOG),
    "syslog_prefix": _ignored(_NO_SYSLOG),
    "syslog_facility": _ignored(_NO_SYSLOG),
    "enable_stdio_inheritance": _ignored("stdio is always inherited", accepted=(True,)),
    "statsd_host": _ignored(_NO_STATSD),
    "statsd_prefix": _ignored(_NO_STATSD),
    "dogstatsd_tags": _ignored(_NO_STATSD),
    "enable_backlog_metric": _ignored(_NO_STATSD),
    # -- process naming
    "proc_name": _same("the title is set only with setproctitle installed and proc_name given"),
    "default_proc_name": _ignored("without proc_name the process title is left alone"),
    # -- SSL
    "keyfile": _same(),
    "certfile": _same(),
    "ssl_version": _ignored("TLS 1.2 and up, whatever the client and OpenSSL agree on"),
    "cert_reqs": _same("also none/optional/required"),
    "ca_certs": _same(),
    "suppress_ragged_eofs": _ignored("no switch here"),
    "do_handshake_on_connect": _ignored("the handshake runs in each connection's greenlet"),
    "ciphers": _same(),
    # -- HTTP/2
    "http_protocols": _ignored(_HTTP_ONLY, accepted=("h1",)),
    "http2_cleartext": _ignored(_HTTP_ONLY),
    "http2_max_concurrent_streams": _ignored(_HTTP_ONLY),
    "http2_initial_window_size": _ignored(_HTTP_ONLY),
    "http2_max_frame_size": _ignored(_HTTP_ONLY),
    "http2_max_header_list_size": _ignored(_HTTP_ONLY),
    # -- ASGI
    "asgi_loop": _ignored(_WSGI_ONLY),
    "asgi_lifespan": _ignored(_WSGI_ONLY),
    "asgi_disconnect_grace_period": _ignored(_WSGI_ONLY),
    "websocket_max_message_size": _ignored(_WSGI_ONLY),
    # -- dirty arbiters
    "dirty_apps": _ignored(_NO_DIRTY),
    "dirty_workers": _ignored(_NO_DIRTY),
    "dirty_timeout": _ignored(_NO_DIRTY),
    "dirty_threads": _ignored(_NO_DIRTY),
    "dirty_graceful_timeout": _ignored(_NO_DIRTY),
    "on_dirty_starting": _ignored(_NO_DIRTY),
    "dirty_post_fork": _ignored(_NO_DIRTY),
    "dirty_worker_init": _ignored(_NO_DIRTY),
    "dirty_worker_exit": _ignored(_NO_DIRTY),
    # -- control socket
    "control_socket": _ignored(_NO_CONTROL),
    "control_socket_mode": _ignored(_NO_CONTROL),
    "control_socket_disable": _ignored(_NO_CONTROL, accepted=(True,)),
    # -- server hooks
    "on_starting": _hook("master, before it binds"),
    "on_reload": _hook("master, on SIGHUP"),
    "when_ready": _hook("master, once it listens"),
    "pre_fork": _hook("master, before each worker is forked"),
    "post_fork": _hook("worker, just after the fork"),
    "post_worker_init": _hook("worker, once the app is loaded"),
    "worker_int": _hook("worker, on SIGINT or SIGQUIT"),
    "worker_abort": _hook("worker, on SIGABRT (a timeout)"),
    "pre_exec": _hook("master, before a new master is exec'd (SIGUSR2)"),
    "pre_request": _hook("worker, before each request"),
    "post_request": _hook("worker, after each request"),
    "child_exit": _hook("master, after a worker exited"),
    "worker_exit": _hook("worker, as it exits"),
    "nworkers_changed": _hook("master, when the worker count changes"),
    "on_exit": _hook("master, as it exits"),
    "ssl_context": _hook("builds the TLS context"),
}

#: Hook names (the functions a file defines for them go to ``ConfigFile.hooks``).
HOOKS: tuple[str, ...] = tuple(name for name, row in GUNICORN_NAMES.items() if row.handling is Handling.HOOK)

#: gunicorn's name -> our setting, for every row that sets one.
SETTING_FOR: Mapping[str, str] = {
    name: row.target or name
    for name, row in GUNICORN_NAMES.items()
    if row.handling is Handling.HONOURED or (row.handling is Handling.MAPPED and row.target)
}

#: What happens to a hook function a file defines (the README's hook table says it).
HOOK_HANDLING = "each called at gunicorn's moment with gunicorn's arguments (`gshutdown.process.gunicorn_hooks`)"
