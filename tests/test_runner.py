"""``gshutdown.process.runner``: ``run()`` and ``Runner``, with an injected shutdown trigger.

In-process tests run the runner on this thread's gevent hub; the trigger is a
greenlet that plays the client (cooperative ``gevent.socket``) and returns
to start the graceful shutdown. The last tests embed ``run()`` in a child
process and stop it with a real SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import gevent
import pytest
from gevent import socket as gsocket
from gevent.event import Event

import gshutdown
from gshutdown import Server
from gshutdown.process.exit_status import ExitStatus
from gshutdown.process.runner import SIGNAL_ACTIONS, Role, Runner, SignalAction, Trigger, run
from gshutdown.server import hooks, jobs
from tests.process_helpers import GProcess, free_port, get, recv_eof, request_bytes

#: Any runner that hangs fails the test instead of the run.
RUN_BOUND = 20.0


@pytest.fixture(autouse=True)
def _restore_signal_handlers() -> Iterator[None]:
    # run() installs gevent signal watchers; stopping them leaves SIG_DFL behind.
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture(autouse=True)
def _no_leftover_app_declarations() -> Iterator[None]:
    yield
    jobs.app_jobs.clear()
    hooks.app_hooks.hooks.clear()


def listening_socket() -> socket.socket:
    """A bound, listening gevent socket whose port the trigger can use."""
    sock = gsocket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def fetch(port: int, path: str = "/") -> bytes:
    """A whole response, raw, from a cooperative client in the runner's hub."""
    with gsocket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request_bytes(path, close=True))
        return recv_eof(sock, timeout=5)


def slow_app(seconds: float, started: Event) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["PATH_INFO"] == "/slow":
            started.set()
            gevent.sleep(seconds)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    return app


def test_run_serves_until_the_trigger_returns_then_exits_0(tmp_path: Path) -> None:
    listener = listening_socket()
    port = listener.getsockname()[1]
    pidfile = tmp_path / "run.pid"
    seen: dict[str, Any] = {}

    def trigger() -> None:
        seen["root"] = fetch(port, "/")
        seen["ready"] = fetch(port, "/-/ready")
        seen["pid"] = pidfile.read_text().strip()

    try:
        with gevent.Timeout(RUN_BOUND):
            status = run(slow_app(0, Event()), listener, pidfile=str(pidfile), shutdown_trigger=trigger)
    finally:
        listener.close()
    assert status == ExitStatus.OK
    assert seen["root"].startswith(b"HTTP/1.1 200 ") and seen["root"].endswith(b"\r\n\r\nok")
    assert seen["ready"].startswith(b"HTTP/1.1 200 ")
    assert seen["pid"] == str(os.getpid())
    assert not pidfile.exists()


def test_run_lets_an_in_flight_request_finish_with_connection_close() -> None:
    listener = listening_socket()
    port = listener.getsockname()[1]
    started = Event()
    client: list[gevent.Greenlet] = []

    def trigger() -> None:
        client.append(gevent.spawn(fetch, port, "/slow"))
        started.wait(5)

    try:
        with gevent.Timeout(RUN_BOUND):
            began = time.monotonic()
            status = run(slow_app(0.3, started), listener, shutdown_trigger=trigger)
            took = time.monotonic() - began
            response = client[0].get(timeout=5)
    finally:
        listener.close()
    assert status == ExitStatus.OK
    assert took >= 0.25, "run() returned before the in-flight request ended"
    assert response.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close\r\n" in response
    assert response.endswith(b"\r\n\r\nok")


