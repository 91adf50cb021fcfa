"""The process lifecycle: start, wait for a signal, drain, exit.

One code path serves both roles a process can have: the single process (no
``--workers``) and a worker forked by the master. They differ only in what a
signal means, which is data (``SIGNAL_ACTIONS``), and in who they report to.

===========  ===========================  ====================================
signal       single process               worker
===========  ===========================  ====================================
SIGTERM      graceful: readiness 503,     readiness 503 at once; the drain
SIGINT       ``drain_delay``, then        starts on the master's order
             ``shutdown(graceful)``;      (``worker_link``), or on its own
             a second one: close now      ``MASTER_ORDER_WAIT`` later; more
                                          SIGTERM/SIGINT change nothing:
                                          forcing is the master's decision
drain order  (not handled)                graceful, as SIGTERM alone
SIGQUIT      close everything now; "stopped" hooks still run (briefly)
SIGUSR1      reopen the log files
SIGHUP       logged, ignored (reload,     ignored: the master's
SIGUSR2      upgrade and the worker
SIGTTIN      count are a master's)
SIGTTOU
===========  ===========================  ====================================

So a signal to the whole process group (systemd, ``tini -g``, Ctrl-C) means
to a worker exactly what the same signal to its master alone means. A worker
also drains when its master dies, sends heartbeats for ``--timeout``, and asks
to be replaced after ``--max-requests``. Signal handlers only record; the
runner's greenlet decides what a signal means at that moment.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import signal
import time
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import gevent
from gevent.queue import Empty, Queue

from gshutdown.config.addresses import cannot_listen, describe_address
from gshutdown.config.settings import Settings
from gshutdown.process import admin, logs, pidfile, systemd
from gshutdown.process.admin import StopFlag
from gshutdown.process.app_loader import AppNotLoadable, load_app
from gshutdown.process.exit_status import ExitStatus, fail
from gshutdown.process.metrics import MetricsUnavailable, ProcessMetrics, check_path
from gshutdown.process.worker_link import DRAIN_SIGNAL, MASTER_ORDER_WAIT, WorkerLink
from gshutdown.server.hooks import HookList, HookOutcome, HookPhase, app_hooks, join_drain_hooks
from gshutdown.server.http_server import Listener
from gshutdown.server.shutdown import ShutdownResult
from gshutdown.server.state import ConnState
from gshutdown.wsgi import access_format
from gshutdown.wsgi.adapter import WSGIApp
from gshutdown.wsgi.middleware import AccessLog, Readiness
from gshutdown.wsgi.server import Server

log = logging.getLogger("gshutdown")

#: The default Kubernetes ``terminationGracePeriodSeconds``.
KUBERNETES_GRACE = 30.0


class Role(enum.Enum):
    """What a serving process is: on its own, or one of a master's workers."""

    SINGLE = "single"
    WORKER = "worker"
    #: A worker of gunicorn's arbiter (``gshutdown.gunicorn``): its signals mean what gunicorn says.
    GUNICORN_WORKER = "gunicorn worker"


class SignalAction(enum.Enum):
    """What a signal asks of a serving process."""

    GRACEFUL = "graceful shutdown"
    #: Turn unready, and drain on the master's order (or on its own, later).
    AWAIT_MASTER = "graceful shutdown on the master's order"
    CLOSE_NOW = "close now"
    REOPEN_LOGS = "reopen logs"
    #: Reload, upgrade and the worker count need a master: say so, ignore it.
    NEEDS_MASTER = "needs a master"
    #: The master's business (it got the same signal, or sent it on purpose).
    IGNORE = "ignore"


class Trigger(enum.Enum):
    """Reasons to shut down that are not signals; each means a graceful shutdown."""

    REQUESTED = "shutdown trigger"
    MASTER_GONE = "master gone"
    MAX_REQUESTS = "max requests reached"


