"""The process lifecycle: start, wait for a signal, drain, exit.

Signals (the handlers only record the signal; the runner's greenlet acts):

=========  ==============================================================
SIGTERM    graceful: readiness turns 503, wait ``drain_delay``, then
SIGINT     ``shutdown(graceful_timeout)`` on every server
second     a second SIGTERM/SIGINT during the drain: close everything now
SIGQUIT    close everything now; "stopped" hooks still run (briefly)
=========  ==============================================================

Exit status: 0 after a clean drain; ``EXIT_FORCED`` (3) when connections or
jobs were forced closed; 1 when the server could not start; 2 for bad usage.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any, Callable, Optional, Sequence, Union

import gevent
from gevent.queue import Empty, Queue

from gshutdown import pidfile, systemd
from gshutdown.addresses import describe_address
from gshutdown.hooks import HookList, HookOutcome, HookPhase, app_hooks, join_drain_hooks
from gshutdown.middleware import AccessLog, Readiness
from gshutdown.server import Listener, Server, ShutdownResult
from gshutdown.wsgi import WSGIApp

log = logging.getLogger("gshutdown")

EXIT_OK = 0
EXIT_START_FAILED = 1
EXIT_USAGE = 2
EXIT_FORCED = 3

#: The default Kubernetes ``terminationGracePeriodSeconds``.
KUBERNETES_GRACE = 30.0


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
        pidfile: written at start, removed at exit.
        hooks: on-shutdown hooks of the whole process (``gshutdown.on_shutdown``):
            "drain" ones run as the shutdown starts, "stopped" ones once every
            server has drained.
        on_ready: called once every server is listening, instead of telling
            systemd: a runner given one is not the service systemd watches
            (a worker), so it sends neither READY=1 nor STOPPING=1.
        immediate: the signals that close everything now instead of starting
            the graceful shutdown (gunicorn's workers add SIGINT).
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
        immediate: Sequence[int] = (signal.SIGQUIT,),
    ) -> None:
        self.servers = list(servers)
        self.graceful_timeout = graceful_timeout
        self.drain_delay = drain_delay
        self.readiness = readiness
        self.shutdown_trigger = shutdown_trigger
        self.pidfile = pidfile
        self.install_signals = install_signals
        self.hooks = hooks if hooks is not None else HookList()
        self.on_ready = on_ready
        self.immediate = tuple(immediate)
        self.hook_outcomes: list[HookOutcome] = []
        self._events: Queue[Any] = Queue()
        self.results: list[ShutdownResult] = []

    def deliver(self, event: Union[int, str]) -> None:
        """Act on ``event`` as on a received signal; safe from any greenlet.

        A signal in ``immediate`` (SIGQUIT) closes everything now. Any other
        signal number, or a reason (a string, for the log), starts the
        graceful shutdown; a second event during the drain closes everything
        now.
        """
        # Only record: the runner greenlet decides what the event means now.
        self._events.put_nowait(event)

    def _on_unsupported(self, signum: int) -> None:
        log.warning("%s ignored: reload and upgrade need a master (--workers N)", _signame(signum))

    def run(self) -> int:
        """Serve until told to stop; return the process exit status."""
        handlers = []
        if self.install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                handlers.append(gevent.signal_handler(signum, self.deliver, signum))
            for signum in (signal.SIGHUP, signal.SIGUSR2):
                # Their default action would end the process mid-request.
                handlers.append(gevent.signal_handler(signum, self._on_unsupported, signum))
        trigger = None
        if self.shutdown_trigger is not None:
            trigger = gevent.spawn(self._wait_trigger)
        try:
            for server in self.servers:
                if not server.started:
                    server.start()
            pidfile.write(self.pidfile)
            for server in self.servers:
                log.info("listening on %s", describe_address(server.address))
            if self.on_ready is not None:
                self.on_ready()
            else:
                systemd.notify("READY=1")
            return self._serve_until_stopped()
        finally:
            for handler in handlers:
                handler.cancel()
            if trigger is not None:
                trigger.kill(block=False)
            pidfile.remove(self.pidfile)

    def _wait_trigger(self) -> None:
        assert self.shutdown_trigger is not None
        self.shutdown_trigger()
        self._events.put(signal.SIGTERM)

    def _serve_until_stopped(self) -> int:
        first = self._events.get()
        if self.on_ready is None:
            systemd.notify("STOPPING=1")
        if first in self.immediate:
            log.info("%s: closing every connection now", _signame(first))
            return self._close_now()
        log.info("%s: graceful shutdown", _signame(first))
        if self.readiness is not None:
            self.readiness.set_draining()
        if self.drain_delay > 0:
            log.info("drain delay: readiness is 503; serving %g s more before closing", self.drain_delay)
            try:
                again = self._events.get(timeout=self.drain_delay)
            except Empty:
                pass
            else:
                log.info("%s during the drain delay: closing every connection now", _signame(again))
                return self._close_now()
        started = time.monotonic()
        deadline = None if self.graceful_timeout is None else started + self.graceful_timeout
        drain_hooks = gevent.spawn(self.hooks.run, HookPhase.DRAIN, deadline)
        for server in self.servers:
            # Each server waits for them before it closes hijacked sockets.
            server.register_on_shutdown(drain_hooks.join, phase=HookPhase.DRAIN)
        shutdowns = [gevent.spawn(server.shutdown, self.graceful_timeout) for server in self.servers]
        all_done = gevent.spawn(gevent.joinall, shutdowns)
        watcher = gevent.spawn(self._events.get)
        forced_by_signal = False
        try:
            gevent.wait([all_done, watcher], count=1)
            if not all_done.ready():
                log.info("%s again: closing every connection now", _signame(watcher.value))
                forced_by_signal = True
                for server in self.servers:
                    server.close()
                all_done.join()
        finally:
            watcher.kill(block=False)
        self.results = [glet.get() for glet in shutdowns]
        self.hook_outcomes = join_drain_hooks(drain_hooks, deadline)
        self.hook_outcomes += self.hooks.run(HookPhase.STOPPED, deadline)
        forced = sum(len(result.forced) for result in self.results)
        jobs_killed = sum(len(result.jobs_killed) for result in self.results)
        clean = not forced_by_signal and all(result.clean for result in self.results)
        log.info(
            "exit: %s after %.3f s; %d requests served, %d connections forced, %d jobs killed",
            "clean" if clean else "forced",
            time.monotonic() - started,
            sum(server.requests_total for server in self.servers),
            forced,
            jobs_killed,
        )
        return EXIT_OK if clean else EXIT_FORCED

    def _close_now(self) -> int:
        live = sum(len(server.registry) for server in self.servers)
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
        return EXIT_FORCED if live else EXIT_OK


def _signame(signum: Any) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def build_app(app: WSGIApp, *, readiness_path: Optional[str], access_log: bool) -> tuple[WSGIApp, Optional[Readiness]]:
    """Wrap ``app`` with the access log and the readiness probe, as configured."""
    if access_log:
        app = AccessLog(app)
    readiness = None
    if readiness_path:
        readiness = Readiness(app, readiness_path)
        app = readiness
    return app, readiness


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
    **options: Any,
) -> int:
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
        options: ``Config`` fields (``idle_timeout``, ``max_connections``, ...).
    """
    from gshutdown import jobs

    binds: list[Listener] = list(bind) if isinstance(bind, list) else [bind]  # type: ignore[list-item]
    wrapped, readiness = build_app(app, readiness_path=readiness_path, access_log=access_log)
    servers = [Server(listener, wrapped, **options) for listener in binds]
    servers[0].jobs.adopt(jobs.app_jobs)
    runner = Runner(
        servers,
        graceful_timeout=graceful_timeout,
        drain_delay=drain_delay,
        readiness=readiness,
        shutdown_trigger=shutdown_trigger,
        pidfile=pidfile,
        hooks=adopt_app_hooks(),
    )
    return runner.run()


def adopt_app_hooks() -> HookList:
    """Take the hooks declared with ``gshutdown.on_shutdown`` so far."""
    hooks = HookList()
    hooks.hooks.extend(app_hooks.hooks)
    app_hooks.hooks.clear()
    return hooks
