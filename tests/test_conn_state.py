"""The exact sequence of connection states the ``conn_state`` hook sees.

Each test finds its connection's id through the registry (by the client's own
address), drives the client, waits for a terminal state, and then compares
the whole sequence, so a missing, extra or repeated state fails.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, Callable, Iterator

import pytest
import requests

from gshutdown import ClientDisconnected, ConnState
from tests.helpers import ServerThread, hello_app, read_response, recv_until_closed, wait_until

NEW, ACTIVE, IDLE, HIJACKED, CLOSED = (
    ConnState.NEW,
    ConnState.ACTIVE,
    ConnState.IDLE,
    ConnState.HIJACKED,
    ConnState.CLOSED,
)
GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


class App:
    """hello_app, plus a body-reading route and a hijacking route."""

    def __init__(self) -> None:
        self.body_errors: list[BaseException] = []
        self.hijacked: list[Any] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path == "/upload":
            try:
                body = environ["wsgi.input"].read()
            except Exception as exc:
                with self.lock:
                    self.body_errors.append(exc)
                raise
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]
        if path == "/hijack":
            sock, _ = environ["gshutdown.hijack"]()
            with self.lock:
                self.hijacked.append(environ["gshutdown.connection"])
            sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
            sock.close()
            return []
        return hello_app(environ, start_response)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ServerThread, App]]:
    # One server for the module, shared by its tests.
    app = App()
    with ServerThread(app) as st:
        yield st, app


def conn_id_of(st: ServerThread, client: socket.socket) -> int:
    """The server's id for the connection ``client`` opened."""
    local = client.getsockname()[:2]

    def find() -> Any:
        return next((c.id for c in st.server.registry.all() if c.peer[:2] == local), None)

    return wait_until(lambda: st.call(find))


def final_states(st: ServerThread, conn_id: int) -> list[ConnState]:
    """The connection's states, once it reached a terminal one."""
    wait_until(lambda: any(state.terminal for state in st.states_of(conn_id)))
    return st.states_of(conn_id)


def get_ok(sock: socket.socket) -> None:
    sock.sendall(GET)
    status, _, body = read_response(sock)
    assert (status, body) == (200, b"Hello, World!")


def test_one_request_then_client_close(server: tuple[ServerThread, App]) -> None:
    st, _ = server
    with st.connect() as sock:
        cid = conn_id_of(st, sock)
        get_ok(sock)
    assert final_states(st, cid) == [NEW, ACTIVE, IDLE, CLOSED]


def test_keep_alive_of_three_requests(server: tuple[ServerThread, App]) -> None:
    st, _ = server
    with st.connect() as sock:
        cid = conn_id_of(st, sock)
        for _ in range(3):
            get_ok(sock)
    assert final_states(st, cid) == [NEW, ACTIVE, IDLE, ACTIVE, IDLE, ACTIVE, IDLE, CLOSED]


def test_two_pipelined_requests_stay_active_between_them(server: tuple[ServerThread, App]) -> None:
    st, _ = server
    with st.connect() as sock:
        cid = conn_id_of(st, sock)
        sock.sendall(GET + GET)
        # Raw reads: http.client's buffered reader could swallow the second response.
        received = b""
        while received.count(b"Hello, World!") < 2:
            data = sock.recv(65536)
            assert data, f"closed after {received!r}"
            received += data
        assert received.count(b"HTTP/1.1 200 OK\r\n") == 2
        assert received.endswith(b"Hello, World!")
    assert final_states(st, cid) == [NEW, ACTIVE, IDLE, CLOSED]


def test_malformed_request(server: tuple[ServerThread, App]) -> None:
    st, _ = server
    with st.connect() as sock:
        cid = conn_id_of(st, sock)
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert recv_until_closed(sock).startswith(b"HTTP/1.1 400 ")
    assert final_states(st, cid) == [NEW, ACTIVE, CLOSED]


def test_client_disconnecting_mid_body(server: tuple[ServerThread, App]) -> None:
    st, app = server
    with st.connect() as sock:
        cid = conn_id_of(st, sock)
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nonly a part")
        wait_until(lambda: st.states_of(cid)[-1] is ACTIVE)
    assert final_states(st, cid) == [NEW, ACTIVE, CLOSED]
    with app.lock:
        assert isinstance(app.body_errors[-1], ClientDisconnected)


def test_hijacked_connection_is_never_closed_by_the_server(server: tuple[ServerThread, App]) -> None:
    st, app = server
    with st.connect() as sock:
        cid = conn_id_of(st, sock)
        sock.sendall(b"GET /hijack HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n")
        assert recv_until_closed(sock).startswith(b"HTTP/1.1 101 ")
    assert final_states(st, cid) == [NEW, ACTIVE, HIJACKED]
    conn = next(c for c in app.hijacked if c.id == cid)
    # Once its greenlet is done and it is force-closed, nothing more can happen to it.
    wait_until(lambda: st.call(lambda: conn.greenlet.dead))
    st.call(conn.force_close)
    assert st.call(lambda: conn not in st.server.registry.all())
    assert st.states_of(cid) == [NEW, ACTIVE, HIJACKED]


def test_connection_closed_without_sending_anything(server: tuple[ServerThread, App]) -> None:
    st, _ = server
    with st.connect() as sock:
        cid = conn_id_of(st, sock)
    assert final_states(st, cid) == [NEW, CLOSED]


