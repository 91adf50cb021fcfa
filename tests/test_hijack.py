"""``environ['gshutdown.hijack']``: the application takes the socket over.

After a hijack the server must never write to the socket, and it accounts for
it (state HIJACKED) while the handler runs, until ``force_close`` or a shutdown
closes it. When the handler returns, the server closes the socket and forgets
it, unless the application called ``detach()``: an application that hands the
socket on (to another greenlet, here to the test) and returns must detach it.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any, Callable, Iterator

import pytest

from gshutdown import ConnState
from tests.helpers import ServerThread, hello_app, read_response, recv_until_closed, wait_until

SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
UPGRADE = b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"


class HijackApp:
    """Routes: /echo (101, then echo until EOF), /keep (101, detach and keep the socket,
    return), /drop (101, wait for the peer's EOF, return without closing), /leave (101,
    return at once without closing), /late (hijack after the body started); anything else
    is hello_app."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.taken: list[tuple[Any, socket.socket, bytes]] = []  # (connection, socket, buffered)
        self.errors: list[BaseException] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ["PATH_INFO"]
        if path == "/late":
            return self.late(environ, start_response)
        if path not in ("/echo", "/keep", "/drop", "/leave"):
            return hello_app(environ, start_response)
        # A response begun but not sent does not stop a hijack; the server drops it.
        start_response("200 OK", [("X-Must-Not-Appear", "1")])
        sock, buffered = environ["gshutdown.hijack"]()
        with self.lock:
            self.taken.append((environ["gshutdown.connection"], sock, buffered))
        sock.sendall(SWITCH)
        if path == "/echo":
            if buffered:
                sock.sendall(b"buffered:" + buffered)
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                sock.sendall(data)
            sock.close()
        elif path == "/keep":
            # The test goes on using the socket after the handler returns.
            environ["gshutdown.connection"].detach()
        elif path == "/drop":  # the peer is gone, and the handler forgets to close
            while sock.recv(65536):
                pass
        return [b"a body the server must not write"]

    def late(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"started"
        try:
            environ["gshutdown.hijack"]()
        except RuntimeError as exc:
            with self.lock:
                self.errors.append(exc)
            raise

    def count(self) -> int:
        with self.lock:
            return len(self.taken)

    def taken_at(self, index: int) -> tuple[Any, socket.socket, bytes]:
        """The ``index``-th hijack, once it has happened."""
        wait_until(lambda: self.count() > index)
        with self.lock:
            return self.taken[index]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ServerThread, HijackApp]]:
    # One server for the module, shared by its tests.
    app = HijackApp()
    with ServerThread(app) as st:
        yield st, app


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = sock.recv(size - len(data))
        assert piece, f"closed after {data!r}"
        data += piece
    return data


def hello_ok(st: ServerThread) -> None:
    with st.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[0] == 200


def test_hijacked_socket_carries_raw_bytes_both_ways(server: tuple[ServerThread, HijackApp]) -> None:
    st, app = server
    n = app.count()
    with st.connect() as sock:
        sock.sendall(UPGRADE)
        assert recv_exact(sock, len(SWITCH)) == SWITCH
        for message in (b"ping", b"\x00\xffbinary\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"):
            sock.sendall(message)
            assert recv_exact(sock, len(message)) == message
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_closed(sock) == b""  # the app closed it after our EOF
    conn, _, buffered = app.taken_at(n)
    assert buffered == b""
    assert st.states_of(conn.id) == [ConnState.NEW, ConnState.ACTIVE, ConnState.HIJACKED]
    hello_ok(st)


def test_upgrade_bytes_sent_with_the_head_arrive_in_buffered(server: tuple[ServerThread, HijackApp]) -> None:
    st, app = server
    n = app.count()
    early = b"\x81\x05hello and more"
    with st.connect() as sock:
        sock.sendall(UPGRADE + early)  # one write: the server reads both at once
        assert recv_exact(sock, len(SWITCH)) == SWITCH
        assert recv_exact(sock, len(b"buffered:" + early)) == b"buffered:" + early
        sock.sendall(b"later")
        assert recv_exact(sock, 5) == b"later"
    _, _, buffered = app.taken_at(n)
    assert buffered == early