_MASTER_ONLY = (signal.SIGHUP, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU)
_COMMON: Mapping[int, SignalAction] = {
    signal.SIGQUIT: SignalAction.CLOSE_NOW,
    signal.SIGUSR1: SignalAction.REOPEN_LOGS,
}
#: What each signal means while serving. The default action of every one of
#: them would end (or, for SIGTTIN/SIGTTOU, stop) the process mid-request.
SIGNAL_ACTIONS: Mapping[Role, Mapping[int, SignalAction]] = {
    Role.SINGLE: {
        signal.SIGTERM: SignalAction.GRACEFUL,
        signal.SIGINT: SignalAction.GRACEFUL,
        **_COMMON,
        **{signum: SignalAction.NEEDS_MASTER for signum in _MASTER_ONLY},
    },
    Role.WORKER: {
        signal.SIGTERM: SignalAction.AWAIT_MASTER,
        signal.SIGINT: SignalAction.AWAIT_MASTER,
        DRAIN_SIGNAL: SignalAction.GRACEFUL,
        **_COMMON,
        **{signum: SignalAction.IGNORE for signum in _MASTER_ONLY},
    },
    # gunicorn's worker contract: SIGTERM drains, SIGINT and SIGQUIT quit now.
    Role.GUNICORN_WORKER: {
        signal.SIGTERM: SignalAction.GRACEFUL,
        signal.SIGINT: SignalAction.CLOSE_NOW,
        **_COMMON,
    },
}
_STOPS = (SignalAction.GRACEFUL, SignalAction.AWAIT_MASTER, SignalAction.CLOSE_NOW)

StopRequest = Union[int, Trigger]


def action_for(role: Role, request: StopRequest, draining: bool) -> SignalAction:
    """What ``request`` means to a process of ``role``, before or during its drain."""
    action = SignalAction.GRACEFUL if isinstance(request, Trigger) else SIGNAL_ACTIONS[role][request]
    if action in (SignalAction.GRACEFUL, SignalAction.AWAIT_MASTER) and draining:
        # Only a single process decides to force on its own; a worker waits
        # for its master's SIGQUIT. A trigger never forces.
        forces = role is Role.SINGLE and not isinstance(request, Trigger)
        return SignalAction.CLOSE_NOW if forces else SignalAction.IGNORE
    return action


def describe(request: StopRequest) -> str:
    """A signal's name (``SIGTERM``; the number if it has none), or a trigger's."""
    if isinstance(request, Trigger):
        return request.value
    if request == DRAIN_SIGNAL:
        return "the master's drain order"
    try:
        return signal.Signals(request).name
    except ValueError:
        return f"signal {request}"


