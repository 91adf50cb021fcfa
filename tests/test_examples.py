"""The examples, each served by the real CLI and stopped with a real SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Request,
    TextMessage,
)

from tests.process_helpers import (
    ROOT,
    GProcess,
    connect,
    free_port,
    get,
    read_response,
    recv_eof,
    request_bytes,
    start_gshutdown,
)


def serve_example(tmp_path: Path, spec: str, env: dict[str, str] | None = None) -> tuple[GProcess, int]:
    port = free_port()
    return start_gshutdown(tmp_path / "log", "--bind", f"127.0.0.1:{port}", spec, env=env), port


def test_hello_example_answers(tmp_path: Path) -> None:
    server, port = serve_example(tmp_path, "examples.hello:app")
    with server:
        assert get(port, "/")[2] == b"Hello, World!"
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0


# -- jobs ----------------------------------------------------------------------------------------


def job_events(log: str) -> list[tuple[int, str, str]]:
    """(line number, "second #3", "start"/"done") for every job line of the log."""
    events = []
    for number, line in enumerate(log.splitlines()):
        match = re.search(r"(second|minute) job #(\d+) (start|done)$", line)
        if match:
            events.append((number, f"{match[1]} #{match[2]}", match[3]))
    return events


def test_jobs_example_lets_every_started_run_finish_on_sigterm(tmp_path: Path) -> None:
    # Intervals 50 ms and 3 s; runs take 25 ms and 100 ms.
    server, port = serve_example(tmp_path, "examples.jobs:app", env={"JOBS_TIME_SCALE": "0.05"})
    with server:
        server.wait_for_log(r"second job #2 done")
        counts = get(port, "/")[2].decode()
        server.wait_for_log(r"minute job #1 start", timeout=15)
        server.send_signal(signal.SIGTERM)
        status = server.wait()
    assert int(re.search(r"^second job: (\d+) runs$", counts, re.MULTILINE)[1]) >= 2  # type: ignore[index]
    assert re.search(r"^minute job: \d+ runs$", counts, re.MULTILINE)
    assert status == 0
    log = server.log()
    lines = log.splitlines()
    sigterm_line = next(n for n, line in enumerate(lines) if "SIGTERM: graceful shutdown" in line)
    events = job_events(log)
    started = {run: n for n, run, what in events if what == "start"}
    done = {run: n for n, run, what in events if what == "done"}
    assert "minute #1" in started and "second #1" in started
    assert started.keys() == done.keys(), f"runs started but not done: {started.keys() - done.keys()}"
    assert all(n < sigterm_line for n in started.values()), "a run started after SIGTERM"
    # The point of the test: SIGTERM landed in the middle of a run, which still finished.
    assert any(started[run] < sigterm_line < done[run] for run in started), log
    assert "exit: clean" in log
    assert "0 jobs killed" in log


# -- flask -------------------------------------------------------------------------------------


def test_flask_example_answers_and_drains_an_in_flight_request(tmp_path: Path) -> None:
    server, port = serve_example(tmp_path, "examples.flask_app:app")
    with server, connect(port) as slow:
        status, headers, body = get(port, "/")
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {"hello": "world"}
        assert get(port, "/-/ready")[0] == 200

        slow.sendall(request_bytes("/slow?s=0.5"))
        server.wait_for_log(r"slow: sleeping 0.5 s")
        server.send_signal(signal.SIGTERM)
        status, headers, body = read_response(slow)
        assert server.wait() == 0
    assert status == 200
    assert json.loads(body) == {"slept": 0.5}
    assert headers["connection"].lower() == "close"


# -- long poll -----------------------------------------------------------------------------------


def start_poll(server: GProcess, port: int, timeout: float) -> socket.socket:
    """A poll request the server is known to be waiting in."""
    waiting = server.log().count("poll: waiting")
    sock = connect(port)
    sock.sendall(request_bytes(f"/poll?timeout={timeout:g}"))
    deadline = time.monotonic() + 10
    while server.log().count("poll: waiting") <= waiting:
        assert time.monotonic() < deadline, "the poll never started waiting"
        time.sleep(0.01)
    return sock


def test_longpoll_example_times_out_and_delivers_published_news(tmp_path: Path) -> None:
    server, port = serve_example(tmp_path, "examples.longpoll:app")
    with server:
        status, _, body = get(port, "/poll?timeout=0.05")
        assert (status, json.loads(body)["reason"]) == (200, "timeout")
        with start_poll(server, port, 30) as poll, connect(port) as publisher:
            publisher.sendall(
                b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
            )
            assert read_response(publisher)[0] == 200
            status, _, body = read_response(poll)
            assert (status, json.loads(body)) == (200, {"news": "hello"})
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0


def test_longpoll_example_answers_at_once_on_sigterm(tmp_path: Path) -> None:
    server, port = serve_example(tmp_path, "examples.longpoll:app")
    with server, start_poll(server, port, 60) as poll:
        sent = server.send_signal(signal.SIGTERM)
        status, headers, body = read_response(poll)
        answered_after = time.monotonic() - sent
        status_code = server.wait()
    assert answered_after < 2.0
    assert status == 200
    assert json.loads(body) == {"news": None, "reason": "shutting down", "poll_again": True}
    assert headers["connection"].lower() == "close"
    assert status_code == 0


# -- websocket ----------------------------------------------------------------------------------


class WSClient:
    """A blocking WebSocket client: wsproto over a plain socket."""

    def __init__(self, port: int) -> None:
        self.sock = connect(port)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._events: list[Event] = []
        self.sock.sendall(self.ws.send(Request(host="localhost", target="/")))

    def next_event(self, timeout: float = 10.0) -> Event:
        self.sock.settimeout(timeout)
        while not self._events:
            self.ws.receive_data(self.sock.recv(65536) or None)
            self._events.extend(self.ws.events())
        return self._events.pop(0)

    def send(self, event: Event) -> None:
        self.sock.sendall(self.ws.send(event))

    def close(self) -> None:
        self.sock.close()


def test_websocket_example_echoes_and_closes_with_1001_on_sigterm(tmp_path: Path) -> None:
    server, port = serve_example(tmp_path, "examples.websocket_echo:app")
    with server:
        status, headers, _ = get(port, "/")
        assert (status, headers["upgrade"]) == (426, "websocket")
        client = WSClient(port)
        try:
            assert isinstance(client.next_event(), AcceptConnection)
            client.send(Message(data="hello"))
            echoed = client.next_event()
            assert isinstance(echoed, TextMessage) and echoed.data == "hello"
            client.send(Message(data=b"\x00\x01"))
            echoed = client.next_event()
            assert isinstance(echoed, BytesMessage) and echoed.data == b"\x00\x01"

            server.send_signal(signal.SIGTERM)
            close = client.next_event(timeout=5)
            assert isinstance(close, CloseConnection)
            assert close.code == 1001
            # A client on a slow link answers a little later: the server must
            # still be there to complete the close handshake.
            time.sleep(0.3)
            client.send(close.response())
            assert recv_eof(client.sock) == b""
        finally:
            client.close()
        assert server.wait() == 0
    assert "WebSocket closed cleanly (code 1001)" in server.log()


def test_websocket_example_stays_open_while_idle_past_write_timeout(tmp_path: Path) -> None:
    """Served by gshutdown.run with a 0.2 s write_timeout: an idle session lives on regardless."""
    port = free_port()
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO); import gshutdown; "
        "from examples.websocket_echo import app; "
        f"sys.exit(gshutdown.run(app, bind=('127.0.0.1', {port}), write_timeout=0.2))"
    )
    with GProcess([sys.executable, "-c", code], tmp_path / "log") as server:
        server.wait_listening()
        client = WSClient(port)
        try:
            assert isinstance(client.next_event(), AcceptConnection)
            client.sock.settimeout(0.6)  # quiet for three write_timeouts
            with pytest.raises(TimeoutError):
                client.sock.recv(1)
            client.send(Message(data="after a pause"))
            echoed = client.next_event()
            assert isinstance(echoed, TextMessage) and echoed.data == "after a pause"
            server.send_signal(signal.SIGTERM)
            close = client.next_event(timeout=5)
            assert isinstance(close, CloseConnection) and close.code == 1001
            client.send(close.response())
            assert recv_eof(client.sock) == b""
        finally:
            client.close()
        assert server.wait() == 0
    assert "WebSocket connection lost" not in server.log()


# -- resources -----------------------------------------------------------------------------------


def test_resources_example_hooks_close_the_pool_and_flush_the_journal_after_draining(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "journal.log"
    server, port = serve_example(tmp_path, "examples.resources:app", env={"JOURNAL_PATH": str(journal)})
    with server:
        bodies = [get(port, f"/item/{n}")[2] for n in range(3)]
        assert bodies == [f"request {n} journaled\n".encode() for n in (1, 2, 3)]
        # Buffered: nothing is on disk until the hook flushes it.
        assert journal.read_text() == ""
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert journal.read_text().splitlines() == [
        "request 1 /item/0 via conn-0",
        "request 2 /item/1 via conn-1",
        "request 3 /item/2 via conn-2",
    ]
    lines = server.lines()

    def index(text: str) -> int:
        return next(n for n, line in enumerate(lines) if text in line)

    drained, exited = index("shutdown: clean"), index("exit: clean")
    assert drained < index("pool closed (4 connections)") < exited
    assert drained < index(f"journal flushed: {journal}") < exited


def test_resources_example_hooks_still_run_on_sigquit(tmp_path: Path) -> None:
    journal = tmp_path / "journal.log"
    server, port = serve_example(tmp_path, "examples.resources:app", env={"JOURNAL_PATH": str(journal)})
    with server:
        assert get(port, "/item/0")[2] == b"request 1 journaled\n"
        assert journal.read_text() == ""
        server.send_signal(signal.SIGQUIT)
        assert server.wait() == 0  # nothing was open to be forced
    assert journal.read_text().splitlines() == ["request 1 /item/0 via conn-0"]
    log = server.log()
    assert "SIGQUIT: closing every connection now" in log
    assert "pool closed (4 connections)" in log
    assert f"journal flushed: {journal}" in log


# -- kubernetes ----------------------------------------------------------------------------------


def test_kubernetes_deployment_fits_drain_delay_and_graceful_timeout_in_the_grace_period() -> None:
    yaml = pytest.importorskip("yaml")
    from gshutdown.cli import parse_args

    manifest = yaml.safe_load((ROOT / "examples" / "kubernetes" / "deployment.yaml").read_text())
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][0] == "gshutdown"
    args = parse_args(container["command"][1:])
    assert args.drain_delay > 0, "the example relies on --drain-delay, not a preStop sleep"
    assert "lifecycle" not in container
    assert args.drain_delay + args.graceful_timeout < pod["terminationGracePeriodSeconds"]
    assert container["readinessProbe"]["httpGet"]["path"] == args.readiness_path
    # The probe goes to --admin-bind's port: the app's port leaves the readiness path to the app.
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert args.admin_bind == ("0.0.0.0", ports[container["readinessProbe"]["httpGet"]["port"]])
    assert args.bind == [("0.0.0.0", ports["http"])]
    assert container["livenessProbe"].get("httpGet", {}).get("path") != args.readiness_path
    # Balancers in front (AWS ALB, ingress-nginx) keep idle connections 60 s: gshutdown must keep them longer.
    assert args.idle_timeout > 60