def test_server_never_writes_to_nor_closes_a_hijacked_socket(server: tuple[ServerThread, HijackApp]) -> None:
    st, app = server
    n = app.count()
    with st.connect() as sock:
        sock.sendall(UPGRADE.replace(b"/echo", b"/keep"))
        conn, hijacked, _ = app.taken_at(n)
        # The handler has returned and the connection's greenlet is over.
        wait_until(lambda: st.call(lambda: conn.greenlet.dead))
        st.call(hijacked.sendall, b"still mine")
        # Nothing between the 101 and our bytes (no 200 head, no body), and the
        # socket still works, so the server neither wrote nor closed.
        assert recv_exact(sock, len(SWITCH) + 10) == SWITCH + b"still mine"
        sock.sendall(b"client to app")
        assert st.call(lambda: recv_exact(hijacked, 13)) == b"client to app"
        assert st.states_of(conn.id) == [ConnState.NEW, ConnState.ACTIVE, ConnState.HIJACKED]
        st.call(conn.force_close)
        assert recv_until_closed(sock) == b""
    assert st.states_of(conn.id) == [ConnState.NEW, ConnState.ACTIVE, ConnState.HIJACKED]


def test_hijack_after_the_response_started_raises_and_closes(server: tuple[ServerThread, HijackApp]) -> None:
    st, app = server
    n = app.count()
    with st.connect() as sock:
        sock.sendall(b"GET /late HTTP/1.1\r\nHost: t\r\n\r\n")
        received = recv_until_closed(sock)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b"7\r\nstarted\r\n"  # cut off: no last chunk
    with app.lock:
        assert len(app.errors) == 1 and isinstance(app.errors[0], RuntimeError)
    assert app.count() == n  # nothing was handed over
    hello_ok(st)


def test_hijacked_connection_is_listed_while_its_handler_runs_until_force_close(
    server: tuple[ServerThread, HijackApp],
) -> None:
    st, app = server
    n = app.count()
    with st.connect() as sock:
        sock.sendall(UPGRADE)  # /echo: the handler runs until our EOF
        assert recv_exact(sock, len(SWITCH)) == SWITCH
        conn, _, _ = app.taken_at(n)
        assert st.call(lambda: conn in st.server.registry.in_state(ConnState.HIJACKED))
        assert st.call(lambda: conn.state) is ConnState.HIJACKED
        before = st.call(st.server.stats)
        assert before["connections"]["hijacked"] >= 1
        st.call(conn.force_close)
        assert recv_until_closed(sock) == b""
    assert st.call(lambda: conn not in st.server.connections)
    after = st.call(st.server.stats)
    assert after["connections"]["hijacked"] == before["connections"]["hijacked"] - 1
    assert after["connections_hijacked"] == before["connections_hijacked"]


def test_a_detached_socket_leaves_the_registry_at_once(server: tuple[ServerThread, HijackApp]) -> None:
    st, app = server
    n = app.count()
    with st.connect() as sock:
        sock.sendall(UPGRADE.replace(b"/echo", b"/keep"))
        assert recv_exact(sock, len(SWITCH)) == SWITCH
        conn, hijacked, _ = app.taken_at(n)
        wait_until(lambda: st.call(lambda: conn.greenlet.dead))
        assert st.call(lambda: conn not in st.server.connections)
        assert st.call(lambda: conn.state) is ConnState.HIJACKED
        st.call(hijacked.close)  # the application's to close
        assert recv_until_closed(sock) == b""


