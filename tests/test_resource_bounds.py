"""Resource bounds on a real server: connections, slow bodies, body size, slow readers, floods.

What a server exposed to the internet needs by default: a bounded number of
connections (the rest wait in the backlog), a request body that cannot trickle
in for ever, an optional body size limit answered before the application runs,
and a connection that cannot make the server queue responses or requests
without bound however the client reads or writes.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable

import gevent
import pytest

from gshutdown import ClientDisconnected, Config, ConnState
from tests.helpers import ServerThread, hello_app, read_response, recv_until_closed, wait_until
from tests.test_http_pipelining import ResponseReader, get

# -- max_connections -----------------------------------------------------------------------


def test_max_connections_defaults_to_a_bound() -> None:
    assert Config().max_connections == 1000  # gunicorn's worker_connections


def test_connections_past_max_connections_wait_in_the_backlog_until_one_closes(
    serve: Callable[..., ServerThread],
) -> None:
    st = serve(hello_app, max_connections=2)
    first, second = st.connect(), st.connect()
    waiting = st.connect()  # completed by the kernel, not accepted
    try:
        for sock in (first, second):
            sock.sendall(get("/"))
            assert read_response(sock)[0] == 200
        waiting.sendall(get("/"))
        waiting.settimeout(0.5)
        with pytest.raises(TimeoutError):
            waiting.recv(1)  # not served while two are open
        assert st.call(lambda: len(st.server.registry)) == 2
        first.close()
        status, _, body = read_response(waiting, timeout=10)
        assert (status, body) == (200, b"Hello, World!")
        assert st.call(lambda: len(st.server.registry)) <= 2
    finally:
        for sock in (first, second, waiting):
            sock.close()


# -- min_body_rate ---------------------------------------------------------------------------


class BodyReader:
    """Reads the whole body; records what the read raised; can wait before reading."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.raised: list[BaseException] = []
        self.started_reading = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if self.delay:
            gevent.sleep(self.delay)  # the application is busy; the body waits in the kernel
        stream = environ["wsgi.input"]
        try:
            body = stream.read(int(environ.get("CONTENT_LENGTH") or 0) // 2)
            self.started_reading.set()
            body += stream.read()
        except Exception as exc:
            self.raised.append(exc)
            raise
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]


def test_a_body_trickling_in_slower_than_min_body_rate_is_cut_off(serve: Callable[..., ServerThread]) -> None:
    """One byte per 0.25 s: each wait is under read_body_timeout, but the total is bounded."""
    app = BodyReader()
    st = serve(app, read_body_timeout=0.4, min_body_rate=100.0)
    with st.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
        sock.settimeout(0.25)  # paces the trickle: a byte, then a 0.25 s wait for a reply
        received = b""
        for _ in range(40):  # 10 s at most; the allowance is 0.4 s + 0.01 s per byte
            try:
                sock.sendall(b"x")
                received = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionError:
                break
            break  # an answer, or the close
        else:
            raise AssertionError("the trickling body was never cut off")
        if received:
            received += recv_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    wait_until(lambda: app.raised)  # the answer goes out before the application hears of the cut
    assert len(app.raised) == 1 and isinstance(app.raised[0], ClientDisconnected)
    assert "min_body_rate" in str(app.raised[0])
    wait_until(lambda: st.call(lambda: len(st.server.registry)) == 0)


def test_a_body_faster_than_min_body_rate_is_read_however_long_it_takes(serve: Callable[..., ServerThread]) -> None:
    """50 bytes per 0.1 s (500 B/s) against a 100 B/s minimum: 0.8 s in all, twice the 0.4 s base."""
    app = BodyReader()
    st = serve(app, read_body_timeout=0.4, min_body_rate=100.0)
    pieces = [bytes([65 + i]) * 50 for i in range(8)]
    with st.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 400\r\n\r\n")
        sock.settimeout(0.1)  # paces the pieces
        for piece in pieces[:-1]:
            sock.sendall(piece)
            with pytest.raises(TimeoutError):
                sock.recv(1)  # no early answer, no close
        sock.sendall(pieces[-1])
        status, _, body = read_response(sock)
    assert (status, body) == (200, b"".join(pieces))
    assert app.raised == []


