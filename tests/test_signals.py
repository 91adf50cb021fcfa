"""Signals to a real ``gshutdown`` process, as Kubernetes and systemd send them.

SIGTERM/SIGINT drain gracefully (exit 0), a second one forces (exit 3),
SIGQUIT closes at once; ``--graceful-timeout`` bounds the drain and
``--drain-delay`` keeps serving with readiness at 503 before the listener closes.
"""

from __future__ import annotations

import resource
import selectors
import signal
import socket
import time
from pathlib import Path

import pytest

from gshutdown.process.exit_status import ExitStatus
from tests.process_helpers import (
    PROBE,
    connect,
    free_port,
    get,
    read_response,
    recv_eof,
    refused,
    request_bytes,
    start_gshutdown,
    wait_until,
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_signal_finishes_in_flight_request_and_closes_idle_connections_at_once(
    tmp_path: Path, signum: int
) -> None:
    port = free_port()
    sockets: list[socket.socket] = []
    with start_gshutdown(tmp_path / "log", "--bind", f"127.0.0.1:{port}", PROBE) as server:
        try:
            idle = []
            for _ in range(4):
                sock = connect(port)
                sockets.append(sock)
                idle.append(sock)
                sock.sendall(request_bytes("/"))
                status, headers, _ = read_response(sock)
                assert status == 200
                assert headers.get("connection", "").lower() != "close"
            slow = connect(port)
            sockets.append(slow)
            slow.sendall(request_bytes("/slow?s=1.5"))
            server.wait_for_log(r"slow request started")

            sent = server.send_signal(signum)
            for sock in idle:
                assert recv_eof(sock, timeout=5) == b""
            idle_closed_after = time.monotonic() - sent
            status, headers, body = read_response(slow, timeout=10)
            slow_done_after = time.monotonic() - sent
            assert recv_eof(slow) == b""
            status_code = server.wait()
        finally:
            for sock in sockets:
                sock.close()
    assert status_code == 0
    # Idle connections go within the 0.1 s idle grace, not when the slow request ends.
    assert idle_closed_after < 1.0
    assert idle_closed_after < slow_done_after
    assert (status, body) == (200, b"slept 1.5")
    assert headers["connection"].lower() == "close"
    log = server.log()
    assert f"{signal.Signals(signum).name}: graceful shutdown" in log
    assert "exit: clean after" in log
    assert "5 requests served, 0 connections forced, 0 jobs killed\n" in log  # and no "requests cut" when none were


def test_second_sigterm_during_the_drain_forces_exit_3_at_once(tmp_path: Path) -> None:
    port = free_port()
    with start_gshutdown(tmp_path / "log", "--bind", f"127.0.0.1:{port}", PROBE) as server, connect(port) as slow:
        slow.sendall(request_bytes("/slow?s=30"))
        server.wait_for_log(r"slow request started")
        server.send_signal(signal.SIGTERM)
        server.wait_for_log(r"SIGTERM: graceful shutdown")
        sent = server.send_signal(signal.SIGTERM)
        status_code = server.wait()
        exited_after = time.monotonic() - sent
        # Closed under the request: no response at all.
        assert recv_eof(slow) == b""
    assert status_code == ExitStatus.FORCED
    assert exited_after < 3.0
    log = server.log()
    assert "SIGTERM again: closing every connection now" in log
    assert "exit: forced" in log


def test_sigquit_closes_every_connection_at_once_with_exit_3(tmp_path: Path) -> None:
    port = free_port()
    with start_gshutdown(tmp_path / "log", "--bind", f"127.0.0.1:{port}", PROBE) as server, connect(port) as slow:
        slow.sendall(request_bytes("/slow?s=30"))
        server.wait_for_log(r"slow request started")
        sent = server.send_signal(signal.SIGQUIT)
        status_code = server.wait()
        exited_after = time.monotonic() - sent
        assert recv_eof(slow) == b""
    assert status_code == ExitStatus.FORCED
    assert exited_after < 3.0
    log = server.log()
    assert "SIGQUIT: closing every connection now" in log
    assert "exit: closed 1 connections" in log


def test_graceful_timeout_forces_a_long_request_at_the_deadline_and_logs_it(tmp_path: Path) -> None:
    port = free_port()
    with (
        start_gshutdown(tmp_path / "log", "--graceful-timeout", "1", "--bind", f"127.0.0.1:{port}", PROBE) as server,
        connect(port) as slow,
    ):
        slow.sendall(request_bytes("/slow?s=30"))
        server.wait_for_log(r"slow request started")
        sent = server.send_signal(signal.SIGTERM)
        status_code = server.wait()
        exited_after = time.monotonic() - sent
        assert recv_eof(slow) == b""
    assert status_code == ExitStatus.FORCED
    assert 0.9 <= exited_after < 4.0
    log = server.log()
    assert "shutdown: started (timeout 1 s)" in log
    assert "shutdown: forced ACTIVE connection from ('127.0.0.1'" in log
    assert "GET /slow?s=30 HTTP/1.1" in log
    assert "1 connections forced" in log


def test_drain_delay_keeps_serving_with_readiness_503_then_refuses_connects(tmp_path: Path) -> None:
    port = free_port()
    delay = 1.0
    with (
        start_gshutdown(tmp_path / "log", "--drain-delay", str(delay), "--bind", f"127.0.0.1:{port}", PROBE) as server,
        connect(port) as slow,
    ):
        assert get(port, "/-/ready")[0] == 200
        # Keeps the process alive past the delay, so the refused connects are
        # the closed listener's doing, not a process that has exited.
        slow.sendall(request_bytes("/slow?s=2.5"))
        server.wait_for_log(r"slow request started")
        sent = server.send_signal(signal.SIGTERM)

        wait_until(lambda: get(port, "/-/ready")[0] == 503, timeout=2.0)
        unready_after = time.monotonic() - sent
        status, _, body = get(port, "/")
        served_after = time.monotonic() - sent
        assert (status, body) == (200, b"Hello, World!")

        wait_until(lambda: refused(port), timeout=delay + 5)
        refused_after = time.monotonic() - sent
        assert server.proc.poll() is None, "the process should still be draining the slow request"

        status, headers, body = read_response(slow, timeout=10)
        status_code = server.wait()
    assert unready_after < 1.0
    assert served_after < delay
    assert refused_after >= delay - 0.2
    assert (status, body) == (200, b"slept 2.5")
    assert headers["connection"].lower() == "close"
    assert status_code == 0
    assert "drain delay: readiness is 503" in server.log()


def test_sigterm_with_1000_idle_keep_alive_connections_exits_quickly(tmp_path: Path) -> None:
    count = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * count:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4 * count, hard), hard))
    port = free_port()
    sockets: list[socket.socket] = []
    with start_gshutdown(tmp_path / "log", "--bind", f"127.0.0.1:{port}", PROBE) as server:
        try:
            for _ in range(count):
                sock = connect(port)
                sockets.append(sock)
                sock.sendall(request_bytes("/"))
            for sock in sockets:
                assert read_response(sock)[0] == 200

            sent = server.send_signal(signal.SIGTERM)
            # A well-behaved client: close on the server's FIN.
            open_count = count
            with selectors.DefaultSelector() as selector:
                for sock in sockets:
                    sock.setblocking(False)
                    selector.register(sock, selectors.EVENT_READ)
                deadline = sent + 20
                while open_count and time.monotonic() < deadline:
                    for key, _ in selector.select(timeout=0.5):
                        sock = key.fileobj  # type: ignore[assignment]
                        try:
                            data = sock.recv(4096)
                        except ConnectionError:
                            data = b""
                        assert data == b"", "an idle connection received bytes"
                        selector.unregister(sock)
                        sock.close()
                        open_count -= 1
            all_closed_after = time.monotonic() - sent
            status_code = server.wait()
            exited_after = time.monotonic() - sent
        finally:
            for sock in sockets:
                sock.close()
    print(
        f"\n{count} idle keep-alive connections: all FIN'd after {all_closed_after:.3f} s, "
        f"exit after {exited_after:.3f} s"
    )
    assert open_count == 0
    assert status_code == 0
    assert exited_after < 5.0
    assert f"{count} idle closed" in server.log()
