"""Prometheus metrics on a path the server answers itself (``--metrics-path``).

(Just over 500 lines: the metrics of one process and of the master, which
share their definitions and the multiprocess files.)

Needs the ``metrics`` extra (``prometheus-client``); nothing imports it until
metrics are enabled, so ``import gshutdown`` never does.

Theory of operation. A request costs one call, ``RequestStats.observe``, that
adds to plain Python numbers: a response count per status class and a
duration histogram (from the application's call to the end of its response).
Connections by state, requests read and the shutdown phase already live in
the server (its registry, ``requests_total``, ``phase``) and are read, not
counted again; so are the WebSocket counts (open, messages in and out, close
codes): plain integers on the WSGI handler's ``WebSockets``, one addition a
message. ``ProcessMetrics.publish()`` copies all of it into prometheus-client's
metric objects: at every scrape, and in a worker also
every ``FLUSH_INTERVAL`` seconds and once more when it has drained. Writing to
those objects on every request instead would cost about 3 us a request in one
process and 8 us in prometheus-client's multiprocess mode, which writes each
change to a memory-mapped file (two counters and the histogram alone).

Master mode uses that multiprocess mode. The master (``MasterMetrics``) makes
a private directory for the files (or uses ``PROMETHEUS_MULTIPROC_DIR`` if the
user set it), sets the variable before prometheus-client is imported, so the
workers it forks inherit it, counts worker restarts, tells prometheus-client
when a worker is gone (its ``live*`` gauges leave the sums), and removes the
directory at exit. Any worker's metrics path answers with the sum over every
worker, dead ones included for counters and histograms, plus
``gshutdown_worker_*`` gauges with a ``pid`` label: each live worker's own view.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Protocol

import gevent

from gshutdown.server.shutdown import ShutdownPhase
from gshutdown.server.state import ConnState
from gshutdown.wsgi.adapter import WSGIApp
from gshutdown.wsgi.middleware import asks_for

if TYPE_CHECKING:  # pragma: no cover
    from gshutdown.server.connection import Connection
    from gshutdown.server.http_server import HTTPServer

log = logging.getLogger("gshutdown")

#: prometheus-client's own variable: where multiprocess mode keeps its files.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds between a worker's copies of its numbers into the shared files:
#: what the aggregate may lag behind for the workers not being scraped.
FLUSH_INTERVAL = 1.0
#: Upper bounds of the request duration buckets, in seconds (+Inf is added).
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Status classes exported even while zero.
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
#: Values of the ``phase`` label, in the order a process goes through them.
#: ``drain_delay``: a stop was asked for and readiness answers 503, but
#: requests are still served (``--drain-delay``, or a worker waiting for its
#: master's order); the others are ``ShutdownPhase`` values.
PHASES = ("serving", "drain_delay", *(phase.value for phase in ShutdownPhase if phase is not ShutdownPhase.SERVING))
#: Values of the ``code`` label of ``gshutdown_websocket_closes_total`` exported even while zero:
#: normal closure, going away (the server's drain), abnormal (no Close frame came).
WEBSOCKET_CLOSE_CODES = (1000, 1001, 1006)
#: Values of the ``reason`` label of ``gshutdown_worker_restarts_total``.
RESTART_REASONS = ("died", "max-requests", "timeout", "reload")
_LIVE_STATES = (ConnState.NEW, ConnState.ACTIVE, ConnState.IDLE, ConnState.HIJACKED)
_PHASE_ORDER = {phase: index for index, phase in enumerate(ShutdownPhase)}


class MetricsUnavailable(RuntimeError):
    """Metrics cannot be enabled as asked; the message is one line for the user."""


def check_path(path: str, readiness_path: Optional[str] = None) -> str:
    """``path`` if it can be the metrics path, else ``MetricsUnavailable`` saying why."""
    if not path.startswith("/"):
        raise MetricsUnavailable(f"--metrics-path must start with '/': {path!r}")
    if path == readiness_path:
        raise MetricsUnavailable(f"--metrics-path and --readiness-path are both {path!r}")
    return path


def _prometheus_client(multiprocess: bool) -> Any:
    try:
        import prometheus_client
        from prometheus_client import values
    except ImportError:
        raise MetricsUnavailable("--metrics-path needs prometheus-client: pip install 'gshutdown[metrics]'") from None
    if multiprocess and not getattr(values.ValueClass, "_multiprocess", False):
        # It reads the variable once, at import: values made before are in memory only.
        raise MetricsUnavailable(f"prometheus_client was imported before {MULTIPROC_DIR_ENV} was set")
    return prometheus_client


def _check_multiproc_dir(directory: str) -> None:
    if not os.path.isdir(directory):
        raise MetricsUnavailable(f"{MULTIPROC_DIR_ENV}={directory!r} is not a directory")


class RequestStats:
    """Responses by status class and the duration histogram, as plain numbers.

    ``observe`` is a server's ``request_observer``: the only metrics work done
    per request.
    """

    __slots__ = ("bounds", "buckets", "by_class", "duration_sum")

    def __init__(self, bounds: Iterable[float] = DURATION_BUCKETS) -> None:
        #: Bucket upper bounds in seconds, +Inf last.
        self.bounds = (*bounds, float("inf"))
        #: Observations per bucket (not cumulative).
        self.buckets = [0] * len(self.bounds)
        #: Responses by the first digit of their status.
        self.by_class = dict.fromkeys("123456789", 0)
        #: Seconds, over every observation.
        self.duration_sum = 0.0

    def observe(self, conn: Connection, started: Optional[float]) -> None:
        status = conn.response_status
        if not status:
            return  # no response: the client left first, or the application hijacked the socket
        self.by_class[status[0]] += 1
        if started is not None:
            seconds = time.perf_counter() - started
            self.buckets[bisect_left(self.bounds, seconds)] += 1
            self.duration_sum += seconds


class ObservedProcess(Protocol):
    """What the metrics read of a serving process; ``runner.Runner`` is one.

    An interface rather than an import: the runner imports this module.
    """

    servers: list[HTTPServer]
    #: True once readiness answers 503 (the drain delay has begun).
    unready: bool
    #: Seconds the drain took, once it is over; None before.
    drain_duration: Optional[float]
    #: Connections the shutdown forced.
    forced_connections: int


def process_phase(runner: ObservedProcess) -> str:
    """Where ``runner``'s process is in its life: one of ``PHASES``."""
    begun = [server.phase for server in runner.servers if server.phase is not ShutdownPhase.SERVING]
    if begun:
        # The servers shut down together: the process is where the slowest one is.
        return min(begun, key=_PHASE_ORDER.__getitem__).value
    return "drain_delay" if runner.unready else "serving"


