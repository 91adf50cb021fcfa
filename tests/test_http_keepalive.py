"""Persistent connections on a real server: reuse, HTTP/1.0, close, idle timeout, TCP_NODELAY."""

from __future__ import annotations

import http.client
import socket
import threading
import time

import gevent
import requests

from gshutdown import ConnState
from tests.helpers import hello_app, wait_until
from tests.test_http_pipelining import ResponseReader, get

NEW, ACTIVE, IDLE, CLOSED = ConnState.NEW, ConnState.ACTIVE, ConnState.IDLE, ConnState.CLOSED


def stream_app(environ, start_response):
    """A body of unknown length, sent in several writes."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return iter([b"part1,", b"part2"])


def test_requests_session_sends_several_requests_on_one_connection(serve):
    st = serve(hello_app)
    with requests.Session() as session:
        for _ in range(5):
            with session.get(st.url("/"), timeout=5) as response:
                assert response.status_code == 200
                assert response.content == b"Hello, World!"
                assert "close" not in response.headers.get("Connection", "")
    [conn_id] = st.conn_ids()
    wait_until(lambda: st.states_of(conn_id)[:11] == [NEW] + [ACTIVE, IDLE] * 5)


def test_raw_keep_alive_connection_serves_requests_until_client_closes(serve):
    st = serve(stream_app)
    with st.connect() as sock:
        reader = ResponseReader(sock)
        for i in range(5):
            sock.sendall(get(f"/{i}"))
            response = reader.read()
            assert response.status == 200
            assert response.body == b"part1,part2"
            assert response.headers["transfer-encoding"] == "chunked"
            assert not response.closes
    [conn_id] = st.conn_ids()
    # The client's close ends the server's side at once, not at the idle timeout (5 s).
    wait_until(lambda: st.states_of(conn_id) == [NEW] + [ACTIVE, IDLE] * 5 + [CLOSED], timeout=2.5)


def test_http_client_connection_keeps_its_socket_across_requests(serve):
    st = serve(hello_app)
    conn = http.client.HTTPConnection("127.0.0.1", st.port, timeout=5)
    try:
        socks = []
        for _ in range(3):
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.read() == b"Hello, World!"
            assert response.status == 200
            socks.append(conn.sock)
        assert socks[0] is not None
        assert all(s is socks[0] for s in socks)
    finally:
        conn.close()
    assert len(st.conn_ids()) == 1


def test_http10_request_without_keep_alive_is_answered_then_closed(serve):
    st = serve(hello_app)
    with st.connect() as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reader = ResponseReader(sock)
        response = reader.read()
        assert reader.at_eof()
    assert response.status == 200
    assert response.body == b"Hello, World!"
    assert response.headers.get("connection", "close").lower() != "keep-alive"
    [conn_id] = st.conn_ids()
    wait_until(lambda: st.states_of(conn_id) == [NEW, ACTIVE, CLOSED])


def test_http10_keep_alive_request_keeps_connection_open_and_says_so(serve):
    st = serve(hello_app)
    with st.connect() as sock:
        reader = ResponseReader(sock)
        for _ in range(3):
            sock.sendall(get("/", "Connection: keep-alive", version="1.0"))
            response = reader.read()
            assert response.status == 200
            assert response.body == b"Hello, World!"
            assert response.headers["connection"].lower() == "keep-alive"
        # Without the token, HTTP/1.0 ends the connection after the response.
        sock.sendall(get("/", version="1.0"))
        last = reader.read()
        assert last.status == 200
        assert reader.at_eof()
    assert len(st.conn_ids()) == 1


def test_http10_keep_alive_response_of_unknown_length_closes_instead(serve):
    """HTTP/1.0 has no chunked coding: a body of unknown length ends with the connection."""
    st = serve(stream_app)
    with st.connect() as sock:
        sock.sendall(get("/", "Connection: keep-alive", version="1.0"))
        reader = ResponseReader(sock)
        response = reader.read()  # read to EOF: no Content-Length
        assert reader.at_eof()
    assert response.status == 200
    assert response.body == b"part1,part2"
    assert "keep-alive" not in response.headers.get("connection", "").lower()
    assert "transfer-encoding" not in response.headers


def test_connection_close_from_client_closes_after_the_response(serve):
    st = serve(hello_app)
    for value in ("close", "Close", "foo, close"):
        with st.connect() as sock:
            sock.sendall(get("/", f"Connection: {value}"))
            reader = ResponseReader(sock)
            response = reader.read()
            assert reader.at_eof(), value
        assert response.status == 200
        assert response.body == b"Hello, World!"
        assert response.closes, value
    assert len(st.conn_ids()) == 3


def test_idle_keep_alive_connection_is_closed_after_idle_timeout(serve):
    st = serve(hello_app, idle_timeout=0.3)
    with st.connect() as sock:
        sock.sendall(get("/"))
        reader = ResponseReader(sock)
        assert reader.read().status == 200
        started = time.monotonic()
        sock.settimeout(5)
        assert sock.recv(1) == b""  # FIN, not a reset and not data
        elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 3.0
    [conn_id] = st.conn_ids()
    assert st.states_of(conn_id) == [NEW, ACTIVE, IDLE, CLOSED]


def test_connection_that_sends_nothing_is_closed_after_idle_timeout(serve):
    st = serve(hello_app, idle_timeout=0.3)
    with st.connect() as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""
        elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 3.0
    [conn_id] = st.conn_ids()
    assert st.states_of(conn_id) == [NEW, CLOSED]


def test_idle_timeout_restarts_with_every_request(serve):
    """Requests spaced below the idle timeout keep one connection alive past it."""
    st = serve(hello_app, idle_timeout=1.0)
    with st.connect() as sock:
        reader = ResponseReader(sock)
        started = time.monotonic()
        for _ in range(5):
            sock.sendall(get("/"))
            assert reader.read().status == 200
            time.sleep(0.3)  # the spacing under test, not synchronisation
        assert time.monotonic() - started > 1.0
        sock.sendall(get("/"))
        assert reader.read().status == 200
    assert len(st.conn_ids()) == 1


def test_keep_alive_disabled_by_config_closes_after_each_response(serve):
    st = serve(hello_app, keep_alive=False)
    with st.connect() as sock:
        sock.sendall(get("/") + get("/never"))
        reader = ResponseReader(sock)
        response = reader.read()
        assert reader.at_eof()
    assert response.status == 200
    assert response.closes


def test_accepted_tcp_sockets_have_nodelay_set(serve):
    st = serve(hello_app)
    with st.connect() as sock:
        sock.sendall(get("/"))
        assert ResponseReader(sock).read().status == 200
        flags = st.call(
            lambda: [c.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for c in st.server.connections]
        )
    assert len(flags) == 1
    assert flags[0] != 0


def test_many_small_multi_write_responses_do_not_stall_on_nagle(serve):
    """50 keep-alive requests whose responses take 3 writes each finish far below 50 x 40 ms."""
    st = serve(stream_app)
    conn = http.client.HTTPConnection("127.0.0.1", st.port, timeout=5)
    try:
        started = time.monotonic()
        for _ in range(50):
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.read() == b"part1,part2"
        elapsed = time.monotonic() - started
    finally:
        conn.close()
    assert len(st.conn_ids()) == 1
    assert elapsed < 1.0, f"50 requests took {elapsed:.2f} s"


BIG = b"x" * (256 * 1024)


def test_client_close_request_with_bytes_behind_it_lingers_so_the_response_is_not_reset(serve):
    # Bytes the client sent after its Connection: close request sit unread in
    # the kernel while the app runs: closing over them would send a reset and
    # could destroy the response, so the server still reads until our FIN.
    extra_sent = threading.Event()

    def app(environ, start_response):
        extra_sent.wait(10)
        gevent.sleep(0.05)  # let the extra bytes reach the server's receive queue
        start_response("200 OK", [("Content-Length", str(len(BIG)))])
        return [BIG]

    st = serve(app, linger_timeout=30)
    with st.connect() as sock:
        sock.sendall(get("/", "Connection: close"))
        wait_until(lambda: st.conn_ids() and st.states_of(st.conn_ids()[0])[-1] is ACTIVE)
        sock.sendall(b"GET /ignored HTTP/1.1\r\nHost: x\r\n\r\n")
        extra_sent.set()
        # The server has closed its side but still drains ours: a greenlet lingers.
        wait_until(lambda: st.states_of(st.conn_ids()[0])[-1] is CLOSED)
        assert st.call(lambda: len(st.server.pool)) == 1
        reader = ResponseReader(sock)
        response = reader.read()
        assert response.status == 200 and response.body == BIG
        assert reader.at_eof()
    wait_until(lambda: st.call(lambda: len(st.server.pool)) == 0, timeout=10)