class Runner:
    """Runs servers until a signal (or ``shutdown_trigger``) says stop.

    Args:
        servers: started by ``run()``; they share one shutdown.
        graceful_timeout: seconds a graceful shutdown may take before what is
            left is forced (Kubernetes' default grace: 30).
        drain_delay: seconds between the signal and the start of the shutdown,
            during which the readiness path answers 503 and requests are still
            served normally.
        readiness: the readiness wrapper to turn unready, if any.
        shutdown_trigger: blocks until a graceful shutdown should begin, as
            an alternative to signals (tests, embedding).
        pidfile: written at start, removed at exit (single process only).
        install_signals: handle the signals of ``SIGNAL_ACTIONS``.
        hooks: on-shutdown hooks of the whole process (``gshutdown.on_shutdown``):
            "drain" ones run as the shutdown starts, "stopped" ones once every
            server has drained.
        on_ready: called once every server is listening (default: tell
            systemd, or the master).
        link: this worker's pipes to its master; makes the runner a worker.
        max_requests: with ``link``: after about this many requests, ask the
            master for a replacement (``--max-requests``; None: never).
        metrics: observes the servers and records the shutdown (``--metrics-path``).
        role: what signals mean (``SIGNAL_ACTIONS``); by default a worker
            with ``link``, the single process without.
        admin: the admin listener's server (``--admin-bind``, ``process.admin``):
            started with ``servers``, closed only as ``run()`` returns; it is
            not drained, and its connections are not in ``results``.
    """

    def __init__(
        self,
        servers: Sequence[Server],
        *,
        graceful_timeout: Optional[float] = KUBERNETES_GRACE,
        drain_delay: float = 0.0,
        readiness: Optional[Readiness] = None,
        shutdown_trigger: Optional[Callable[[], Any]] = None,
        pidfile: Optional[str] = None,
        install_signals: bool = True,
        hooks: Optional[HookList] = None,
        on_ready: Optional[Callable[[], Any]] = None,
        link: Optional[WorkerLink] = None,
        max_requests: Optional[int] = None,
        metrics: Optional[ProcessMetrics] = None,
        role: Optional[Role] = None,
        admin: Optional[Server] = None,
    ) -> None:
        self.servers = list(servers)
        self.admin = admin
        self.graceful_timeout = graceful_timeout
        self.drain_delay = drain_delay
        self.readiness = readiness
        self.shutdown_trigger = shutdown_trigger
        self.pidfile = pidfile
        self.install_signals = install_signals
        self.hooks = hooks if hooks is not None else HookList()
        self.on_ready = on_ready
        self.link = link
        self.role = role or (Role.WORKER if link is not None else Role.SINGLE)
        self.max_requests = max_requests
        self.metrics = metrics
        self.hook_outcomes: list[HookOutcome] = []
        self.results: list[ShutdownResult] = []
        #: A stop was asked for: readiness answers 503 (if there is a probe).
        self.unready = False
        #: Seconds the graceful shutdown took, hooks included (None: none ran).
        self.drain_duration: Optional[float] = None
        #: Connections closed by force: at the deadline, or by a second signal or SIGQUIT.
        self.forced_connections = 0
        self._requests: Queue[StopRequest] = Queue()

    def deliver(self, request: StopRequest) -> None:
        """Act on ``request`` (a signal number or a ``Trigger``) as on a received signal.

        For code that owns the signal handlers (``gshutdown.gunicorn``); safe
        from any greenlet of the runner's hub.
        """
        self._requests.put_nowait(request)

    # -- serving -------------------------------------------------------------------

    def run(self) -> ExitStatus:
        """Serve until told to stop; return the process exit status."""
        handlers = []
        if self.install_signals:
            for signum in SIGNAL_ACTIONS[self.role]:
                # Only record: the runner's greenlet decides what it means now.
                handlers.append(gevent.signal_handler(signum, self.deliver, signum))
        helpers = []
        if self.shutdown_trigger is not None:
            helpers.append(gevent.spawn(self._wait_trigger))
        try:
            if self.metrics is not None:
                self.metrics.attach(self)
            for server in self.servers:
                if not server.started:
                    server.start()
            if self.admin is not None and not self.admin.started:
                self.admin.start()
            if self.role is Role.SINGLE:
                pidfile.write(self.pidfile)
            for server in self.servers:
                log.info("listening on %s", describe_address(server.address, tls=server.ssl_context is not None))
            if self.admin is not None:
                log.info("readiness and metrics on %s (--admin-bind)", describe_address(self.admin.address))
            if self.link is not None:
                helpers += self._start_worker_duties(self.link)
            if self.on_ready is not None:
                self.on_ready()
            elif self.link is not None:
                self.link.report_ready()
            else:
                systemd.notify("READY=1")
            return self._serve_until_stopped()
        finally:
            for handler in handlers:
                handler.cancel()
            if handlers and self.role is Role.WORKER:
                # A drain order that crosses this exit (the master stopping while a
                # reload's old worker finishes) must not kill it: SIG_DFL terminates.
                signal.signal(DRAIN_SIGNAL, signal.SIG_IGN)
            for helper in helpers:
                helper.kill(block=False)
            if self.metrics is not None:
                self.metrics.detach()
            if self.role is Role.SINGLE:
                pidfile.remove(self.pidfile)
            if self.admin is not None:
                # Last: readiness answers (503) for as long as the process serves anything.
                self.admin.close()

    def _wait_trigger(self) -> None:
        assert self.shutdown_trigger is not None
        self.shutdown_trigger()
        self._requests.put(Trigger.REQUESTED)

    def _start_worker_duties(self, link: WorkerLink) -> list[gevent.Greenlet]:
        def watch_master() -> None:
            link.wait_master_gone()
            self._requests.put(Trigger.MASTER_GONE)

        helpers = [gevent.spawn(watch_master)]
        if link.heartbeat:
            helpers.append(gevent.spawn(self._beat, link, link.heartbeat))
        if self.max_requests:
            self._arm_request_limit(self.max_requests)
        return helpers

    def _beat(self, link: WorkerLink, interval: float) -> None:
        # Runs on the hub like everything else: a greenlet that blocks the hub
        # stops the heartbeats, which is what the master looks for.
        while True:
            link.beat(sum(len(server.registry) for server in self.servers))
            gevent.sleep(interval)

    def _arm_request_limit(self, limit: int) -> None:
        served = sum(server.requests_total for server in self.servers)
        if served >= limit:
            log.info("worker %d: %d requests served (--max-requests): asking for a replacement", os.getpid(), served)
            assert self.link is not None
            self.link.ask_recycle()
            return
        for server in self.servers:
            # Whichever server gets there first re-counts them all.
            server.notify_after_requests(server.requests_total + limit - served, lambda: self._arm_request_limit(limit))

    def _serve_until_stopped(self) -> ExitStatus:
        first = self._next_request(draining=False, timeout=None)
        assert first is not None
        action = action_for(self.role, first, draining=False)
        if action is SignalAction.AWAIT_MASTER:
            self._turn_unready()
            log.info("%s: unready; draining on the master's order", describe(first))
            order = self._next_request(draining=False, timeout=MASTER_ORDER_WAIT, skip=SignalAction.AWAIT_MASTER)
            if order is None:
                log.info("no order from the master within %g s: draining on my own", MASTER_ORDER_WAIT)
                action = SignalAction.GRACEFUL
            else:
                first = order
                action = action_for(self.role, order, draining=False)
        if action is SignalAction.CLOSE_NOW:
            log.info("%s: closing every connection now", describe(first))
            return self._close_now()
        if self.role is Role.SINGLE and self.on_ready is None:
            # Only the service systemd watches: not an embedder's runner that
            # reports readiness elsewhere.
            systemd.notify("STOPPING=1")
        log.info("%s: graceful shutdown", describe(first))
        self._turn_unready()
        if self.drain_delay > 0:
            log.info("drain delay: readiness is 503; serving %g s more before closing", self.drain_delay)
            again = self._next_request(draining=True, timeout=self.drain_delay)
            if again is not None:
                log.info("%s during the drain delay: closing every connection now", describe(again))
                return self._close_now()
        return self._drain()

    def _turn_unready(self) -> None:
        self.unready = True
        if self.readiness is not None:
            self.readiness.set_draining()

    def _next_request(
        self, *, draining: bool, timeout: Optional[float], skip: Optional[SignalAction] = None
    ) -> Optional[StopRequest]:
        """The next request to stop (or, draining, to force); None after ``timeout`` seconds.

        Requests that stop nothing (reopen the logs, a master's signal, and
        ``skip``) are dealt with here, whenever they come.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                request = self._requests.get(timeout=left)
            except Empty:
                return None
            action = action_for(self.role, request, draining)
            if action in _STOPS and action is not skip:
                return request
            if action is SignalAction.REOPEN_LOGS:
                log.info("%s: reopened %d log file(s)", describe(request), logs.reopen())
            elif action is SignalAction.NEEDS_MASTER:
                log.warning(
                    "%s ignored: reload, upgrade and worker counts need a master (--workers N)",
                    describe(request),
                )
            elif draining or action is skip:
                log.info("%s ignored: already stopping", describe(request))

    def _drain(self) -> ExitStatus:
        started = time.monotonic()
        deadline = None if self.graceful_timeout is None else started + self.graceful_timeout
        drain_hooks = gevent.spawn(self.hooks.run, HookPhase.DRAIN, deadline)
        for server in self.servers:
            # Each server waits for them before it closes hijacked sockets.
            server.register_on_shutdown(drain_hooks.join, phase=HookPhase.DRAIN)
        shutdowns = [gevent.spawn(server.shutdown, self.graceful_timeout) for server in self.servers]
        all_done = gevent.spawn(gevent.joinall, shutdowns)
        watcher = gevent.spawn(self._next_request, draining=True, timeout=None)
        forced_by_signal = False
        try:
            gevent.wait([all_done, watcher], count=1)
            if not all_done.ready():
                log.info("%s again: closing every connection now", describe(watcher.value))
                forced_by_signal = True
                for server in self.servers:
                    server.close()
                all_done.join()
        finally:
            watcher.kill(block=False)
        self.results = [glet.get() for glet in shutdowns]
        self.hook_outcomes = join_drain_hooks(drain_hooks, deadline)
        self.hook_outcomes += self.hooks.run(HookPhase.STOPPED, deadline)
        # Those a second signal closed included: close() records them in the result.
        self.forced_connections += sum(len(result.forced) for result in self.results)
        self.drain_duration = time.monotonic() - started
        jobs_killed = sum(len(result.jobs_killed) for result in self.results)
        clean = not forced_by_signal and all(result.clean for result in self.results)
        log.info(
            "exit: %s after %.3f s; %d requests served, %d connections forced, %d jobs killed",
            "clean" if clean else "forced",
            self.drain_duration,
            sum(server.requests_total for server in self.servers),
            self.forced_connections,
            jobs_killed,
        )
        return ExitStatus.OK if clean else ExitStatus.FORCED

    def _close_now(self) -> ExitStatus:
        live = sum(len(server.registry) for server in self.servers)
        # As a shutdown's result counts them: hijacked sockets are not "forced".
        served = (ConnState.NEW, ConnState.ACTIVE, ConnState.IDLE)
        self.forced_connections += sum(len(server.registry.in_state(*served)) for server in self.servers)
        for server in self.servers:
            server.close()
            server.jobs.stop(time.monotonic())
        # No drain, but still the cleanup: with the deadline already past,
        # each "stopped" hook gets STOPPED_HOOK_MINIMUM seconds at most.
        now = time.monotonic()
        for server in self.servers:
            self.hook_outcomes += server.hooks.run(HookPhase.STOPPED, now)
        self.hook_outcomes += self.hooks.run(HookPhase.STOPPED, now)
        log.info("exit: closed %d connections", live)
        return ExitStatus.FORCED if live else ExitStatus.OK


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


def run(
    app: WSGIApp,
    bind: Sequence[Listener] | Listener = ("127.0.0.1", 8000),
    *,
    graceful_timeout: Optional[float] = KUBERNETES_GRACE,
    drain_delay: float = 0.0,
    readiness_path: Optional[str] = "/-/ready",
    access_log: bool = False,
    pidfile: Optional[str] = None,
    shutdown_trigger: Optional[Callable[[], Any]] = None,
    metrics_path: Optional[str] = None,
    admin_bind: Optional[Listener] = None,
    **options: Any,
) -> ExitStatus:
    """Serve ``app`` as the CLI does (signals included) and return the exit status.

    Args:
        app: the WSGI application.
        bind: one listener or several (``(host, port)``, ``"unix:/path"``, a socket).
        graceful_timeout: seconds for the graceful shutdown (then forced).
        drain_delay: seconds of 503 readiness before the listener closes.
        readiness_path: path answered by the server itself (None: no probe).
        access_log: log each request to the ``gshutdown.access`` logger.
        pidfile: path to write the pid to.
        shutdown_trigger: blocks until shutdown should start (besides signals).
        metrics_path: path answered with Prometheus metrics (None: off; needs
            the ``metrics`` extra, else ``MetricsUnavailable``).
        admin_bind: a listener of their own for the readiness and metrics
            paths (``(host, port)``, ``"unix:/path"``); ``bind`` then leaves
            them to the app.
        options: ``Config`` fields (``idle_timeout``, ``max_connections``, ...).
    """
    binds: list[Listener] = list(bind) if isinstance(bind, list) else [bind]  # type: ignore[list-item]
    metrics = process_metrics(metrics_path, readiness_path)
    admin_server = None
    if admin_bind is None:
        wrapped, readiness = build_app(app, readiness_path=readiness_path, access_log=access_log, metrics=metrics)
    else:
        wrapped, _ = build_app(app, readiness_path=None, access_log=access_log)
        admin_wsgi, readiness = admin.admin_app(readiness_path, metrics)
        admin_server = admin.admin_server(admin_bind, admin_wsgi)
    servers = [Server(listener, wrapped, **options) for listener in binds]
    return runner_for(
        servers,
        graceful_timeout=graceful_timeout,
        drain_delay=drain_delay,
        readiness=readiness,
        shutdown_trigger=shutdown_trigger,
        pidfile=pidfile,
        metrics=metrics,
        admin=admin_server,
    ).run()


def runner_for(servers: list[Server], **kwargs: Any) -> Runner:
    """A runner for ``servers`` that takes over the application's declared hooks and jobs."""
    from gshutdown.server import jobs

    servers[0].jobs.adopt(jobs.app_jobs)
    hooks = HookList()
    hooks.hooks.extend(app_hooks.hooks)
    app_hooks.hooks.clear()
    return Runner(servers, hooks=hooks, **kwargs)


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


