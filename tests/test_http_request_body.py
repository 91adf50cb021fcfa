"""Request bodies on a real server: framing, ``wsgi.input``, streaming, 100-continue, discard."""

from __future__ import annotations

import hashlib
import io
import select
import socket
import struct
import threading
from typing import Any, Callable

import pytest
import requests
from gevent.event import Event as GeventEvent

from gshutdown import ClientDisconnected, ConnState
from tests.helpers import hello_app, wait_until
from tests.test_http_pipelining import ResponseReader, get, post


def echo_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]


def echo_app_response(body: bytes, start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def chunked_request(path: str, pieces: list[bytes], *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Transfer-Encoding: chunked", *extra, "", ""]
    head = "\r\n".join(lines).encode("latin-1")
    return head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def test_content_length_body_reaches_the_app(serve):
    seen: list[tuple[str, bytes]] = []

    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        seen.append((environ.get("CONTENT_LENGTH", ""), body))
        return echo_app_response(body, start_response)

    st = serve(app)
    payload = bytes(range(256)) * 40
    with requests.post(st.url("/upload"), data=payload, timeout=5) as response:
        assert response.status_code == 200
        assert response.content == payload
    assert seen == [(str(len(payload)), payload)]


def test_chunked_body_with_extensions_and_trailer_is_dechunked(serve):
    seen: list[dict[str, Any]] = []

    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        seen.append({k: v for k, v in environ.items() if k.startswith(("HTTP_", "CONTENT_"))} | {"body": body})
        return echo_app_response(body, start_response)

    st = serve(app)
    request = (
        b"POST /c HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nTrailer: X-Check\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b"1;flag\r\n \r\n"
        b'5;q="quoted value";x=1\r\nworld\r\n'
        b"0;last=yes\r\nX-Check: trailer-value\r\n\r\n"
    )
    with st.connect() as sock:
        sock.sendall(request + get("/next"))
        reader = ResponseReader(sock)
        first = reader.read()
        second = reader.read()
    assert first.status == 200
    assert first.body == b"hello world"
    assert second.status == 200
    assert len(seen) == 2
    assert seen[0]["body"] == b"hello world"
    assert seen[0]["HTTP_TRANSFER_ENCODING"] == "chunked"
    assert "CONTENT_LENGTH" not in seen[0]
    assert "HTTP_X_CHECK" not in seen[0]  # trailer fields are not request headers
    assert seen[1]["body"] == b""


BODY = b"first line\nsecond\n\nthird line, longer than the others\nx\nno newline at the end"

# Each reads the whole body through one access pattern; BytesIO gives the expected result.
READERS: dict[str, Callable[[Any], list[Any]]] = {
    "read-n": lambda f: [f.read(5) for _ in range(len(BODY) // 5 + 3)],
    "read-all": lambda f: [f.read(), f.read()],
    "read-none": lambda f: [f.read(None), f.read(1)],
    "read-big": lambda f: [f.read(len(BODY) * 2), f.read(3)],
    "readline": lambda f: [f.readline() for _ in range(9)],
    "readline-limit": lambda f: [f.readline(4) for _ in range(len(BODY) // 4 + 8)],
    "readline-none": lambda f: [f.readline(None) for _ in range(8)],
    "readlines": lambda f: [f.readlines(), f.readlines()],
    "readlines-hint": lambda f: [f.readlines(15), f.readlines()],
    "iterate": lambda f: list(f),
    "mixed": lambda f: [f.read(3), f.readline(), f.readline(2), f.read(4), f.readline(100), f.readlines()],
}


@pytest.mark.parametrize("framing", ["content-length", "chunked-7", "chunked-1"])
def test_wsgi_input_methods_return_the_body_like_a_file(serve, framing):
    results: dict[str, list[Any]] = {}

    def app(environ, start_response):
        name = environ["PATH_INFO"][1:]
        results[name] = READERS[name](environ["wsgi.input"])
        return echo_app_response(b"ok", start_response)

    st = serve(app)
    with st.connect() as sock:
        reader = ResponseReader(sock)
        for name in READERS:
            if framing == "content-length":
                sock.sendall(post(f"/{name}", BODY))
            else:
                size = int(framing.rpartition("-")[2])
                pieces = [BODY[i : i + size] for i in range(0, len(BODY), size)]
                sock.sendall(chunked_request(f"/{name}", pieces))
            assert reader.read().status == 200
    for name, read in READERS.items():
        assert results[name] == read(io.BytesIO(BODY)), name


def test_large_body_is_streamed_to_the_app_not_buffered_whole(serve):
    """The app reads the start of an 8 MiB body while the client still holds back half of it."""
    total = 8 * 1024 * 1024
    first_read = threading.Event()
    pieces: list[int] = []

    def app(environ, start_response):
        stream = environ["wsgi.input"]
        digest = hashlib.sha256()
        for _ in range(total):  # bounded: at least one byte per read
            data = stream.read(65536)
            if not data:
                break
            pieces.append(len(data))
            digest.update(data)
            first_read.set()
        body = digest.hexdigest().encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    st = serve(app)
    payload = hashlib.sha256(b"seed").digest() * (total // 32)
    half = total // 2
    with st.connect(timeout=20) as sock:
        sock.sendall(b"PUT /big HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % total)
        sock.sendall(payload[:half])
        # A server that buffered the whole body first would never call the app here.
        assert first_read.wait(10), "the app got no body before the client sent all of it"
        sock.sendall(payload[half:])
        response = ResponseReader(sock, timeout=20).read()
    assert response.status == 200
    assert response.body == hashlib.sha256(payload).hexdigest().encode()
    assert sum(pieces) == total
    assert len(pieces) >= total // 65536


def test_body_sent_together_with_the_head_is_not_counted_as_head(serve):
    """A head within limits followed at once by a large body is a normal request.

    With the head limits set to nginx-like sizes, a body arriving in the same
    reads as the head must not look like an oversized head (431).
    """
    st = serve(echo_app, max_request_line=4096, max_header_bytes=8192)
    payload = b"z" * (48 * 1024)
    with st.connect() as sock:
        sock.sendall(post("/upload", payload))
        response = ResponseReader(sock).read()
    assert response.status == 200
    assert response.body == payload


def _readable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


def test_100_continue_is_sent_only_when_the_app_reads_the_body(serve):
    called = threading.Event()
    go = None  # a gevent Event, made in the server's hub below

    def app(environ, start_response):
        called.set()
        assert go.wait(10)
        return echo_app_response(environ["wsgi.input"].read(), start_response)

    st = serve(app)
    go = st.call(GeventEvent)
    with st.connect() as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n")
        assert called.wait(5)
        # The app runs but has not read: no interim response yet.
        assert not _readable(sock, 0.2)
        st.call(go.set)
        reader = ResponseReader(sock)
        interim = reader.read()
        assert interim.status == 100
        assert interim.head == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello world")
        response = reader.read()
        assert response.status == 200
        assert response.body == b"hello world"
        assert not response.closes
        # The connection is reusable.
        sock.sendall(get("/again", "Content-Length: 0"))
        assert reader.read().status == 200


def test_100_continue_is_never_sent_when_the_app_answers_without_reading(serve):
    calls: list[str] = []

    def app(environ, start_response):
        calls.append(environ["PATH_INFO"])
        start_response("413 Content Too Large", [("Content-Length", "4")])
        return [b"nope"]

    st = serve(app)
    with st.connect() as sock:
        sock.sendall(b"POST /big HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 1000000\r\n\r\n")
        reader = ResponseReader(sock)
        response = reader.read()  # the first thing on the wire is the final response
        assert response.status == 413
        assert response.body == b"nope"
        # The body was never invited, so the connection cannot carry another request.
        assert response.closes
        assert reader.at_eof()
    assert calls == ["/big"]


def test_unread_small_body_is_discarded_and_connection_stays_usable(serve):
    seen: list[tuple[str, str]] = []

    def app(environ, start_response):
        seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
        return hello_app(environ, start_response)

    st = serve(app)
    with st.connect() as sock:
        reader = ResponseReader(sock)
        sock.sendall(post("/ignored", b"GET /inside-body HTTP/1.1\r\nHost: x\r\n\r\n" * 50))
        first = reader.read()
        assert first.status == 200
        assert not first.closes
        sock.sendall(chunked_request("/ignored-chunked", [b"abc"] * 100))
        assert reader.read().status == 200
        sock.sendall(get("/after"))
        assert reader.read().status == 200
    assert seen == [("POST", "/ignored"), ("POST", "/ignored-chunked"), ("GET", "/after")]
    assert len(st.conn_ids()) == 1


def test_unread_body_over_max_discard_body_closes_the_connection_and_says_so(serve):
    """A declared body too big to discard ends the connection, announced in the response.

    Go sends ``Connection: close`` in this case; announcing keep-alive and then
    closing would make a client reuse a connection that is about to go.
    """
    seen: list[str] = []

    def app(environ, start_response):
        seen.append(environ["PATH_INFO"])
        return hello_app(environ, start_response)

    st = serve(app, max_discard_body=16 * 1024)
    with st.connect() as sock:
        sock.sendall(post("/big", b"x" * (40 * 1024)) + get("/never"))
        reader = ResponseReader(sock)
        response = reader.read()
        assert response.status == 200
        assert response.body == b"Hello, World!"
        assert reader.at_eof()
    assert seen == ["/big"]
    assert response.closes


@pytest.mark.parametrize("how", ["fin", "reset"])
def test_client_disconnect_mid_body_raises_in_app_and_server_keeps_serving(serve, how):
    errors: list[BaseException] = []
    reading = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/upload":
            reading.set()
            try:
                environ["wsgi.input"].read()
            except BaseException as exc:
                errors.append(exc)
                raise
            errors.append(AssertionError("read returned"))
        return hello_app(environ, start_response)

    st = serve(app)
    with st.connect() as other:
        # A second client, kept alive across the disconnect.
        other_reader = ResponseReader(other)
        other.sendall(get("/other"))
        assert other_reader.read().status == 200

        sock = st.connect()
        try:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            assert reading.wait(5)
            if how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            sock.close()
        wait_until(lambda: errors)
        assert type(errors[0]) is ClientDisconnected

        other.sendall(get("/other"))
        assert other_reader.read().status == 200
    with requests.get(st.url("/fresh"), timeout=5) as response:
        assert response.status_code == 200
    upload_conn = st.conn_ids()[1]
    wait_until(lambda: st.states_of(upload_conn)[-1] is ConnState.CLOSED)