def test_run_returns_exit_forced_when_the_graceful_timeout_expires() -> None:
    listener = listening_socket()
    port = listener.getsockname()[1]
    started = Event()
    client: list[gevent.Greenlet] = []

    def trigger() -> None:
        client.append(gevent.spawn(fetch, port, "/slow"))
        started.wait(5)

    try:
        with gevent.Timeout(RUN_BOUND):
            began = time.monotonic()
            status = run(slow_app(30, started), listener, graceful_timeout=0.2, shutdown_trigger=trigger)
            took = time.monotonic() - began
            response = client[0].get(timeout=5)
    finally:
        listener.close()
    assert status == ExitStatus.FORCED
    assert took < 3.0
    assert response == b"", "a forced connection closes without a response"


def test_run_starts_module_level_jobs_and_runs_declared_hooks_in_phase_order() -> None:
    listener = listening_socket()
    events: list[str] = []
    runs = [0]

    @gshutdown.every(0.01)
    def tick() -> None:
        runs[0] += 1

    @gshutdown.on_shutdown(phase="drain")
    def tell_streams() -> None:
        events.append("drain")

    @gshutdown.on_shutdown
    def close_pool() -> None:
        events.append("stopped")

    def trigger() -> None:
        deadline = time.monotonic() + 5
        while runs[0] < 3 and time.monotonic() < deadline:
            gevent.sleep(0.01)

    try:
        with gevent.Timeout(RUN_BOUND):
            status = run(slow_app(0, Event()), listener, shutdown_trigger=trigger)
            runs_at_exit = runs[0]
            gevent.sleep(0.05)
    finally:
        listener.close()
    assert status == ExitStatus.OK
    assert runs_at_exit >= 3
    assert runs[0] == runs_at_exit, "the job kept running after run() returned"
    assert events == ["drain", "stopped"]
    assert jobs.app_jobs == [] and hooks.app_hooks.hooks == [], "run() adopts the declarations"


def test_runner_exit_forced_when_a_job_is_still_running_at_the_deadline() -> None:
    server = Server(("127.0.0.1", 0), slow_app(0, Event()))
    running = Event()

    def stuck_job() -> None:
        running.set()
        gevent.sleep(30)

    server.every(0.01, stuck_job, name="stuck")
    runner = Runner([server], graceful_timeout=0.2, install_signals=False, shutdown_trigger=lambda: running.wait(5))
    with gevent.Timeout(RUN_BOUND):
        status = runner.run()
    assert status == ExitStatus.FORCED
    assert runner.results[0].jobs_killed == ("stuck",)
    assert runner.results[0].forced == ()


def test_runner_shuts_every_server_down_and_calls_on_ready_once() -> None:
    servers = [Server(("127.0.0.1", 0), slow_app(0, Event())) for _ in range(2)]
    ready_calls: list[bool] = []
    answers: list[bytes] = []

    def trigger() -> None:
        for server in servers:
            answers.append(fetch(server.address[1]))

    runner = Runner(
        servers,
        install_signals=False,
        shutdown_trigger=trigger,
        on_ready=lambda: ready_calls.append(all(server.started for server in servers)),
    )
    with gevent.Timeout(RUN_BOUND):
        status = runner.run()
    assert status == ExitStatus.OK
    assert ready_calls == [True]
    assert len(answers) == 2 and all(answer.endswith(b"\r\n\r\nok") for answer in answers)
    assert [result.clean for result in runner.results] == [True, True]
    assert all(server.phase is gshutdown.ShutdownPhase.STOPPED for server in servers)


