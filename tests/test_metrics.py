"""``gshutdown.process.metrics``: what is counted, the phase through a shutdown, and bad setups.

The in-process tests run a ``Runner`` on this thread's hub, as
``tests/test_runner.py`` does, and read the metrics both over HTTP and with
``ProcessMetrics.render()`` (the listener is closed during a drain, so only the
latter can look then). Bad setups run the CLI in a child and want one line on
stderr and exit status 2.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Callable, Iterator

import gevent
import pytest
from gevent import socket as gsocket
from gevent.event import Event

import gshutdown
from gshutdown import Server
from gshutdown.process.exit_status import ExitStatus
from gshutdown.process.metrics import PHASES, MetricsUnavailable, ProcessMetrics, RequestStats
from gshutdown.process.runner import Runner
from gshutdown.process.setup import build_app
from gshutdown.server import hooks, jobs
from tests.metrics_helpers import METRICS_PATH, Scrape
from tests.process_helpers import ROOT, child_env, recv_eof, request_bytes

RUN_BOUND = 20.0


@pytest.fixture(autouse=True)
def _no_leftover_app_declarations() -> Iterator[None]:
    yield
    jobs.app_jobs.clear()
    hooks.app_hooks.hooks.clear()


def slow_app(started: Event) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["PATH_INFO"].startswith("/slow/"):
            started.set()
            gevent.sleep(float(environ["PATH_INFO"][6:]))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    return app


def fetch(port: int, path: str) -> bytes:
    """A whole response, raw, from a cooperative client in the runner's hub."""
    with gsocket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request_bytes(path, close=True))
        return recv_eof(sock, timeout=5)


def current_phase(metrics: ProcessMetrics) -> str:
    phases = Scrape(metrics.render()[0].decode()).by_label("gshutdown_shutdown_phase", "phase")
    assert sorted(phases.values()) == [0] * (len(PHASES) - 1) + [1], phases
    return next(name for name, value in phases.items() if value == 1)


def test_run_serves_metrics_on_its_path() -> None:
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    seen: dict[str, bytes] = {}

    def trigger() -> None:
        seen["app"] = fetch(port, "/")
        seen["metrics"] = fetch(port, METRICS_PATH)

    try:
        with gevent.Timeout(RUN_BOUND):
            status = gshutdown.run(slow_app(Event()), listener, metrics_path=METRICS_PATH, shutdown_trigger=trigger)
    finally:
        listener.close()
    assert status == ExitStatus.OK
    head, _, body = seen["metrics"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    scrape = Scrape(body.decode())
    assert scrape.value("gshutdown_requests_total") == 2
    assert scrape.value("gshutdown_responses_total", status_class="2xx") == 1
    assert scrape.value("gshutdown_request_duration_seconds_count") == 1


def test_the_phase_follows_the_shutdown_and_the_forced_connection_is_counted() -> None:
    started = Event()
    metrics = ProcessMetrics(METRICS_PATH)
    app, readiness = build_app(slow_app(started), readiness_path="/-/ready", access_log=False, metrics=metrics)
    server = Server(("127.0.0.1", 0), app)
    phases: list[str] = []
    client: list[gevent.Greenlet] = []

    def trigger() -> None:
        phases.append(current_phase(metrics))
        client.append(gevent.spawn(fetch, server.address[1], "/slow/30"))
        started.wait(5)
        watcher.start()

    def watch() -> None:
        while True:
            phase = current_phase(metrics)
            if phase != phases[-1]:
                phases.append(phase)
            gevent.sleep(0.01)

    watcher = gevent.Greenlet(watch)
    runner = Runner(
        [server],
        graceful_timeout=0.5,
        drain_delay=0.2,
        readiness=readiness,
        install_signals=False,
        shutdown_trigger=trigger,
        metrics=metrics,
    )
    try:
        with gevent.Timeout(RUN_BOUND):
            status = runner.run()
    finally:
        watcher.kill()
    assert status == ExitStatus.FORCED
    assert client[0].get(timeout=5) == b""
    # Forcing and stopping last a few milliseconds here: seen or not, never out of order.
    assert phases[:3] == ["serving", "drain_delay", "draining"], phases
    assert phases == sorted(phases, key=PHASES.index), phases
    assert current_phase(metrics) == "stopped"
    after = Scrape(metrics.render()[0].decode())
    assert after.value("gshutdown_forced_connections_total") == 1
    assert 0.5 <= after.value("gshutdown_last_drain_duration_seconds") < 5
    assert after.value("gshutdown_connections", state="active") == 0


def test_durations_fall_in_the_first_bucket_they_fit() -> None:
    stats = RequestStats(bounds=(0.001, 0.01))

    class Answered:
        response_status = "204 No Content"

    class Unanswered:
        response_status = ""

    now = time.perf_counter()
    stats.observe(Answered(), now)  # type: ignore[arg-type]
    stats.observe(Answered(), now - 0.005)  # type: ignore[arg-type]
    stats.observe(Answered(), now - 60)  # type: ignore[arg-type]
    stats.observe(Answered(), None)  # type: ignore[arg-type]  # the server's own refusal: not timed
    stats.observe(Unanswered(), now)  # type: ignore[arg-type]  # no response at all: not counted
    assert stats.buckets == [1, 1, 1]
    assert stats.by_class["2"] == 4
    assert 60 < stats.duration_sum < 61


def test_importing_gshutdown_does_not_import_prometheus_client() -> None:
    code = "import sys, gshutdown, gshutdown.cli, gshutdown.process.master; print('prometheus_client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr


def run_metrics_cli(
    *args: str, code_before: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    code = f"import sys\n{code_before}\nfrom gshutdown.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "tests.apps.statuses:app", "-b", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env({"GSHUTDOWN_METRICS_PATH": METRICS_PATH, **(env or {})}),
        timeout=30,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


WITHOUT_PROMETHEUS_CLIENT = "sys.modules['prometheus_client'] = None  # as if not installed"


@pytest.mark.parametrize(
    ("args", "code_before", "env", "message"),
    [
        ((), WITHOUT_PROMETHEUS_CLIENT, {}, "pip install 'gshutdown[metrics]'"),
        (("-w", "2"), WITHOUT_PROMETHEUS_CLIENT, {}, "pip install 'gshutdown[metrics]'"),
        ((), "", {"GSHUTDOWN_METRICS_PATH": "metrics"}, "must start with '/'"),
        (("-w", "2"), "", {"GSHUTDOWN_METRICS_PATH": "/-/ready"}, "are both '/-/ready'"),
        (("-w", "2"), "", {"PROMETHEUS_MULTIPROC_DIR": "/nonexistent/dir"}, "is not a directory"),
    ],
    ids=["missing", "missing-workers", "relative-path", "readiness-path", "bad-multiproc-dir"],
)
def test_a_bad_metrics_setup_is_one_line_and_exit_2(
    args: tuple[str, ...], code_before: str, env: dict[str, str], message: str
) -> None:
    done = run_metrics_cli(*args, code_before=code_before, env=env)
    assert done.returncode == ExitStatus.USAGE, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_process_metrics_without_prometheus_client_raises_metrics_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(MetricsUnavailable, match=r"pip install 'gshutdown\[metrics\]'"):
        ProcessMetrics(METRICS_PATH)
