"""Idle connections park: no greenlet between requests, same states, same shutdown.

After a response, a connection that stays quiet gives its greenlet up and
waits on its io watcher and its idle deadline alone (issue 21, item 1). These
tests check that it does (no greenlet, nothing in the pool), that its next
request, its idle timeout, a shutdown and ``close()`` all treat it exactly as
a connection waiting on its greenlet: same transitions, FIN not RST, a
request inside the grace served with ``Connection: close``, and that a
shutdown closes parked connections from the hub, spawning no greenlet.
"""

from __future__ import annotations

import ssl
import sys
from typing import Any, Callable

from gshutdown import ConnState
from tests.helpers import ServerThread, hello_app, read_response, wait_until
from tests.shutdown_helpers import (
    close_all,
    fin_times,
    keep_alive_connections,
    read_raw,
    request_bytes,
    server_stats,
)
from tests.test_http_pipelining import ResponseReader
from tests.tls_helpers import TLSFiles, raw_after_close_notify, read_until_close_notify, tls_connect

NEW, ACTIVE, IDLE, CLOSED = ConnState.NEW, ConnState.ACTIVE, ConnState.IDLE, ConnState.CLOSED
Serve = Callable[..., ServerThread]


def connections(st: ServerThread) -> list[Any]:
    return st.call(lambda: sorted(st.server.registry.all(), key=lambda c: c.id))


def parked(st: ServerThread, conn: Any) -> bool:
    """True when ``conn`` waits with no greenlet of its own (and the pool holds none for it)."""
    return st.call(lambda: getattr(conn, "parked", False) and (conn.greenlet is None or conn.greenlet.dead))


def wait_all_parked(st: ServerThread, count: int) -> list[Any]:
    """The ``count`` live connections, once every one is parked and the pool is empty."""
    wait_until(lambda: len(connections(st)) == count and all(parked(st, c) for c in connections(st)))
    wait_until(lambda: st.call(lambda: len(st.server.pool)) == 0)
    return connections(st)


def count_spawns(st: ServerThread) -> list[Any]:
    """Record every greenlet the server spawns to resume a connection from now on."""
    spawned: list[Any] = []
    original = st.server.spawn_connection

    def spawn(conn: Any) -> Any:
        spawned.append(conn)
        return original(conn)

    st.call(setattr, st.server, "spawn_connection", spawn)
    return spawned


def test_an_idle_keep_alive_connection_holds_no_greenlet(serve: Serve) -> None:
    st = serve(hello_app)
    socks = keep_alive_connections(st, 5)
    try:
        conns = wait_all_parked(st, 5)
        # Parked, and still IDLE for the registry and the hook.
        assert st.call(lambda: st.server.registry.counts()) == {"new": 0, "active": 0, "idle": 5, "hijacked": 0}
        assert all(st.states_of(c.id) == [NEW, ACTIVE, IDLE] for c in conns)
    finally:
        close_all(socks)


def test_a_parked_connection_keeps_its_attributes_in_a_key_sharing_dict(serve: Serve) -> None:
    # Past 30 attribute names, CPython gives each instance a dict with keys of
    # its own: 1,584 bytes instead of 296, most of an idle connection's memory
    # (bench/idle_connections.py: 3.1 KiB per connection instead of 1.9).
    # State that grows the class goes in Connection.__slots__.
    st = serve(hello_app)
    socks = keep_alive_connections(st, 1)
    try:
        (conn,) = wait_all_parked(st, 1)
        size = st.call(lambda: sys.getsizeof(conn.__dict__))
        assert size < 1000, (size, sorted(vars(conn)))
    finally:
        close_all(socks)


def test_a_parked_connection_serves_its_next_requests_and_parks_again(serve: Serve) -> None:
    st = serve(hello_app)
    with st.connect() as sock:
        for round_ in range(3):
            sock.sendall(request_bytes(f"/{round_}"))
            status, headers, body = read_response(sock)
            assert (status, body) == (200, b"Hello, World!") and headers.get("connection") != "close"
            (conn,) = wait_all_parked(st, 1)
        assert st.states_of(conn.id) == [NEW, ACTIVE, IDLE] * 1 + [ACTIVE, IDLE] * 2
        assert conn.requests == 3


def test_a_parked_connection_that_the_client_closes_is_closed(serve: Serve) -> None:
    st = serve(hello_app)
    sock = keep_alive_connections(st, 1)[0]
    (conn,) = wait_all_parked(st, 1)
    sock.close()
    wait_until(lambda: st.states_of(conn.id)[-1] is CLOSED)
    assert st.states_of(conn.id) == [NEW, ACTIVE, IDLE, CLOSED]
    wait_until(lambda: st.call(lambda: len(st.server.registry)) == 0)