@pytest.mark.parametrize(
    ("events", "role"),
    [([Trigger.MAX_REQUESTS, signal.SIGQUIT], Role.SINGLE), ([signal.SIGINT], Role.GUNICORN_WORKER)],
    ids=["reason-drains-then-SIGQUIT-closes", "SIGINT-to-a-gunicorn-worker-closes"],
)
def test_deliver_drains_on_a_reason_and_closes_at_once_on_an_immediate_signal(events: list[Any], role: Role) -> None:
    started = Event()
    server = Server(("127.0.0.1", 0), slow_app(30, started))
    runner = Runner([server], install_signals=False, graceful_timeout=20, role=role)
    immediate = [signum for signum, action in SIGNAL_ACTIONS[role].items() if action is SignalAction.CLOSE_NOW]
    replies: list[gevent.Greenlet] = []

    def client() -> None:
        replies.append(gevent.spawn(fetch, server.address[1], "/slow"))
        started.wait(5)
        for event in events:
            runner.deliver(event)
            while event not in immediate and server.phase is not gshutdown.ShutdownPhase.DRAINING:
                gevent.sleep(0.01)  # bounded by the test's gevent.Timeout

    helper = gevent.spawn(client)
    with gevent.Timeout(RUN_BOUND):
        status = runner.run()
        helper.get()
        reply = replies[0].get()
    assert status == ExitStatus.FORCED
    assert reply == b""  # forced: closed, no fake response
    assert server.phase is gshutdown.ShutdownPhase.STOPPED
    assert len(runner.results) == (0 if events[0] in immediate else 1)  # a drain ran, or none


@pytest.mark.parametrize("with_on_ready", [False, True], ids=["service", "worker"])
def test_only_a_runner_without_on_ready_speaks_to_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_on_ready: bool
) -> None:
    address = str(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(address)
        manager.setblocking(False)
        runner = Runner(
            [Server(("127.0.0.1", 0), slow_app(0, Event()))],
            install_signals=False,
            shutdown_trigger=lambda: None,
            on_ready=(lambda: None) if with_on_ready else None,
        )
        with gevent.Timeout(RUN_BOUND):
            assert runner.run() == ExitStatus.OK
        received = []
        while True:
            try:
                received.append(manager.recv(4096).decode())
            except BlockingIOError:
                break
    assert received == ([] if with_on_ready else ["READY=1", "STOPPING=1"])


EMBEDDED = textwrap.dedent(
    """
    import logging, socket, sys
    import gshutdown
    from tests.apps.probe import app

    logging.basicConfig(level=logging.INFO)
    port, graceful_timeout, listener = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    if listener == "plain-socket":  # what an embedder not using gevent.monkey has
        bind = socket.socket()
        bind.bind(("127.0.0.1", port))
        bind.listen(128)
    else:
        bind = ("127.0.0.1", port)
    raise SystemExit(gshutdown.run(app, bind, graceful_timeout=graceful_timeout))  # as the README shows
    """
)


@pytest.mark.parametrize(
    ("graceful_timeout", "slow", "expected"),
    [("10", "0.5", ExitStatus.OK), ("0.3", "30", ExitStatus.FORCED)],
    ids=["drained", "forced"],
)
def test_embedded_run_handles_sigterm_and_returns_the_exit_status(
    tmp_path: Path, graceful_timeout: str, slow: str, expected: int
) -> None:
    port = free_port()
    argv = [sys.executable, "-c", EMBEDDED, str(port), graceful_timeout, "address"]
    with GProcess(argv, tmp_path / "log") as proc:
        proc.wait_listening()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request_bytes(f"/slow?s={slow}"))
            proc.wait_for_log(r"slow request started")
            proc.send_signal(signal.SIGTERM)
            reply = recv_eof(sock)
            status = proc.wait()
    assert status == expected
    if expected == ExitStatus.OK:
        assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"slept 0.5")
    else:
        assert reply == b""


def test_embedded_run_serves_on_a_plain_blocking_listening_socket(tmp_path: Path) -> None:
    """``bind`` may be "a socket": a stdlib one (blocking) must not stall the hub."""
    port = free_port()
    argv = [sys.executable, "-c", EMBEDDED, str(port), "10", "plain-socket"]
    with GProcess(argv, tmp_path / "log") as proc:
        proc.wait_listening()
        answers = [get(port, "/", timeout=5)[2] for _ in range(3)]
        proc.send_signal(signal.SIGTERM)
        status = proc.wait()
    assert answers == [b"Hello, World!"] * 3
    assert status == ExitStatus.OK
