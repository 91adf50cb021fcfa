"""What a process does before it serves: its environment, logging, privileges, the app's wrappers.

The single process and the master call these in this order:
``prepare_process`` (umask, directory, environment, ``sys.path``),
``monkey_patch``, ``configure_logging``; after binding, ``drop_privileges``;
then the application is imported and wrapped (``build_app``) and the
servers are made from ``server_options``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Mapping, Optional, Sequence

from gshutdown.config.settings import Settings
from gshutdown.process import logs
from gshutdown.process.exit_status import ExitStatus, fail
from gshutdown.process.metrics import ProcessMetrics, check_path
from gshutdown.wsgi import access_format
from gshutdown.wsgi.adapter import WSGIApp
from gshutdown.wsgi.middleware import AccessLog, Readiness

log = logging.getLogger("gshutdown")

#: The default Kubernetes ``terminationGracePeriodSeconds``.
KUBERNETES_GRACE = 30.0


def build_app(
    app: WSGIApp,
    *,
    readiness_path: Optional[str],
    access_log: bool,
    access_log_format: Optional[str] = None,
    metrics: Optional[ProcessMetrics] = None,
) -> tuple[WSGIApp, Optional[Readiness]]:
    """Wrap ``app`` with the access log, the readiness probe and the metrics path, as configured."""
    if access_log:
        app = AccessLog(app, access_format.emitter(access_log_format, logs.access_log))
    readiness = None
    if readiness_path:
        readiness = Readiness(app, readiness_path)
        app = readiness
    if metrics is not None:
        app = metrics.endpoint(app)
    return app, readiness


def process_metrics(
    metrics_path: Optional[str], readiness_path: Optional[str], *, multiprocess: bool = False
) -> Optional[ProcessMetrics]:
    """The process's metrics for ``metrics_path`` (None: off).

    Raises:
        MetricsUnavailable: prometheus-client is missing, or the path is unusable.
    """
    if not metrics_path:
        return None
    return ProcessMetrics(check_path(metrics_path, readiness_path), multiprocess=multiprocess)


def warn_if_over_kubernetes_grace(settings: Settings) -> None:
    """Warn when drain delay + graceful timeout exceed Kubernetes' default grace period."""
    total = settings.drain_delay + settings.graceful_timeout
    if total > KUBERNETES_GRACE:
        log.warning(
            "drain delay + graceful timeout = %g s, over Kubernetes' default %g s grace: "
            "raise terminationGracePeriodSeconds to match",
            total,
            KUBERNETES_GRACE,
        )


def monkey_patch(settings: Settings) -> None:
    """``gevent.monkey.patch_all()`` unless ``--no-monkey-patch``: before the app is imported.

    Legacy apps rely on patched sockets, and modules that bind socket or
    threading names at import must see the patched ones.
    """
    if not settings.no_monkey_patch:
        from gevent import monkey

        monkey.patch_all()


def watch_blocking(max_blocking_time: Optional[float]) -> None:
    """Log, with its stack, every greenlet that blocks the hub over ``max_blocking_time`` seconds.

    gevent's own monitor thread does the watching (``gevent.config.monitor_thread``);
    this only routes its reports to the log.
    """
    if not max_blocking_time:
        return
    import gevent.events

    blocking_log = logging.getLogger("gshutdown.blocking")

    def report(event: Any) -> None:
        if isinstance(event, gevent.events.EventLoopBlocked):
            blocking_log.warning(
                "the hub was blocked for over %g ms by %r:\n%s",
                event.blocking_time * 1000,
                event.greenlet,
                "\n".join(event.info),
            )

    gevent.config.max_blocking_time = max_blocking_time
    gevent.config.monitor_thread = True
    gevent.config.print_blocking_reports = False  # reported through the log instead
    gevent.events.subscribers.append(report)
    gevent.get_hub().start_periodic_monitoring_thread()


def working_directory() -> str:
    """The working directory by the path it was entered through, as gunicorn remembers it.

    ``$PWD`` when it names the same directory as the real one: a deploy that
    switches a symlink (``/srv/app/current``) and then sends SIGHUP or SIGUSR2
    expects the new release there, not the directory the symlink used to name.
    """
    real = os.getcwd()
    logical = os.environ.get("PWD")
    if logical and os.path.isabs(logical):
        logical = os.path.normpath(logical)  # what is checked is what is returned
        try:
            if os.path.samefile(logical, real):
                return logical
        except OSError:
            pass
    return real


