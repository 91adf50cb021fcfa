"""``serve()``: the command's whole life in one process, the single one or a worker.

Bind first (as root, if started so), then switch to ``--user``/``--group``,
and only then import the application, so its import-time code runs with the
privileges it will serve with; then the runner (``runner.Runner``) serves
until a signal stops it. gunicorn's server hooks are called at gunicorn's
moments on the way (``gunicorn_hooks``).
"""

from __future__ import annotations

import gc
import logging
import random
import socket
from typing import Any, Callable, Optional, Sequence, Union

from gshutdown.config.addresses import cannot_listen
from gshutdown.config.settings import Settings
from gshutdown.process import admin, proctitle, systemd
from gshutdown.process.admin import StopFlag
from gshutdown.process.app_loader import AppNotLoadable, load_app
from gshutdown.process.exit_status import ExitStatus, fail
from gshutdown.process.gunicorn_hooks import ServerHooks
from gshutdown.process.metrics import MetricsUnavailable, ProcessMetrics
from gshutdown.process.runner import Trigger, describe, runner_for
from gshutdown.process.setup import (
    build_app,
    configure_logging,
    drop_privileges,
    monkey_patch,
    prepare_process,
    process_metrics,
    server_options,
    watch_blocking,
)
from gshutdown.process.worker_link import WorkerLink
from gshutdown.wsgi.adapter import WSGIApp
from gshutdown.wsgi.server import Server

log = logging.getLogger("gshutdown")


def serve(
    settings: Settings,
    listeners: Optional[Sequence[Any]] = None,
    *,
    link: Optional[WorkerLink] = None,
    admin_listener: Optional[Any] = None,
    master_stop: Optional[StopFlag] = None,
    hooks: Optional[ServerHooks] = None,
) -> ExitStatus:
    """Serve ``settings.app`` in this process until told to stop; return the exit status.

    Binding comes first (as root, if started so), then the switch to
    ``--user``/``--group``, and only then the application's import: its
    import-time code runs with the privileges it will serve with.

    Args:
        settings: the settings (``gshutdown.cli`` resolves them).
        listeners: sockets to serve on instead of binding ``settings.bind``
            (a worker gets its master's).
        link: a worker's pipes to its master (None: the single process).
        admin_listener: a worker's admin listener, bound by its master
            (``--admin-bind``; the single process binds its own).
        master_stop: a worker's master's ``StopFlag``: its admin readiness follows it.
        hooks: a worker's gunicorn hooks, ``post_fork`` called (None: the
            single process's own, master's and worker's moments in one).
    """
    if link is not None:
        monkey_patch(settings)
        return _serve(settings, listeners, link, hooks or ServerHooks(settings), admin_listener, master_stop)
    # A worker's master did all this already, and a worker inherits its
    # master's log handlers: adding them again would write every line twice.
    failed = prepare_process(settings)
    if failed is None:
        monkey_patch(settings)
        failed = configure_logging(settings)
    hooks = ServerHooks(settings)
    if failed is None:
        failed = hooks.single_process_starting()
    if failed is not None:
        return failed
    try:
        return _serve(settings, listeners, None, hooks, settings.admin_bind, None)
    finally:
        hooks.single_process_exited()


