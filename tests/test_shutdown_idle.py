"""Shutdown with nothing to wait for: idle and silent connections, the closed listener."""

from __future__ import annotations

import resource
import socket
import time

import pytest
from gevent.event import Event as GEvent

from tests.helpers import hello_app, read_response
from tests.shutdown_helpers import (
    close_all,
    fin_times,
    keep_alive_connections,
    on_drain,
    request_bytes,
    wait_for_state_count,
)

IDLE_COUNT = 200


@pytest.fixture
def enough_fds() -> None:
    """Room for 200 client and 200 server sockets in this one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2048
    if soft < wanted and (hard == resource.RLIM_INFINITY or hard >= wanted):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    elif soft < wanted:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is too low for {IDLE_COUNT} connections")


def test_200_idle_keepalive_connections_get_fin_at_once_and_shutdown_returns_fast(serve, enough_fds):
    """Each idle keep-alive connection sees EOF within 0.3 s; shutdown() takes < 0.3 s."""
    st = serve(hello_app)
    socks = keep_alive_connections(st, IDLE_COUNT)
    try:
        wait_for_state_count(st, "idle", IDLE_COUNT)
        began = time.monotonic()
        future = st.shutdown_async()
        fins = fin_times(socks, began, timeout=5.0)
        result = future.result(5)
        wall = time.monotonic() - began
    finally:
        close_all(socks)
    print(f"\n200 idle: result.duration={result.duration:.3f} s wall={wall:.3f} s last FIN={max(fins):.3f} s")
    assert len(fins) == IDLE_COUNT
    assert max(fins) < 0.3, f"slowest FIN after {max(fins):.3f} s"
    assert result.clean and result.forced == ()
    assert result.idle_closed == IDLE_COUNT
    assert result.duration < 0.3, f"shutdown took {result.duration:.3f} s"
    assert wall < 0.5, f"shutdown() returned after {wall:.3f} s"


def test_silent_connections_are_closed_at_once_and_do_not_delay_shutdown(serve):
    """20 connections that never send a byte are closed within ~0.3 s; shutdown is not held up."""
    st = serve(hello_app)
    socks = [st.connect() for _ in range(20)]
    try:
        wait_for_state_count(st, "new", 20)
        began = time.monotonic()
        future = st.shutdown_async(timeout=10)
        fins = fin_times(socks, began, timeout=5.0)
        result = future.result(5)
        wall = time.monotonic() - began
    finally:
        close_all(socks)
    assert max(fins) < 0.3, f"slowest silent connection closed after {max(fins):.3f} s"
    assert result.clean and result.forced == ()
    assert result.duration < 0.3, f"shutdown took {result.duration:.3f} s with silent connections"
    assert wall < 0.5


def test_new_connects_are_refused_once_the_listener_is_closed(serve):
    """During a shutdown (a request still in flight) and after it, connect() is refused, not hung."""
    release = GEvent()  # waited on and set only in the server's hub

    def slow(environ, start_response):
        release.wait(10)
        return hello_app(environ, start_response)

    st = serve(slow)
    busy = st.connect()
    try:
        busy.sendall(request_bytes("/"))
        wait_for_state_count(st, "active", 1)
        began = on_drain(st)
        address = st.address[:2]
        future = st.shutdown_async(timeout=10)
        assert began.wait(5)
        # The shutdown is waiting for the busy request: the listener is already closed.
        for _ in range(5):
            t0 = time.monotonic()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(address, timeout=2).close()
            assert time.monotonic() - t0 < 1.0
        assert not future.done()
        st.call(release.set)
        status, headers, body = read_response(busy)
        assert (status, body, headers["connection"]) == (200, b"Hello, World!", "close")
        result = future.result(5)
        assert result.clean
    finally:
        busy.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=2).close()
