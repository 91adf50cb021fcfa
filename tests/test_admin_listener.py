"""``--admin-bind``: readiness and metrics on a listener of their own; and how the app's port answers them.

Real ``gshutdown`` processes, probed with ``http.client`` and ``curl`` as the
kubelet and Prometheus would, signalled by pid.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Optional

import pytest

from tests.metrics_helpers import METRICS_PATH, Scrape
from tests.process_helpers import (
    PROBE,
    PROCESS_IO_TIMEOUT,
    GProcess,
    free_port,
    gone,
    refused,
    run_cli,
    start_gshutdown,
    start_master,
    wait_until,
)

READY = "/-/ready"
#: What the probe app answers for any path it does not know: the app, not the server, answered.
APP_BODY = b"Hello, World!"


def request(
    port: int, path: str, method: str = "GET", conn: Optional[http.client.HTTPConnection] = None
) -> tuple[int, bytes]:
    """Status and body of one request (on ``conn``, kept open, or on a new connection)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=PROCESS_IO_TIMEOUT)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        if own:
            conn.close()


def curl_status(port: int, path: str = READY) -> int:
    """The status ``curl`` gets, as a kubelet's HTTP probe would (0: no connection)."""
    binary = shutil.which("curl")
    assert binary, "curl is not installed: apt-get install -y curl"
    done = subprocess.run(
        [binary, "--silent", "--output", "/dev/null", "--write-out", "%{http_code}", f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=PROCESS_IO_TIMEOUT,
    )
    return int(done.stdout or 0)


def scrape(port: int) -> Scrape:
    status, body = request(port, METRICS_PATH)
    assert status == 200, body
    return Scrape(body.decode())


# -- the app's port, without --admin-bind ---------------------------------------------------------


def test_the_apps_port_answers_readiness_only_to_get_and_head_of_the_path_as_sent(tmp_path: Path) -> None:
    port = free_port()
    with start_gshutdown(tmp_path / "log", PROBE, "-b", f"127.0.0.1:{port}") as server:
        assert request(port, READY) == (200, b"ready\n")
        assert request(port, READY, "HEAD") == (200, b"")
        assert request(port, READY + "?probe=1") == (200, b"ready\n")
        # Any other method, or a path that only decodes to it, is the app's.
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            assert request(port, READY, method) == (200, APP_BODY), method
        for disguised in ("/-/%72eady", "/%2D/ready", "/-%2Fready", "/-/ready/"):
            assert request(port, disguised) == (200, APP_BODY), disguised
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0


# -- --admin-bind, single process -----------------------------------------------------------------


def test_admin_port_answers_readiness_and_metrics_and_the_apps_port_leaves_them_to_the_app(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    args = ("-b", f"127.0.0.1:{port}", "--admin-bind", f"127.0.0.1:{admin}", "--metrics-path", METRICS_PATH)
    with start_gshutdown(tmp_path / "log", PROBE, *args) as server:
        assert f"readiness and metrics on http://127.0.0.1:{admin} (--admin-bind)" in server.log()
        assert request(admin, READY) == (200, b"ready\n")
        assert curl_status(admin) == 200
        assert request(admin, READY, "HEAD") == (200, b"")
        # The app's port: both paths are the app's now.
        assert request(port, READY) == (200, APP_BODY)
        assert request(port, METRICS_PATH) == (200, APP_BODY)
        # The admin port serves nothing else.
        assert request(admin, "/")[0] == 404
        assert request(admin, "/-/%72eady")[0] == 404
        assert request(admin, READY, "POST")[0] == 405
        assert request(admin, METRICS_PATH, "DELETE")[0] == 405
        # Probes and scrapes are not the app's requests: only the two above are counted.
        for _ in range(5):
            assert curl_status(admin) == 200
        metrics = scrape(admin)
        assert metrics.value("gshutdown_requests_total") == 2
        assert metrics.value("gshutdown_responses_total", status_class="2xx") == 2
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert re.search(r"exit: clean after [\d.]+ s; 2 requests served", server.log()), server.log()


def test_admin_port_says_503_from_sigterm_until_exit_while_the_app_drains(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    args = ("-b", f"127.0.0.1:{port}", "--admin-bind", f"127.0.0.1:{admin}", "--drain-delay", "1")
    with start_gshutdown(tmp_path / "log", PROBE, *args) as server:
        # A keep-alive probe connection, idle across the shutdown: not the app's to close or count.
        probe = http.client.HTTPConnection("127.0.0.1", admin, timeout=PROCESS_IO_TIMEOUT)
        slow: list[tuple[int, bytes]] = []
        try:
            assert request(admin, READY, conn=probe) == (200, b"ready\n")
            # An in-flight request keeps the drain going after the app's listener closes.
            client = threading.Thread(target=lambda: slow.append(request(port, "/slow?s=3")))
            client.start()
            server.wait_for_log("slow request started")
            server.send_signal(signal.SIGTERM)
            server.wait_for_log("drain delay: readiness is 503")
            assert request(admin, READY, conn=probe) == (503, b"draining\n")
            assert curl_status(admin) == 503
            assert request(port, "/") == (200, APP_BODY)  # the app's port still serves
            server.wait_for_log("shutdown: started")
            wait_until(lambda: refused(port))
            # The app's listener is closed; the admin port still answers, on the old connection too.
            assert request(admin, READY, conn=probe) == (503, b"draining\n")
            assert curl_status(admin) == 503
            client.join(PROCESS_IO_TIMEOUT)
            assert slow == [(200, b"slept 3")]
            assert server.wait() == 0
        finally:
            probe.close()
    log = server.log()
    assert "shutdown: clean" in log and "(0 forced, 0 idle closed, 0 hijacked closed)" in log, log
    assert re.search(r"exit: clean after [\d.]+ s; 2 requests served, 0 connections forced", log), log
    assert refused(admin)


@pytest.mark.parametrize("workers", [(), ("-w", "2")], ids=["single", "workers"])
def test_admin_bind_errors_are_one_line(workers: tuple[str, ...]) -> None:
    port = free_port()
    done = run_cli(PROBE, "-b", f"127.0.0.1:{port}", *workers, "--admin-bind", f"127.0.0.1:{port}")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"gshutdown: error: cannot listen on 127.0.0.1:{port}: address already in use"
    ]
    done = run_cli(PROBE, *workers, "--readiness-path", "", "--admin-bind", f"127.0.0.1:{free_port()}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "gshutdown: error: --admin-bind needs the readiness path or --metrics-path: it serves nothing else"
    ]


#: ``gshutdown.run()`` from a user's own ``__main__``, with the admin listener: argv is the two ports.
RUN_WITH_ADMIN = """
import logging, sys
import gshutdown
from tests.apps.probe import app

logging.basicConfig(level=logging.INFO)
port, admin = int(sys.argv[1]), int(sys.argv[2])
raise SystemExit(gshutdown.run(app, ("127.0.0.1", port), admin_bind=("127.0.0.1", admin), drain_delay=5))
"""


def test_run_takes_admin_bind(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    argv = [sys.executable, "-c", RUN_WITH_ADMIN, str(port), str(admin)]
    with GProcess(argv, tmp_path / "log").listening() as proc:
        assert request(admin, READY) == (200, b"ready\n")
        assert request(port, READY) == (200, APP_BODY)
        proc.send_signal(signal.SIGTERM)
        proc.wait_for_log("drain delay: readiness is 503")
        assert request(admin, READY) == (503, b"draining\n")
        proc.send_signal(signal.SIGQUIT)  # the rest of the 5 s delay is not this test's
        assert proc.wait() == 0


# -- --admin-bind with --workers ------------------------------------------------------------------


def test_workers_serve_the_admin_port_with_the_masters_readiness_and_summed_metrics(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    args = ("--admin-bind", f"127.0.0.1:{admin}", "--metrics-path", METRICS_PATH, "--drain-delay", "1.5")
    with start_master(tmp_path / "log", PROBE, port, *args) as master:
        assert request(port, READY) == (200, APP_BODY)
        assert curl_status(admin) == 200
        pids = {request(port, "/pid")[1] for _ in range(20)}
        # Any worker answers for all: 21 app requests in all, whichever served them.
        wait_until(lambda: scrape(admin).value("gshutdown_requests_total") == 21)
        assert {int(pid) for pid in pids} <= {
            int(p) for p in scrape(admin).by_label("gshutdown_worker_requests", "pid")
        }

        # A reload retires the old workers (they drain for 1.5 s), but the pod still serves: 200 throughout.
        mark = len(master.log())
        master.send_signal(signal.SIGHUP)
        master.wait_for_log(r"reload done", start=mark)
        during = [curl_status(admin) for _ in range(15)]
        master.wait_for_log(r"worker \d+ exited with status 0", start=mark)
        assert during == [200] * 15

        # The master stops: every worker's admin answer is 503 while the app's port still serves.
        mark = len(master.log())
        master.send_signal(signal.SIGTERM)
        master.wait_for_log(r"drain delay: readiness is 503", start=mark)
        assert [curl_status(admin) for _ in range(6)] == [503] * 6
        assert request(port, "/") == (200, APP_BODY)
        assert master.wait() == 0
    assert refused(admin)


def test_an_upgraded_master_inherits_the_admin_listener(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    with start_master(tmp_path / "log", PROBE, port, "--admin-bind", f"127.0.0.1:{admin}") as master:
        new_pid = 0
        try:
            master.send_signal(signal.SIGUSR2)
            match = master.wait_for_log(r"upgrade: new master (\d+) is serving", timeout=20)
            new_pid = int(match.group(1))
            # The old master hands over: not a stop, so the admin port never says 503.
            statuses = []
            while master.proc.poll() is None:
                statuses.append(curl_status(admin))
            assert master.wait() == 0
            assert set(statuses) <= {200}, statuses
            assert curl_status(admin) == 200  # the new master's workers answer now
            os.kill(new_pid, signal.SIGTERM)  # started by our master's upgrade
            wait_until(lambda: gone(new_pid), timeout=20)
            new_pid = 0
        finally:
            if new_pid:
                os.kill(new_pid, signal.SIGKILL)
    assert "cannot listen" not in master.log()