def _serve(
    settings: Settings,
    listeners: Optional[Sequence[Any]],
    link: Optional[WorkerLink],
    hooks: ServerHooks,
    admin_listener: Optional[Any],
    master_stop: Optional[StopFlag],
) -> ExitStatus:
    proctitle.set_title(settings.proc_name, "worker" if link is not None else None)
    watch_blocking(settings.max_blocking_time)
    readiness_path = settings.readiness_path or None
    unusable = admin.usage_error(settings)
    if unusable is not None:
        return fail(unusable, ExitStatus.USAGE)
    if listeners is None:
        listeners = systemd.listen_fds() or settings.bind
    options = server_options(settings)
    servers: list[Server] = []
    admin_server: Optional[Server] = None
    try:
        for listener in listeners:
            # The application comes once it is imported, after the switch to --user.
            server = Server(listener, _not_loaded, multiprocess=link is not None, **options)
            if link is not None and not settings.reuse_port:
                # Workers sharing one accept queue: one connection per wake-up,
                # so the first worker awake does not take a whole burst.
                server.max_accept = 1
            elif link is not None and isinstance(listener, socket.socket) and listener.family != socket.AF_UNIX:
                # --reuse-port: a listener of its own (listeners.own_listener), so
                # its close resets what is queued on it, however the worker
                # ends; and sealing it affects no sibling, which gets the SYNs
                # the seal drops when the client sends them again.
                server.seal_listener = True
            server.init_socket()  # bind now, to report a busy port before anything else
            servers.append(server)
        if admin_listener is not None:
            listener = admin_listener
            admin_server = admin.admin_server(
                listener, _not_loaded, multiprocess=link is not None, unix_socket_mode=settings.unix_socket_mode
            )
            admin_server.init_socket()
    except (OSError, ValueError) as exc:
        for server in servers:
            server.close()
        if isinstance(exc, ValueError):  # a setting (a TLS file, forwarded_allow_ips)
            return fail(str(exc), ExitStatus.USAGE)
        return fail(cannot_listen(listener, exc), ExitStatus.START_FAILED)
    bound = [*servers, *([admin_server] if admin_server is not None else [])]
    hooks.use_tls_context(servers)
    # when_ready: bound, before the switch to --user and the app's import (gunicorn's master moment).
    failed = hooks.ready() if link is None else None
    loaded = _switch_user_and_load(settings, link) if failed is None else failed
    if isinstance(loaded, ExitStatus):
        for server in bound:
            server.close()
        return loaded
    app, metrics = loaded
    # Only now: a usage or bind error must stay the one line on stderr.
    log.info(
        "gevent monkey-patching %s",
        "disabled (--no-monkey-patch)" if settings.no_monkey_patch else "applied before importing the app",
    )
    app = hooks.wrap_app(app)
    access_log, access_log_format = bool(settings.access_log), settings.access_log_format
    if admin_server is None:
        wrapped, readiness = build_app(
            app,
            readiness_path=readiness_path,
            access_log=access_log,
            access_log_format=access_log_format,
            metrics=metrics,
        )
    else:
        # The app's port leaves the readiness and metrics paths to the app.
        wrapped, _ = build_app(app, readiness_path=None, access_log=access_log, access_log_format=access_log_format)
        serving = admin.master_serving(master_stop) if master_stop is not None else None
        admin_wsgi, readiness = admin.admin_app(readiness_path, metrics, serving=serving)
        admin_server.set_application(admin_wsgi)
        if serving is not None:
            # A worker's admin readiness says what its master decided, not
            # that this worker drains (it may only be retiring).
            readiness = None
    for server in servers:
        server.set_application(wrapped)
    if link is not None and settings.max_requests:
        # Spread the recycles: workers that started together must not all
        # restart together (gunicorn's max_requests_jitter).
        max_requests: Optional[int] = settings.max_requests + random.randint(0, settings.max_requests_jitter)
    else:
        max_requests = None
    hooks.app_loaded(app, servers)
    runner = runner_for(
        servers,
        graceful_timeout=settings.graceful_timeout,
        drain_delay=settings.drain_delay,
        readiness=readiness,
        pidfile=settings.pid,
        link=link,
        max_requests=max_requests,
        metrics=metrics,
        admin=admin_server,
        on_signal=hooks.signalled,
    )
    # What the imports and the app's start-up made (some 30,000 objects) lives
    # as long as the process: kept out of the collector's sight, a full
    # collection takes 0.2 ms instead of 6 while serving, and the interpreter's
    # exit 9.5 ms instead of 22 (bench/app.py).
    gc.freeze()
    if not (settings.reload and link is None):
        return runner.run()
    from gshutdown.process.reload import SingleProcessReload

    reload = SingleProcessReload(settings, lambda: runner.deliver(Trigger.CODE_CHANGED))
    status = runner.run()
    if runner.stopped_by is Trigger.CODE_CHANGED:  # not when a signal came first
        late = runner.stop_left_unread()
        if late is None:
            reload.exec_again()
        log.info("%s during the --reload restart: exiting instead", describe(late))
    return status


def _switch_user_and_load(
    settings: Settings, link: Optional[WorkerLink]
) -> Union[ExitStatus, tuple[WSGIApp, Optional[ProcessMetrics]]]:
    """``--user``/``--group`` (a worker's master switched already), then, as that user,
    the metrics and the application's import; or a usage error status."""
    if link is None:
        failed = drop_privileges(settings.user, settings.group)
        if failed is not None:
            return failed
    try:
        # A worker's metrics add up with its siblings' (the master set that up).
        metrics = process_metrics(settings.metrics_path, settings.readiness_path or None, multiprocess=link is not None)
        return load_app(settings.app), metrics
    except (MetricsUnavailable, AppNotLoadable) as exc:
        return fail(str(exc), ExitStatus.USAGE)


def _not_loaded(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    # Stands in until the application is imported; nothing is accepted before then.
    start_response("503 Service Unavailable", [("Content-Length", "0")])
    return []