def test_time_the_app_spends_before_reading_does_not_count_against_the_body(
    serve: Callable[..., ServerThread],
) -> None:
    app = BodyReader(delay=0.8)  # twice read_body_timeout
    st = serve(app, read_body_timeout=0.4, min_body_rate=100.0)
    with st.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\n\r\n" + b"a" * 10)
        assert app.started_reading.wait(10)
        sock.sendall(b"b" * 10)  # the server waits for it now, briefly
        status, _, body = read_response(sock)
    assert (status, body) == (200, b"a" * 10 + b"b" * 10)
    assert app.raised == []


# -- max_body_size ---------------------------------------------------------------------------


class Echo:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        self.calls += 1
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]


@pytest.fixture
def limited(serve: Callable[..., ServerThread]) -> tuple[ServerThread, Echo]:
    app = Echo()
    return serve(app, max_body_size=100), app


def post(length: int, *extra: str) -> bytes:
    return "\r\n".join(["POST /e HTTP/1.1", "Host: t", f"Content-Length: {length}", *extra, "", ""]).encode()


def test_content_length_over_max_body_size_gets_413_before_the_app_runs(limited: tuple[ServerThread, Echo]) -> None:
    st, app = limited
    with st.connect() as sock:
        sock.sendall(post(101) + b"x" * 101)
        reader = ResponseReader(sock)
        response = reader.read()
        assert reader.at_eof()
    assert response.status == 413 and response.closes
    assert response.body.startswith(b"413 ")
    assert app.calls == 0


def test_body_at_max_body_size_is_served(limited: tuple[ServerThread, Echo]) -> None:
    st, app = limited
    with st.connect() as sock:
        sock.sendall(post(100) + b"y" * 100)
        status, _, body = read_response(sock)
    assert (status, body) == (200, b"y" * 100)
    assert app.calls == 1


def test_expect_100_continue_over_max_body_size_gets_413_and_no_100(limited: tuple[ServerThread, Echo]) -> None:
    st, app = limited
    with st.connect() as sock:
        sock.sendall(post(10_000_000, "Expect: 100-continue"))
        reader = ResponseReader(sock)
        response = reader.read()
        assert reader.at_eof()
    assert response.status == 413
    assert app.calls == 0


def test_chunked_body_over_max_body_size_gets_413_when_it_passes_the_limit(
    limited: tuple[ServerThread, Echo],
) -> None:
    st, app = limited
    with st.connect() as sock:
        sock.sendall(b"POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            sock.sendall(b"32\r\n" + b"z" * 50 + b"\r\n")  # 150 bytes in all
        sock.sendall(b"0\r\n\r\n")
        reader = ResponseReader(sock)
        response = reader.read()
        assert reader.at_eof()
    assert response.status == 413 and response.closes
    assert app.calls == 1  # the head was fine: the app ran and its read failed


# -- slow readers and floods -----------------------------------------------------------------------


def test_a_client_that_pipelines_big_responses_and_never_reads_is_closed_by_write_timeout(
    serve: Callable[..., ServerThread],
) -> None:
    """Nothing beyond the first response is produced (no queue past the socket buffer)."""
    calls: list[str] = []
    big = b"r" * (8 * 1024 * 1024)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Length", str(len(big)))])
        return [big]

    st = serve(app, write_timeout=0.5)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.connect(st.address[:2])
        sock.sendall(b"".join(get(f"/{i}") for i in range(20)))
        [conn_id] = wait_until(st.conn_ids)
        wait_until(lambda: ConnState.CLOSED in st.states_of(conn_id), timeout=15)
    finally:
        sock.close()
    assert calls == ["/0"]
    assert st.call(lambda: len(st.server.registry)) == 0


def test_a_flood_of_10000_pipelined_requests_in_one_send_is_served_in_order(serve: Callable[..., ServerThread]) -> None:
    count = 10_000

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = environ["PATH_INFO"].encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    st = serve(app)
    flood = b"".join(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(count))
    with st.connect(timeout=30) as sock:
        # Sent while the responses are read, or both sides would block on full buffers.
        sender = threading.Thread(target=sock.sendall, args=(flood,), daemon=True)
        sender.start()
        reader = ResponseReader(sock, timeout=30)
        bodies = [reader.read().body for _ in range(count)]
        sender.join(30)
    assert bodies == [b"/%d" % i for i in range(count)]
    assert len(st.conn_ids()) == 1
    with st.connect() as sock:
        sock.sendall(get("/after"))
        assert read_response(sock)[2] == b"/after"