def test_the_idle_timeout_closes_a_parked_connection_with_fin(serve: Serve) -> None:
    st = serve(hello_app, idle_timeout=0.5)
    socks = keep_alive_connections(st, 3)
    try:
        conns = wait_all_parked(st, 3)
        fin_times(socks, 0.0, timeout=10)  # EOF on each: FIN, not a reset, not data
        for conn in conns:
            wait_until(lambda conn=conn: st.states_of(conn.id)[-1] is CLOSED)
            assert st.states_of(conn.id) == [NEW, ACTIVE, IDLE, CLOSED]
    finally:
        close_all(socks)


def test_shutdown_closes_parked_connections_from_the_hub_with_fin(serve: Serve) -> None:
    st = serve(hello_app)
    socks = keep_alive_connections(st, 20)
    try:
        wait_all_parked(st, 20)
        spawned = count_spawns(st)
        result = st.shutdown(10)
        fin_times(socks, 0.0, timeout=10)
    finally:
        close_all(socks)
    assert result.clean and result.idle_closed == 20 and not result.forced
    assert spawned == []  # no greenlet was woken or spawned per connection
    assert server_stats(st)["connections_closed"] == 20


def test_a_request_reaching_a_parked_connection_inside_the_grace_is_served_with_connection_close(
    serve: Serve,
) -> None:
    st = serve(hello_app, idle_grace=3.0)
    sock = keep_alive_connections(st, 1)[0]
    try:
        (conn,) = wait_all_parked(st, 1)
        future = st.shutdown_async(timeout=10)
        wait_until(lambda: server_stats(st)["phase"] == "draining")
        sock.sendall(request_bytes("/in-the-grace"))
        response = read_raw(sock, until_closed=True)
        result = future.result(10)
    finally:
        sock.close()
    assert response.status == 200 and response.closes, response
    assert st.states_of(conn.id) == [NEW, ACTIVE, IDLE, ACTIVE, CLOSED]
    assert result.clean


def test_close_closes_parked_connections_and_reports_them_forced(serve: Serve) -> None:
    st = serve(hello_app)
    socks = keep_alive_connections(st, 4)
    try:
        conns = wait_all_parked(st, 4)
        st.call(st.server.close)
        fin_times(socks, 0.0, timeout=10)
        result = st.shutdown(5)
    finally:
        close_all(socks)
    assert [item.state for item in result.forced] == [IDLE] * 4
    assert all(st.states_of(c.id)[-1] is CLOSED for c in conns)
    assert st.call(lambda: len(st.server.registry)) == 0


def test_disabling_keep_alive_closes_parked_connections(serve: Serve) -> None:
    st = serve(hello_app)
    socks = keep_alive_connections(st, 3)
    try:
        wait_all_parked(st, 3)
        st.call(st.server.set_keep_alives_enabled, False)
        fin_times(socks, 0.0, timeout=10)
    finally:
        close_all(socks)
    wait_until(lambda: st.call(lambda: len(st.server.registry)) == 0)


def test_tls_connections_park_and_close_with_close_notify_then_fin(serve: Serve, tls_files: TLSFiles) -> None:
    st = serve(hello_app, certfile=str(tls_files.cert), keyfile=str(tls_files.key))
    socks: list[ssl.SSLSocket] = []
    try:
        for _ in range(3):
            sock = tls_connect(tls_files, st.address)
            socks.append(sock)
            for _ in range(2):  # the second request resumes a parked TLS connection
                sock.sendall(request_bytes())
                assert read_response(sock)[0] == 200
                wait_all_parked(st, len(socks))
        result = st.shutdown(10)
        for sock in socks:
            assert read_until_close_notify(sock) == b""  # a clean TLS end, not a ragged EOF
            assert raw_after_close_notify(sock) == b""  # then FIN
    finally:
        for sock in socks:
            sock.close()
    assert result.clean and result.idle_closed == 3


def test_a_parked_connection_with_pipelined_bytes_arriving_later_serves_each(serve: Serve) -> None:
    st = serve(hello_app)
    with st.connect() as sock:
        sock.sendall(request_bytes("/1"))
        assert read_response(sock)[0] == 200
        wait_all_parked(st, 1)
        sock.sendall(request_bytes("/2") + request_bytes("/3"))
        reader = ResponseReader(sock)
        assert [reader.read().status for _ in range(2)] == [200, 200]
        wait_all_parked(st, 1)


def test_a_request_crossing_the_grace_deadline_of_a_parked_connection_is_not_reset(serve: Serve) -> None:
    """The grace ends with bytes already in the socket: they are served, not closed under."""
    st = serve(hello_app, idle_grace=0.2)
    sock = keep_alive_connections(st, 1)[0]
    try:
        (conn,) = wait_all_parked(st, 1)
        # Stop the watcher so that only the grace's deadline can see the bytes.
        st.call(conn._unwatch_parked)
        sock.sendall(request_bytes("/crossing"))
        wait_until(lambda: st.call(conn._bytes_waiting))
        assert st.call(lambda: conn.parked and conn.waiting)
        result = st.shutdown(10)
        response = read_raw(sock, until_closed=True)
    finally:
        sock.close()
    assert response.status == 200 and response.closes, response
    assert result.clean
