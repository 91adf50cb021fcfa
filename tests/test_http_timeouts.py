"""Every per-connection timeout, against clients that stall on purpose.

Timeouts are short (0.4-0.5 s) so the module stays fast; lower bounds allow a
little timer slack and upper bounds are generous, since other test runs share
the two cores.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Iterator

from gshutdown import ClientDisconnected, ConnState
from tests.helpers import ServerThread, hello_app, read_response, recv_until_closed, wait_until

SLACK = 0.05  # timers may fire this much early, by the client's clock
LATE = 2.5  # how late a timeout may act on a loaded machine


def hello_ok(st: ServerThread) -> None:
    with st.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = read_response(sock)
    assert (status, body) == (200, b"Hello, World!")


# -- read_header_timeout ---------------------------------------------------------


def test_half_a_request_head_gets_408_after_read_header_timeout(serve: Callable[..., ServerThread]) -> None:
    called = threading.Event()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        called.set()
        return hello_app(environ, start_response)

    st = serve(app, read_header_timeout=0.4)
    with st.connect() as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n")
        started = time.monotonic()
        reply = recv_until_closed(sock, timeout=10)
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b"Connection: close\r\n" in reply
    assert 0.4 - SLACK <= elapsed < 0.4 + LATE
    assert not called.is_set()
    hello_ok(st)  # and a prompt client is still served


def test_slowloris_is_cut_at_read_header_timeout_from_its_first_byte(serve: Callable[..., ServerThread]) -> None:
    called = threading.Event()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        called.set()
        return hello_app(environ, start_response)

    timeout = 0.5
    st = serve(app, read_header_timeout=timeout)
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Padding: " + b"p" * 60 + b"\r\n\r\n"
    with st.connect() as sock:
        # Idle first (well within idle_timeout): the header clock must not run yet.
        sock.settimeout(0.3)
        try:
            early = sock.recv(1)
        except TimeoutError:
            early = None
        assert early is None, "the server answered before the first byte"
        sock.settimeout(0.1)  # each recv below also paces the trickle
        first_byte = time.monotonic()
        reply = b""
        sent = 0
        while sent < len(head):
            sock.sendall(head[sent : sent + 1])
            sent += 1
            try:
                reply = sock.recv(65536)
            except TimeoutError:
                continue
            break
        elapsed = time.monotonic() - first_byte
        reply += recv_until_closed(sock, timeout=10)
    assert sent < len(head), "the whole head trickled in without being cut"
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert timeout - SLACK <= elapsed < timeout + LATE
    assert not called.is_set()
    hello_ok(st)  # and a prompt client is still served


# -- idle_timeout ------------------------------------------------------------------


def test_idle_timeout_closes_a_new_connection_that_sends_nothing(serve: Callable[..., ServerThread]) -> None:
    st = serve(hello_app, idle_timeout=0.4)
    with st.connect() as sock:
        started = time.monotonic()
        assert recv_until_closed(sock, timeout=10) == b""  # closed without a word
        elapsed = time.monotonic() - started
    assert 0.4 - SLACK <= elapsed < 0.4 + LATE
    (conn_id,) = st.conn_ids()
    wait_until(lambda: ConnState.CLOSED in st.states_of(conn_id))
    assert st.states_of(conn_id) == [ConnState.NEW, ConnState.CLOSED]


def test_idle_timeout_closes_a_kept_alive_connection_after_its_response(serve: Callable[..., ServerThread]) -> None:
    st = serve(hello_app, idle_timeout=0.4)
    with st.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert status == 200
        assert headers.get("connection") != "close"
        started = time.monotonic()
        assert recv_until_closed(sock, timeout=10) == b""
        elapsed = time.monotonic() - started
    assert 0.4 - SLACK <= elapsed < 0.4 + LATE
    (conn_id,) = st.conn_ids()
    wait_until(lambda: ConnState.CLOSED in st.states_of(conn_id))
    assert st.states_of(conn_id) == [ConnState.NEW, ConnState.ACTIVE, ConnState.IDLE, ConnState.CLOSED]


# -- write_timeout -------------------------------------------------------------------


def test_write_timeout_closes_a_client_that_never_reads(serve: Callable[..., ServerThread]) -> None:
    piece = b"z" * 65536
    total = 4096 * len(piece)  # 256 MiB: far more than any socket buffers hold
    produced: list[int] = []
    ended = threading.Event()
    stalled_id: list[int] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        if environ["PATH_INFO"] != "/huge":
            yield from hello_app(environ, start_response)
            return
        stalled_id.append(environ["gshutdown.connection"].id)
        start_response("200 OK", [("Content-Length", str(total))])
        count = 0
        try:
            for _ in range(4096):
                yield piece
                count += 1
        finally:
            produced.append(count)
            ended.set()

    st = serve(app, write_timeout=0.5)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.settimeout(10)
        stalled.connect(st.address[:2])
        stalled.sendall(b"GET /huge HTTP/1.1\r\nHost: t\r\n\r\n")
        started = time.monotonic()
        wait_until(lambda: stalled_id)
        (conn_id,) = stalled_id
        hello_ok(st)  # served meanwhile
        wait_until(lambda: ConnState.CLOSED in st.states_of(conn_id), timeout=15)
        elapsed = time.monotonic() - started
        assert ended.wait(5)
        # Now read what was in flight: a cut-off body, then EOF.
        received = recv_until_closed(stalled, timeout=10)
    assert 0.5 - SLACK <= elapsed < 0.5 + 5
    assert st.states_of(conn_id) == [ConnState.NEW, ConnState.ACTIVE, ConnState.CLOSED]
    assert produced[0] < 4096
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert 0 < len(body) < total
    hello_ok(st)


# -- read_body_timeout -----------------------------------------------------------------


def test_stalled_body_makes_the_apps_read_raise_and_the_connection_close(
    serve: Callable[..., ServerThread],
) -> None:
    raised: list[BaseException] = []
    ids: list[int] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        ids.append(environ["gshutdown.connection"].id)
        try:
            body = environ["wsgi.input"].read()
        except Exception as exc:
            raised.append(exc)
            raise
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    timeout = 0.6
    # No minimum rate: the second half is about the per-wait bound alone
    # (tests/test_resource_bounds.py has the rate).
    st = serve(app, read_body_timeout=timeout, min_body_rate=None)
    with st.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        started = time.monotonic()
        reply = recv_until_closed(sock, timeout=10)
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n")  # answered, then closed
    assert timeout - SLACK <= elapsed < timeout + LATE
    wait_until(lambda: raised)  # the answer goes out before the application hears of the cut
    assert len(raised) == 1 and isinstance(raised[0], ClientDisconnected)
    wait_until(lambda: ConnState.CLOSED in st.states_of(ids[0]))
    assert st.states_of(ids[0]) == [ConnState.NEW, ConnState.ACTIVE, ConnState.CLOSED]

    # The timeout bounds each wait, not the whole body: a slow but steady body passes.
    with st.connect() as sock:
        sock.settimeout(0.2)  # paces the pieces below: 0.8 s in all, each wait 0.2 s
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\n\r\n")
        for piece in (b"abc", b"def", b"ghi", b"jkl"):
            try:
                early = sock.recv(1)
            except TimeoutError:
                early = b""
            assert early == b""
            sock.sendall(piece)
        status, _, body = read_response(sock)
    assert (status, body) == (200, b"abcdefghijkl")
    assert len(raised) == 1
