"""The process lifecycle: start, wait for a signal, drain, exit.

(Just over 500 lines: the signal table and the ``Runner`` that acts on it; what
runs before serving is ``setup``, the command's whole life ``serve``.)

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
import signal
import time
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import gevent
from gevent.queue import Empty, Queue

from gshutdown.config.addresses import describe_address
from gshutdown.process import admin, logs, pidfile, systemd
from gshutdown.process.exit_status import ExitStatus
from gshutdown.process.metrics import ProcessMetrics
from gshutdown.process.setup import KUBERNETES_GRACE, build_app, process_metrics
from gshutdown.process.worker_link import DRAIN_SIGNAL, MASTER_ORDER_WAIT, WorkerLink
from gshutdown.server.hooks import HookList, HookOutcome, HookPhase, app_hooks, join_drain_hooks
from gshutdown.server.http_server import Listener
from gshutdown.server.shutdown import ShutdownResult
from gshutdown.server.state import ConnState
from gshutdown.wsgi.adapter import WSGIApp
from gshutdown.wsgi.middleware import Readiness
from gshutdown.wsgi.server import Server

log = logging.getLogger("gshutdown")


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
    #: ``--reload`` saw the code change (the one process re-executes after its drain).
    CODE_CHANGED = "code changed (--reload)"


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
        on_signal: called with each signal of ``SIGNAL_ACTIONS`` as it
            arrives, before it is acted on (gunicorn's ``worker_int`` hook).
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
        on_signal: Optional[Callable[[int], Any]] = None,
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
        self.on_signal = on_signal
        self.hook_outcomes: list[HookOutcome] = []
        self.results: list[ShutdownResult] = []
        #: A stop was asked for: readiness answers 503 (if there is a probe).
        self.unready = False
        #: What stopped it: a signal number or a ``Trigger`` (None while serving).
        self.stopped_by: Optional[StopRequest] = None
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

    def stop_left_unread(self) -> Optional[StopRequest]:
        """A signal to stop that came once ``run()`` no longer read them (or None).

        A ``--reload`` restart asks before it re-executes: a SIGTERM crossing
        the end of its drain must end the process, not be lost in the exec.
        """
        while not self._requests.empty():
            request = self._requests.get_nowait()
            if not isinstance(request, Trigger) and action_for(self.role, request, draining=False) in _STOPS:
                return request
        return None

    # -- serving -------------------------------------------------------------------

    def run(self) -> ExitStatus:
        """Serve until told to stop; return the process exit status."""
        handlers = []
        if self.install_signals:
            for signum in SIGNAL_ACTIONS[self.role]:
                # Only record: the runner's greenlet decides what it means now.
                handlers.append(gevent.signal_handler(signum, self._signalled, signum))
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
                # The drain is over and the worker exits: a stop signal crossing
                # the exit (the master's drain order as a reload's old worker
                # finishes, a process-group SIGTERM as a retiring one finishes)
                # must not kill it by SIG_DFL, which the master counts as forced.
                for signum, action in SIGNAL_ACTIONS[Role.WORKER].items():
                    if action in _STOPS:
                        signal.signal(signum, signal.SIG_IGN)
            for helper in helpers:
                helper.kill(block=False)
            if self.metrics is not None:
                self.metrics.detach()
            if self.role is Role.SINGLE:
                pidfile.remove(self.pidfile)
            if self.admin is not None:
                # Last: readiness answers (503) for as long as the process serves anything.
                self.admin.close()

    def _signalled(self, signum: int) -> None:
        if self.on_signal is not None:
            self.on_signal(signum)
        self.deliver(signum)

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
        self.stopped_by = first
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
            again = self._next_forcing_request(timeout=self.drain_delay)
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

    def _next_forcing_request(self, timeout: Optional[float]) -> Optional[StopRequest]:
        """While draining: the request that forces the drain (None after ``timeout`` seconds).

        When a trigger began the drain (a ``--reload`` restart), the first stop
        signal is the first the process got, not a second one: it only takes
        the trigger's place, so the process exits after the drain instead of
        what the trigger meant; the next one forces.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            request = self._next_request(draining=True, timeout=left)
            if request is None or isinstance(request, Trigger) or not isinstance(self.stopped_by, Trigger):
                return request
            # A signal after the trigger: no restart follows, whether it forces (SIGQUIT) or not.
            trigger, self.stopped_by = self.stopped_by, request
            if action_for(self.role, request, draining=False) is not SignalAction.GRACEFUL:
                return request
            log.info("%s: exiting after this drain, not as %s meant", describe(request), describe(trigger))

    def _drain(self) -> ExitStatus:
        if self.link is not None:
            for server in self.servers:
                # The last worker to get to its last accepts seals the shared
                # listeners, so that nothing is queued at their last close.
                server.last_holder = self.link.last_to_drain
        started = time.monotonic()
        deadline = None if self.graceful_timeout is None else started + self.graceful_timeout
        drain_hooks = gevent.spawn(self.hooks.run, HookPhase.DRAIN, deadline)
        for server in self.servers:
            # Each server waits for them before it closes hijacked sockets.
            server.register_on_shutdown(drain_hooks.join, phase=HookPhase.DRAIN)
        shutdowns = [gevent.spawn(server.shutdown, self.graceful_timeout) for server in self.servers]
        all_done = gevent.spawn(gevent.joinall, shutdowns)
        watcher = gevent.spawn(self._next_forcing_request, timeout=None)
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
        cut = sum(server.requests_cut for server in self.servers)
        log.info(
            "exit: %s after %.3f s; %d requests served, %d connections forced, %d jobs killed%s",
            "clean" if clean else "forced",
            self.drain_duration,
            sum(server.requests_total - server.requests_cut for server in self.servers),
            self.forced_connections,
            jobs_killed,
            f", {cut} requests cut (body too slow: 408)" if cut else "",
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
