"""Connection states through a shutdown: one terminal state each, nothing left behind."""

from __future__ import annotations

import itertools
import threading

import gevent
import pytest

from gshutdown import TRANSITIONS, ConnState
from tests.helpers import hello_app, wait_until
from tests.shutdown_helpers import (
    close_all,
    fd_count,
    keep_alive_connections,
    read_raw,
    recv_all,
    request_bytes,
    wait_for_state_count,
)

TERMINAL = (ConnState.CLOSED, ConnState.HIJACKED)


def _assert_lifecycles(st) -> None:
    """Every connection starts NEW, moves only along TRANSITIONS, and ends in exactly
    one terminal state, which is its last."""
    ids = st.conn_ids()
    assert ids
    for cid in ids:
        states = st.states_of(cid)
        assert states[0] is ConnState.NEW, (cid, states)
        for old, new in itertools.pairwise(states):
            assert new in TRANSITIONS[old], (cid, states)
        assert sum(state in TERMINAL for state in states) == 1, (cid, states)
        assert states[-1] in TERMINAL, (cid, states)


def _mixed_app(started: threading.Event, hold: float):
    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/slow":
            started.set()
            gevent.sleep(hold)
        elif path == "/ws":
            sock, _ = environ["gshutdown.hijack"]()
            sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
            try:
                while sock.recv(1024):
                    pass
            except OSError:
                pass
            return []
        return hello_app(environ, start_response)

    return app


def _mixed_connections(st, started: threading.Event) -> list:
    """Idle, silent, in-flight, hijacked, half-sent and already-closed connections."""
    socks = keep_alive_connections(st, 3)
    socks += [st.connect() for _ in range(2)]  # silent: NEW
    closed = st.connect()
    socks.append(closed)
    closed.sendall(request_bytes("/", headers=(("Connection", "close"),)))
    assert read_raw(closed, until_closed=True).closes
    hijacked = st.connect()
    socks.append(hijacked)
    hijacked.sendall(request_bytes("/ws", headers=(("Connection", "Upgrade"), ("Upgrade", "echo"))))
    assert read_raw(hijacked).status == 101
    half = st.connect()
    socks.append(half)
    half.sendall(b"GET / HTTP/1.1\r\n")
    slow = st.connect()
    socks.append(slow)
    slow.sendall(request_bytes("/slow"))
    assert started.wait(5)
    wait_until(lambda: st.call(st.server.stats)["connections"] == {"new": 2, "active": 2, "idle": 3, "hijacked": 1})
    return socks, half


@pytest.mark.parametrize("how", ["graceful", "deadline", "close"])
def test_every_connection_ends_in_one_terminal_state_and_nothing_is_left(serve, how):
    """Graceful, forced at the deadline, or closed at once: per connection exactly one
    terminal state (the last), an empty registry, and the fd count back to its baseline."""
    started = threading.Event()
    st = serve(_mixed_app(started, hold=0.3 if how == "graceful" else 30))
    baseline = fd_count()
    socks, half = _mixed_connections(st, started)
    try:
        if how == "close":
            st.call(st.server.close)
        else:
            future = st.shutdown_async(timeout=10 if how == "graceful" else 0.5)
            if how == "graceful":
                half.sendall(b"Host: t\r\n\r\n")  # the half-sent request completes
            result = future.result(15)
            assert result.clean is (how == "graceful")
            assert result.hijacked_closed == 1
        for sock in socks:
            recv_all(sock, timeout=5)  # every one ends, whatever it had received
    finally:
        close_all(socks)
    # close() does not wait: the killed greenlets finish on the hub's next turns.
    wait_until(lambda: len(st.server.registry) == 0, timeout=2)
    _assert_lifecycles(st)
    assert len(st.conn_ids()) == 9
    wait_until(lambda: abs(fd_count() - baseline) <= 2, timeout=2)
    assert abs(fd_count() - baseline) <= 2, (fd_count(), baseline)


def test_connection_states_reported_to_the_hook_match_the_registry_during_shutdown(serve):
    """While draining, the registry's counts agree with the states the hook reported."""
    started = threading.Event()
    st = serve(_mixed_app(started, hold=0.5))
    socks = keep_alive_connections(st, 2)
    slow = st.connect()
    socks.append(slow)
    try:
        slow.sendall(request_bytes("/slow"))
        assert started.wait(5)
        wait_for_state_count(st, "active", 1)
        future = st.shutdown_async(timeout=10)
        wait_until(lambda: st.call(st.server.stats)["connections"]["idle"] == 0, timeout=2)
        latest = {cid: st.states_of(cid)[-1] for cid in st.conn_ids()}
        counts = st.call(st.server.stats)["connections"]
        assert counts["active"] == sum(state is ConnState.ACTIVE for state in latest.values()) == 1
        assert counts["new"] == counts["idle"] == 0
        assert not future.done()
        assert read_raw(slow, until_closed=True).closes
        slow.close()
        assert future.result(5).clean
    finally:
        close_all(socks)
    _assert_lifecycles(st)