class _Registries:
    """Several collectors exposed as one (``generate_latest`` takes one)."""

    def __init__(self, *registries: Any) -> None:
        self.registries = registries

    def collect(self) -> Iterator[Any]:
        for registry in self.registries:
            yield from registry.collect()


class ProcessMetrics:
    """The metrics of one serving process, and the WSGI wrapper that answers them.

    Args:
        path: the path answered with the metrics, e.g. ``"/-/metrics"``.
        multiprocess: this process is one of a master's workers: answer with
            the sum over all of them (``MasterMetrics`` set up the directory).
            Otherwise the path also shows prometheus-client's default
            registry: the process collectors, and the application's own metrics.

    Raises:
        MetricsUnavailable: prometheus-client is missing, or multiprocess mode
            is not set up.
    """

    def __init__(self, path: str, *, multiprocess: bool = False) -> None:
        prometheus_client = _prometheus_client(multiprocess)
        from prometheus_client import exposition

        self.path = check_path(path)
        self.multiprocess = multiprocess
        self.stats = RequestStats()
        self._choose_encoder = exposition.choose_encoder
        self._runner: Optional[ObservedProcess] = None
        self._flusher: Optional[gevent.Greenlet] = None
        own = prometheus_client.CollectorRegistry(auto_describe=True)
        directory = os.environ.get(MULTIPROC_DIR_ENV, "")
        if directory or multiprocess:
            _check_multiproc_dir(directory)  # prometheus-client writes there even in one process
        if multiprocess:
            from prometheus_client import multiprocess as mp

            exposed = prometheus_client.CollectorRegistry()
            mp.MultiProcessCollector(exposed, path=directory)
            self._exposed: Any = exposed
        else:
            self._exposed = _Registries(own, prometheus_client.REGISTRY)
        self._define(prometheus_client, own)
        # What publish() has already added to the counters and the histogram.
        self._published_requests = 0
        self._published_messages = [0, 0]  # in, out
        self._published_closes: dict[int, int] = {}
        self._published_by_class = dict.fromkeys(self.stats.by_class, 0)
        self._published_buckets = [0] * len(self.stats.bounds)
        self._published_sum = 0.0

    def _define(self, pc: Any, registry: Any) -> None:
        gauge, counter = pc.Gauge, pc.Counter
        connections = gauge(
            "gshutdown_connections",
            "Open connections by state (summed over live workers)",
            ["state"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._connections = {state: connections.labels(state.value) for state in _LIVE_STATES}
        self._requests = counter("gshutdown_requests", "Requests read (request heads parsed)", registry=registry)
        responses = counter(
            "gshutdown_responses",
            "Responses sent, by status class (the server's own 400/408/414/431/500 included)",
            ["status_class"],
            registry=registry,
        )
        self._responses = {name[0]: responses.labels(name) for name in STATUS_CLASSES}
        self._responses_child = responses.labels
        self._duration = pc.Histogram(
            "gshutdown_request_duration_seconds",
            "Seconds from the application's call to the end of its response",
            buckets=self.stats.bounds,
            registry=registry,
        )
        if not hasattr(self._duration, "_buckets") or len(self._duration._buckets) != len(self.stats.bounds):
            raise MetricsUnavailable("this prometheus-client's Histogram is not the one gshutdown knows")
        phase = gauge(
            "gshutdown_shutdown_phase",
            f"1 for the phase the process is in ({', '.join(PHASES)}); summed: workers per phase",
            ["phase"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._phases = {name: phase.labels(name) for name in PHASES}
        self._phase = ""
        self._drain_duration = gauge(
            "gshutdown_last_drain_duration_seconds",
            "Seconds the last graceful shutdown took, from its start to its end (hooks included)",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self._forced = counter(
            "gshutdown_forced_connections",
            "Connections closed by force: open at the shutdown deadline, or closed by a second signal or SIGQUIT",
            registry=registry,
        )
        self._websockets = gauge(
            "gshutdown_websockets",
            "Open WebSockets (upgrade requests admitted, not yet ended; summed over live workers)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        messages = counter(
            "gshutdown_websocket_messages",
            "WebSocket messages from clients (direction=in) and to them (out); control frames not counted",
            ["direction"],
            registry=registry,
        )
        self._websocket_messages_in = messages.labels("in")
        self._websocket_messages_out = messages.labels("out")
        closes = counter(
            "gshutdown_websocket_closes",
            "WebSockets ended, by close code: the client's; the server's for a WebSocket it failed "
            "(1002, 1007, 1009); 1006 when no Close frame came",
            ["code"],
            registry=registry,
        )
        self._websocket_closes = {code: closes.labels(str(code)) for code in WEBSOCKET_CLOSE_CODES}
        self._websocket_closes_child = closes.labels
        if self.multiprocess:
            self._worker_websockets = gauge(
                "gshutdown_worker_websockets",
                "Open WebSockets of each live worker",
                registry=registry,
                multiprocess_mode="liveall",
            )
            worker_connections = gauge(
                "gshutdown_worker_connections",
                "Open connections of each live worker, by state",
                ["state"],
                registry=registry,
                multiprocess_mode="liveall",
            )
            self._worker_connections = {state: worker_connections.labels(state.value) for state in _LIVE_STATES}
            self._worker_requests = gauge(
                "gshutdown_worker_requests",
                "Requests read by each live worker",
                registry=registry,
                multiprocess_mode="liveall",
            )

    # -- serving ----------------------------------------------------------------

    def endpoint(self, app: WSGIApp) -> WSGIApp:
        """``app``, with a GET or HEAD of this metrics path answered before it (it never sees those)."""
        path = self.path

        def answer_metrics(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            # As the readiness path: a GET or HEAD of the path as sent, not percent-decoded.
            if not asks_for(environ, path):
                return app(environ, start_response)
            body, content_type = self.render(environ.get("HTTP_ACCEPT", ""))
            start_response(
                "200 OK",
                [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")],
            )
            return [body]

        return answer_metrics

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (its format chosen by the ``Accept`` header value) and its content type."""
        self.publish()
        encoder, content_type = self._choose_encoder(accept)
        return encoder(self._exposed), content_type

    # -- the runner's life --------------------------------------------------------

    def attach(self, runner: ObservedProcess) -> None:
        """Start observing ``runner``'s servers (before they accept)."""
        self._runner = runner
        for server in runner.servers:
            server.request_observer = self.stats.observe
        self.publish()
        if self.multiprocess:
            self._flusher = gevent.spawn(self._flush_forever)

    def detach(self) -> None:
        """Record the shutdown ``attach``'s runner did, and publish a last time."""
        runner = self._runner
        if self._flusher is not None:
            self._flusher.kill(block=False)
            self._flusher = None
        if runner is None:
            return
        if runner.drain_duration is not None:
            self._drain_duration.set(runner.drain_duration)
        if runner.forced_connections:
            self._forced.inc(runner.forced_connections)
        self.publish()

    def _flush_forever(self) -> None:
        while True:
            gevent.sleep(FLUSH_INTERVAL)
            try:
                self.publish()
            except Exception:
                log.exception("metrics: publishing failed")

    def publish(self) -> None:
        """Copy the numbers into the metric objects (into the shared files, in a worker)."""
        runner = self._runner
        if runner is None:
            return
        servers = runner.servers
        counts = [server.registry.counts() for server in servers]
        for state, child in self._connections.items():
            count = sum(by_state[state.value] for by_state in counts)
            child.set(count)
            if self.multiprocess:
                self._worker_connections[state].set(count)
        requests = sum(server.requests_total for server in servers)
        if requests != self._published_requests:
            self._requests.inc(requests - self._published_requests)
            self._published_requests = requests
            if self.multiprocess:
                self._worker_requests.set(requests)
        self._publish_responses()
        self._publish_websockets(servers)
        phase = process_phase(runner)
        if phase != self._phase:
            for name, child in self._phases.items():
                child.set(1 if name == phase else 0)
            self._phase = phase

    def _publish_websockets(self, servers: list[HTTPServer]) -> None:
        # The WSGI handler counts them (gshutdown.wsgi.websocket.WebSockets): plain integers.
        counted = [ws for ws in (getattr(server.handler, "websockets", None) for server in servers) if ws is not None]
        open_now = sum(ws.open for ws in counted)
        self._websockets.set(open_now)
        if self.multiprocess:
            self._worker_websockets.set(open_now)
        received = sum(ws.messages_received for ws in counted)
        sent = sum(ws.messages_sent for ws in counted)
        published = self._published_messages
        if received != published[0]:
            self._websocket_messages_in.inc(received - published[0])
            published[0] = received
        if sent != published[1]:
            self._websocket_messages_out.inc(sent - published[1])
            published[1] = sent
        closes: dict[int, int] = {}
        for ws in counted:
            for code, count in ws.close_codes.items():
                closes[code] = closes.get(code, 0) + count
        for code, count in closes.items():
            before = self._published_closes.get(code, 0)
            if count != before:
                child = self._websocket_closes.get(code) or self._websocket_closes_child(str(code))
                child.inc(count - before)
                self._published_closes[code] = count

    def _publish_responses(self) -> None:
        stats = self.stats
        published = self._published_by_class
        for digit, count in stats.by_class.items():
            if count != published[digit]:
                child = self._responses.get(digit) or self._responses_child(f"{digit}xx")
                child.inc(count - published[digit])
                published[digit] = count
        # prometheus-client has no public call to add many observations at once;
        # its Histogram keeps one value per bucket (not cumulative) and one sum.
        histogram = self._duration
        for index, count in enumerate(stats.buckets):
            if count != self._published_buckets[index]:
                histogram._buckets[index].inc(count - self._published_buckets[index])
                self._published_buckets[index] = count
        if stats.duration_sum != self._published_sum:
            histogram._sum.inc(stats.duration_sum - self._published_sum)
            self._published_sum = stats.duration_sum


class MasterMetrics:
    """The master's part: the multiprocess directory, dead workers, restarts.

    Made by ``MasterMetrics.started()``; with metrics off, every method does nothing.
    """

    def __init__(self, directory: Optional[str] = None, *, private: bool = False) -> None:
        #: Where the workers' files are (None: metrics are off).
        self.directory = directory
        #: The directory is this master's own: removed at exit, not given to a new master.
        self.private = private
        self._restarts: dict[str, Any] = {}
        if directory is None:
            return
        prometheus_client = _prometheus_client(multiprocess=True)
        restarts = prometheus_client.Counter(
            "gshutdown_worker_restarts",
            f"Workers replaced, by reason ({', '.join(RESTART_REASONS)})",
            ["reason"],
            registry=None,
        )
        self._restarts = {reason: restarts.labels(reason) for reason in RESTART_REASONS}

    @classmethod
    @contextlib.contextmanager
    def started(cls, metrics_path: Optional[str], readiness_path: Optional[str] = None) -> Iterator[MasterMetrics]:
        """Set up multiprocess mode (before anything imports prometheus-client) for the ``with`` block.

        Raises:
            MetricsUnavailable: prometheus-client is missing, or the path or
                ``PROMETHEUS_MULTIPROC_DIR`` is not usable.
        """
        if not metrics_path:
            yield cls()
            return
        check_path(metrics_path, readiness_path)
        given = os.environ.get(MULTIPROC_DIR_ENV)
        if given:
            _check_multiproc_dir(given)
            directory = given
        else:
            directory = os.environ[MULTIPROC_DIR_ENV] = tempfile.mkdtemp(prefix="gshutdown-metrics-")
        try:
            metrics = cls(directory, private=not given)
            log.info("metrics: multiprocess files in %s%s", directory, " (removed at exit)" if not given else "")
            yield metrics
        finally:
            if not given:
                shutil.rmtree(directory, ignore_errors=True)
                os.environ.pop(MULTIPROC_DIR_ENV, None)

    def worker_exited(self, pid: int) -> None:
        """A worker was reaped: its ``live*`` gauges leave the sums."""
        if self.directory is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.directory)

    def worker_restarted(self, reason: str, count: int = 1) -> None:
        """``count`` workers are being replaced for ``reason`` (one of ``RESTART_REASONS``)."""
        if self._restarts and count:
            self._restarts[reason].inc(count)

    def for_new_master(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` for a re-executed master: it makes its own directory (this one goes with this master)."""
        if self.private:
            env.pop(MULTIPROC_DIR_ENV, None)
        return env