def prepare_process(settings: Settings) -> Optional[ExitStatus]:
    """``--umask``, ``--chdir`` and ``--env``: before anything is bound or imported.

    Returns a usage error status (after reporting it), or None.
    """
    if settings.umask is not None:
        os.umask(settings.umask)
    if settings.chdir:
        try:
            os.chdir(settings.chdir)
        except OSError as exc:
            return fail(f"--chdir {settings.chdir}: {exc.strerror}", ExitStatus.USAGE)
    for item in settings.raw_env:
        name, _, value = item.partition("=")
        os.environ[name] = value
    return None


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
        logs.configure(
            settings.log_level,
            access_log_path=settings.access_log,
            error_log_path=settings.error_log,
            dict_config=settings.log_config,
        )
    except ValueError as exc:
        return fail(str(exc), ExitStatus.USAGE)
    for warning in settings.warnings:
        log.warning("%s", warning)
    warn_if_over_kubernetes_grace(settings)
    return None


def server_options(settings: Settings) -> dict[str, Any]:
    """The ``Config`` fields the settings give."""
    return dict(
        idle_timeout=settings.idle_timeout,
        read_header_timeout=settings.read_header_timeout,
        read_body_timeout=settings.read_body_timeout,
        write_timeout=settings.write_timeout,
        idle_grace=settings.idle_grace,
        max_connections=settings.max_connections,
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
        server_header=settings.server_header,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        proxy_headers=not settings.no_proxy_headers,
        proxy_protocol=settings.proxy_protocol,
        certfile=settings.certfile,
        keyfile=settings.keyfile,
        ca_certs=settings.ca_certs,
        cert_reqs=settings.cert_reqs,
        ciphers=settings.ciphers,
    )


