"""Serving greenlets are reused from one connection to the next (issue 21, item 2).

A connection that ends leaves its greenlet idle, and the next connection
accepted (or a parked one resumed) runs on it rather than on a new one. An
idle greenlet serves nothing: the pool does not count it, and a shutdown
ends it without waiting or killing.
"""

from __future__ import annotations

from typing import Any, Callable

import gevent

from gshutdown import ConnState
from tests.helpers import ServerThread, hello_app, read_response, recv_until_closed, wait_until
from tests.shutdown_helpers import request_bytes

Serve = Callable[..., ServerThread]


def serve_recording_greenlets(serve: Serve) -> tuple[ServerThread, list[Any]]:
    """A server, and the greenlet current at each of its ACTIVE transitions, in order."""
    seen: list[Any] = []

    def hook(conn: Any, state: ConnState) -> None:
        if state is ConnState.ACTIVE:
            seen.append(gevent.getcurrent())

    return serve(hello_app, conn_state=hook), seen


def close_request(st: ServerThread) -> bytes:
    with st.connect() as sock:
        sock.sendall(request_bytes("/", headers=(("Connection", "close"),)))
        return recv_until_closed(sock)


def test_connections_one_after_another_are_served_on_one_greenlet(serve: Serve) -> None:
    st, seen = serve_recording_greenlets(serve)
    for _ in range(3):
        assert close_request(st).startswith(b"HTTP/1.1 200 ")
        wait_until(lambda: st.call(lambda: len(st.server.pool)) == 0)
    assert len(seen) == 3
    assert seen[0] is seen[1] is seen[2]
    assert not seen[0].dead


def test_a_parked_connection_resumes_on_an_idle_greenlet(serve: Serve) -> None:
    st, seen = serve_recording_greenlets(serve)
    with st.connect() as sock:
        sock.sendall(request_bytes("/"))
        assert read_response(sock)[0] == 200
        wait_until(lambda: st.call(lambda: len(st.server.pool)) == 0)  # parked: its greenlet is idle
        sock.sendall(request_bytes("/"))
        assert read_response(sock)[0] == 200
    assert len(seen) == 2 and seen[0] is seen[1]


def test_a_shutdown_ends_the_idle_greenlets(serve: Serve) -> None:
    st, seen = serve_recording_greenlets(serve)
    assert close_request(st).startswith(b"HTTP/1.1 200 ")
    wait_until(lambda: st.call(lambda: len(st.server.pool)) == 0)
    assert st.call(lambda: not seen[0].dead)  # idle, uncounted, kept for the next connection
    result = st.shutdown(10)
    assert result.clean and not result.forced
    wait_until(lambda: st.call(lambda: seen[0].dead))