def test_every_connection_ends_in_exactly_one_terminal_state(serve: Callable[..., ServerThread]) -> None:
    app = App()
    st = serve(app, idle_timeout=0.3, read_header_timeout=0.3)
    with st.connect() as sock:  # served, then closed by the client
        get_ok(sock)
    with st.connect() as sock:  # closed by the server: Connection: close
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert recv_until_closed(sock).startswith(b"HTTP/1.1 200 ")
    with st.connect() as sock:  # HTTP/1.0, closed by the server
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert recv_until_closed(sock).startswith(b"HTTP/1.1 200 ")
    with st.connect() as sock:  # idle timeout
        assert recv_until_closed(sock) == b""
    with st.connect() as sock:  # read_header_timeout
        sock.sendall(b"GET / HTTP/1.1\r\n")
        assert recv_until_closed(sock).startswith(b"HTTP/1.1 408 ")
    with st.connect() as sock:  # malformed
        sock.sendall(b"\x00\x01\x02\r\n\r\n")
        assert recv_until_closed(sock).startswith(b"HTTP/1.1 400 ")
    with st.connect() as sock:  # hijacked
        sock.sendall(b"GET /hijack HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n")
        assert recv_until_closed(sock).startswith(b"HTTP/1.1 101 ")
    idle = st.connect()
    try:
        get_ok(idle)  # still idle when the shutdown starts
        result = st.shutdown(5)
        assert recv_until_closed(idle) == b""
    finally:
        idle.close()
    assert result.clean
    ids = st.conn_ids()
    assert len(ids) == 8
    for cid in ids:
        states = st.states_of(cid)
        assert states[0] is NEW
        assert [s for s in states if s.terminal] == [states[-1]], f"connection {cid}: {states}"
    assert st.call(lambda: len(st.server.registry)) == 0


def test_a_raising_hook_is_logged_and_the_request_still_succeeds(
    serve: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    def bad_hook(conn: Any, state: ConnState) -> None:
        raise RuntimeError(f"hook exploded on {state.name}")

    caplog.set_level(logging.ERROR, logger="gshutdown")
    st = serve(hello_app, conn_state=bad_hook)
    with requests.Session() as session:
        for _ in range(2):
            with session.get(st.url(), timeout=5) as response:
                assert (response.status_code, response.content) == (200, b"Hello, World!")
    (cid,) = st.conn_ids()
    # The second response went out before its connection turned IDLE: wait for that.
    wait_until(lambda: st.states_of(cid).count(IDLE) == 2)
    records = [r for r in caplog.records if r.name == "gshutdown" and "conn_state hook failed" in r.getMessage()]
    assert records and all(r.exc_info is not None for r in records)
    assert "hook exploded on NEW" in caplog.text
    assert "hook exploded on ACTIVE" in caplog.text
    # The registry kept track regardless of the hook.
    assert st.states_of(cid) == [NEW, ACTIVE, IDLE, ACTIVE, IDLE]
    assert st.call(lambda: st.server.registry.counts()["idle"]) == 1


def test_registry_is_keyed_per_socket_not_per_local_address(serve: Callable[..., ServerThread]) -> None:
    st = serve(hello_app)
    clients = [st.connect() for _ in range(20)]
    try:
        for sock in clients:
            get_ok(sock)
        wait_until(lambda: st.call(lambda: st.server.registry.counts()["idle"]) == 20)
        counts = st.call(lambda: st.server.registry.counts())
        assert counts == {"new": 0, "active": 0, "idle": 20, "hijacked": 0}
        local_addresses = st.call(lambda: {c.sock.getsockname() for c in st.server.registry.all()})
        assert len(local_addresses) == 1  # one shared local address, twenty entries
        stats = st.call(st.server.stats)
        assert stats["connections"]["idle"] == 20
        assert stats["requests"] == 20
        assert stats["phase"] == "serving"
    finally:
        for sock in clients:
            sock.close()
    wait_until(lambda: st.call(lambda: len(st.server.registry)) == 0)
    assert st.call(st.server.stats)["connections_closed"] == 20


def test_one_byte_of_the_next_request_makes_an_idle_connection_active(serve: Callable[..., ServerThread]) -> None:
    """golang/go#65802: a connection with part of a request received is ACTIVE, not IDLE."""
    st = serve(hello_app)
    with st.connect() as sock:
        cid = conn_id_of(st, sock)
        get_ok(sock)
        wait_until(lambda: st.states_of(cid)[-1] is IDLE)
        sock.sendall(GET[:1])
        wait_until(lambda: st.call(lambda: st.server.registry.counts()["active"]) == 1)
        assert st.call(lambda: st.server.registry.counts()["idle"]) == 0
        assert st.states_of(cid) == [NEW, ACTIVE, IDLE, ACTIVE]
        # So a shutdown starting now waits for this request instead of closing under it.
        pending = st.shutdown_async(5)
        wait_until(lambda: st.call(lambda: st.server.shutdown_started))
        sock.sendall(GET[1:])
        status, headers, body = read_response(sock)
        assert (status, body) == (200, b"Hello, World!")
        assert headers["connection"] == "close"
        assert recv_until_closed(sock) == b""
    result = pending.result(10)
    assert result.clean and not result.forced
    assert st.states_of(cid) == [NEW, ACTIVE, IDLE, ACTIVE, CLOSED]