def prepare_process(settings: Settings) -> Optional[ExitStatus]:
    """``--umask``, ``--chdir``, ``--env`` and ``--pythonpath``: before anything is bound or imported.

    Returns a usage error status (after reporting it), or None.
    """
    if settings.umask is not None:
        os.umask(settings.umask)
    if settings.chdir:
        try:
            os.chdir(settings.chdir)
        except OSError as exc:
            return fail(f"--chdir {settings.chdir}: {exc.strerror}", ExitStatus.USAGE)
    set_environment((), settings.raw_env, {})
    if settings.pythonpath:
        # First listed, first searched; after --chdir, so relative ones are the app's.
        paths = [os.path.abspath(path) for path in settings.pythonpath.split(",")]
        sys.path[:0] = [path for path in paths if path not in sys.path]
    return None


def set_environment(old: Sequence[str], new: Sequence[str], original: Mapping[str, str]) -> None:
    """``--env``: set the ``NAME=VALUE`` items of ``new``; a name only ``old`` set gets its ``original`` value back.

    (Or is unset, if it had none.)
    """
    names = {item.partition("=")[0] for item in new}
    for item in old:
        name = item.partition("=")[0]
        if name in names:
            continue
        if name in original:
            os.environ[name] = original[name]
        else:
            os.environ.pop(name, None)
    for item in new:
        name, _, value = item.partition("=")
        os.environ[name] = value


def drop_privileges(user: Optional[str], group: Optional[str]) -> Optional[ExitStatus]:
    """``--user``/``--group``: switch to them once the listeners are bound.

    Returns a usage error status (after reporting it), or None.
    """
    if not user and not group:
        return None
    import grp
    import pwd

    try:
        account = pwd.getpwuid(int(user)) if user and user.isdigit() else pwd.getpwnam(user) if user else None
    except KeyError:
        return fail(f"--user: no such user: {user}", ExitStatus.USAGE)
    try:
        gid = (int(group) if group.isdigit() else grp.getgrnam(group).gr_gid) if group else account.pw_gid  # type: ignore[union-attr]
    except KeyError:
        return fail(f"--group: no such group: {group}", ExitStatus.USAGE)
    try:
        # Groups first: once the user is switched, they can no longer change.
        os.setgroups([gid])
        os.setgid(gid)
        if account is not None:
            os.setuid(account.pw_uid)
    except OSError as exc:
        return fail(f"cannot switch to user {user or '-'} / group {group or '-'}: {exc.strerror}", ExitStatus.USAGE)
    return None


def configure_logging(settings: Settings) -> Optional[ExitStatus]:
    """Logging as the settings say; then the config file's warnings. A usage error status, or None."""
    try:
        apply_logging(settings)
    except ValueError as exc:
        return fail(str(exc), ExitStatus.USAGE)
    log_warnings(settings)
    return None


def log_warnings(settings: Settings) -> None:
    """The config file's warnings, and the one about Kubernetes' grace period."""
    for warning in settings.warnings:
        log.warning("%s", warning)
    warn_if_over_kubernetes_grace(settings)


#: The settings ``apply_logging`` reads.
LOGGING_SETTINGS = ("log_level", "access_log", "error_log", "log_config", "capture_output")


def apply_logging(settings: Settings) -> None:
    """Configure logging (again, on a master's SIGHUP); raises ``ValueError`` (one line)."""
    logs.configure(
        settings.log_level,
        access_log_path=settings.access_log,
        error_log_path=settings.error_log,
        dict_config=settings.log_config,
        capture_output=settings.capture_output,
    )


def server_options(settings: Settings) -> dict[str, Any]:
    """The ``Config`` fields the settings give."""
    return dict(
        idle_timeout=settings.idle_timeout,
        read_header_timeout=settings.read_header_timeout,
        read_body_timeout=settings.read_body_timeout,
        write_timeout=settings.write_timeout,
        idle_grace=settings.idle_grace,
        max_connections=settings.max_connections,
        max_hijacked=settings.max_hijacked,
        max_body_size=settings.max_body_size,
        max_websockets=settings.max_websockets,
        max_websocket_message=settings.max_websocket_message,
        min_body_rate=settings.min_body_rate,
        unix_socket_mode=settings.unix_socket_mode,
        backlog=settings.backlog,
        max_request_line=settings.limit_request_line,
        max_header_count=settings.limit_request_fields,
        max_field_size=settings.limit_request_field_size,
        keep_alive=not settings.no_keep_alive,
        sendfile=not settings.no_sendfile,
        server_header=settings.server_header,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        proxy_headers=not settings.no_proxy_headers,
        proxy_protocol=settings.proxy_protocol,
        secure_scheme_headers=None if settings.secure_scheme_headers is None else tuple(settings.secure_scheme_headers),
        forwarder_headers=tuple(filter(None, settings.forwarder_headers.split(","))),
        certfile=settings.certfile,
        keyfile=settings.keyfile,
        ca_certs=settings.ca_certs,
        cert_reqs=settings.cert_reqs,
        ciphers=settings.ciphers,
    )