def test_a_handler_that_returns_without_closing_ends_the_connection(server: tuple[ServerThread, HijackApp]) -> None:
    st, app = server
    n = app.count()
    with st.connect() as sock:
        sock.sendall(UPGRADE.replace(b"/echo", b"/leave"))
        # The 101 the handler sent, then the end the server made when it returned.
        assert recv_until_closed(sock) == SWITCH
    conn, _, _ = app.taken_at(n)
    assert st.call(lambda: conn not in st.server.connections)
    assert st.states_of(conn.id) == [ConnState.NEW, ConnState.ACTIVE, ConnState.HIJACKED]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_hijack_handlers_that_return_without_closing_leave_nothing_open(serve: Callable[..., ServerThread]) -> None:
    """50 handlers hijack, see their peer leave, and return without closing the socket (nor
    detaching it): the server closes each one and forgets it, so no descriptor is left in
    CLOSE_WAIT, no connection is listed as hijacked, and a shutdown finds none to close."""
    count = 50
    app = HijackApp()
    st = serve(app)
    hello_ok(st)  # whatever the server opens on first use is in the baseline
    baseline = open_fds()
    clients = [st.connect() for _ in range(count)]
    try:
        for sock in clients:
            sock.sendall(UPGRADE.replace(b"/echo", b"/drop"))
        for sock in clients:
            assert recv_exact(sock, len(SWITCH)) == SWITCH
        wait_until(lambda: app.count() == count)
        assert st.call(lambda: st.server.registry.counts()["hijacked"]) == count
    finally:
        for sock in clients:
            sock.close()  # the peers leave; each handler's recv sees EOF and returns
    conns = [app.taken_at(index)[0] for index in range(count)]
    wait_until(lambda: st.call(lambda: all(conn.greenlet.dead for conn in conns)))
    assert st.call(lambda: [conn.id for conn in conns if conn.sock.fileno() != -1]) == []
    wait_until(lambda: open_fds() <= baseline)  # the server's ends of the 50 are closed
    stats = st.call(st.server.stats)
    assert stats["connections"]["hijacked"] == 0
    assert stats["connections_hijacked"] == count
    assert st.call(lambda: len(st.server.registry)) == 0
    result = st.shutdown(10)
    assert result.clean
    assert result.hijacked_closed == 0


def test_shutdown_does_not_wait_for_hijacked_sockets_and_closes_them(serve: Callable[..., ServerThread]) -> None:
    """The shutdown closes a hijacked socket whose handler still runs, and leaves a detached one open."""
    app = HijackApp()
    st = serve(app)
    with st.connect() as kept, st.connect() as echoing:
        kept.sendall(UPGRADE.replace(b"/echo", b"/keep"))
        assert recv_exact(kept, len(SWITCH)) == SWITCH
        echoing.sendall(UPGRADE)  # its handler stays blocked reading the socket
        assert recv_exact(echoing, len(SWITCH)) == SWITCH
        echoing.sendall(b"x")
        assert recv_exact(echoing, 1) == b"x"
        assert st.call(lambda: st.server.registry.counts()["hijacked"]) == 1  # /keep detached itself
        result = st.shutdown(10)
        assert recv_until_closed(echoing) == b""
        _, detached, _ = app.taken_at(0)
        st.call(detached.sendall, b"still open")
        assert recv_exact(kept, 10) == b"still open"
        st.call(detached.close)
        assert recv_until_closed(kept) == b""
    assert result.clean
    assert result.hijacked_closed == 1
    assert result.duration < 5
    assert st.call(lambda: len(st.server.registry)) == 0
    for cid in st.conn_ids():
        assert st.states_of(cid) == [ConnState.NEW, ConnState.ACTIVE, ConnState.HIJACKED]


def test_an_idle_hijacked_socket_outlives_write_timeout(serve: Callable[..., ServerThread]) -> None:
    """The socket is handed over with no timeout: how long it may stay quiet is the app's call."""
    app = HijackApp()
    st = serve(app, write_timeout=0.2)
    with st.connect(timeout=10) as sock:
        sock.sendall(UPGRADE)
        assert recv_exact(sock, len(SWITCH)) == SWITCH
        _, hijacked, _ = app.taken_at(0)
        assert st.call(hijacked.gettimeout) is None
        sock.settimeout(0.6)  # idle for three write_timeouts...
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.sendall(b"still here")  # ...and the app still echoes
        assert recv_exact(sock, 10) == b"still here"