def serve(
    settings: Settings,
    listeners: Optional[Sequence[Any]] = None,
    *,
    link: Optional[WorkerLink] = None,
    admin_listener: Optional[Any] = None,
    master_stop: Optional[StopFlag] = None,
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
    """
    if link is None:
        # A worker's master did all this already, and a worker inherits its
        # master's log handlers: adding them again would write every line twice.
        failed = prepare_process(settings)
        if failed is None:
            monkey_patch(settings)
            failed = configure_logging(settings)
        if failed is not None:
            return failed
    else:
        monkey_patch(settings)
    watch_blocking(settings.max_blocking_time)
    readiness_path = settings.readiness_path or None
    unusable = admin.usage_error(settings)
    if unusable is not None:
        return fail(unusable, ExitStatus.USAGE)
    if listeners is None:
        listeners = systemd.listen_fds() or settings.bind
    if link is None:
        admin_listener = settings.admin_bind
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
    loaded = _switch_user_and_load(settings, link)
    if isinstance(loaded, ExitStatus):
        for server in (*servers, *([admin_server] if admin_server is not None else [])):
            server.close()
        return loaded
    app, metrics = loaded
    # Only now: a usage or bind error must stay the one line on stderr.
    log.info(
        "gevent monkey-patching %s",
        "disabled (--no-monkey-patch)" if settings.no_monkey_patch else "applied before importing the app",
    )
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
    return runner_for(
        servers,
        graceful_timeout=settings.graceful_timeout,
        drain_delay=settings.drain_delay,
        readiness=readiness,
        pidfile=settings.pid,
        link=link,
        max_requests=max_requests,
        metrics=metrics,
        admin=admin_server,
    ).run()


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
