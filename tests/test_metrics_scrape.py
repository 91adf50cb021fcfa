"""``--metrics-path`` in one process: a real ``gshutdown`` child scraped with ``curl`` and ``http.client``.

Every exposition is parsed with ``prometheus_client.parser``. Counts are
compared between two scrapes, so each test knows exactly which requests fall
between them (a scrape's own response is counted once it is over: by the next
scrape).
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

from tests.metrics_helpers import METRICS_PATH, Scrape, curl, fetch, metrics_cli, scrape
from tests.process_helpers import (
    GProcess,
    connect,
    free_port,
    get,
    read_response,
    request_bytes,
    wait_until,
)

APP = "tests.apps.statuses:app"


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def server(tmp_path: Path, port: int) -> Iterator[GProcess]:
    with metrics_cli(tmp_path / "server.log", APP, "-b", f"127.0.0.1:{port}") as proc:
        proc.wait_listening()
        yield proc


def test_curl_sees_requests_counted_by_status_class_and_timed(server: GProcess, port: int) -> None:
    before = curl(port)
    assert get(port, "/")[0] == 200
    assert get(port, "/")[0] == 200
    assert get(port, "/status/302")[0] == 302
    assert get(port, "/status/404")[0] == 404
    assert get(port, "/status/404")[0] == 404
    assert get(port, "/raise")[0] == 500
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
        assert read_response(sock)[0] == 400  # refused by the server: it never reaches the app
    after = curl(port)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    # Between the scrapes: the first scrape's own 200, then the requests above.
    assert delta("gshutdown_responses_total", status_class="2xx") == 1 + 2
    assert delta("gshutdown_responses_total", status_class="3xx") == 1
    assert delta("gshutdown_responses_total", status_class="4xx") == 2 + 1
    assert delta("gshutdown_responses_total", status_class="5xx") == 1
    assert delta("gshutdown_responses_total", status_class="1xx") == 0
    # Request heads parsed: the six app requests and the second scrape itself.
    assert delta("gshutdown_requests_total") == 6 + 1
    # Timed: the first scrape and the six app requests (not the refused head).
    assert delta("gshutdown_request_duration_seconds_count") == 1 + 6
    assert delta("gshutdown_request_duration_seconds_bucket", le="+Inf") == 1 + 6
    assert 0 < delta("gshutdown_request_duration_seconds_sum") < 10
    assert after.type_of("gshutdown_requests") == "counter"
    assert after.type_of("gshutdown_responses") == "counter"
    assert after.type_of("gshutdown_request_duration_seconds") == "histogram"
    assert after.type_of("gshutdown_connections") == "gauge"
    assert after.by_label("gshutdown_shutdown_phase", "phase") == {
        "serving": 1,
        "drain_delay": 0,
        "draining": 0,
        "forcing": 0,
        "stopping": 0,
        "stopped": 0,
    }
    assert after.value("gshutdown_forced_connections_total") == 0
    # One process: prometheus-client's default registry is served too.
    assert after.value("process_resident_memory_bytes") > 0


def test_http_client_sees_an_idle_keep_alive_connection(server: GProcess, port: int) -> None:
    status, headers, body = fetch(port)
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert headers["cache-control"] == "no-store"
    Scrape(body)  # parses
    with connect(port) as idle:
        idle.sendall(request_bytes("/"))
        assert read_response(idle)[:1] == (200,)

        # The scraping connection itself is the active one.
        def one_idle_one_active() -> bool:
            return scrape(port).by_label("gshutdown_connections", "state") == {
                "new": 0,
                "active": 1,
                "idle": 1,
                "hijacked": 0,
            }

        wait_until(one_idle_one_active)
    wait_until(lambda: scrape(port).value("gshutdown_connections", state="idle") == 0)


def test_openmetrics_is_served_to_who_asks_for_it(server: GProcess, port: int) -> None:
    status, headers, body = fetch(port, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    families = {family.name: family for family in openmetrics_families(body)}
    assert families["gshutdown_requests"].type == "counter"
    assert families["gshutdown_request_duration_seconds"].type == "histogram"


def test_the_metrics_path_never_reaches_the_app(server: GProcess, port: int) -> None:
    # The app answers 200 "ok" for any path it gets: the body shows who answered.
    status, _, body = fetch(port)
    assert status == 200 and "gshutdown_requests_total" in body
    assert fetch(port, METRICS_PATH + "/")[2] == "ok"


def test_metrics_answer_during_the_drain_delay(tmp_path: Path, port: int) -> None:
    with metrics_cli(tmp_path / "server.log", APP, "-b", f"127.0.0.1:{port}", "--drain-delay", "2") as proc:
        proc.wait_listening()
        assert scrape(port).value("gshutdown_shutdown_phase", phase="serving") == 1
        proc.send_signal(signal.SIGTERM)
        proc.wait_for_log("drain delay: readiness is 503")
        during = curl(port)
        assert during.by_label("gshutdown_shutdown_phase", "phase") == {
            "serving": 0,
            "drain_delay": 1,
            "draining": 0,
            "forcing": 0,
            "stopping": 0,
            "stopped": 0,
        }
        assert get(port, "/-/ready")[0] == 503
        assert get(port, "/")[0] == 200  # still serving
        assert proc.wait() == 0
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
