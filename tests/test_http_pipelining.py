"""HTTP/1.1 pipelining on a real server: order, isolation between requests, close.

Pipelined requests are sent in one ``sendall``; the responses are read back
from the raw socket with ``ResponseReader``, which keeps whatever bytes belong
to the next response (``http.client`` would swallow them into its buffer).
``ResponseReader`` is also used by the other ``test_http_*`` files.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import gevent
import pytest
from gevent.event import Event as GeventEvent

from gshutdown import ConnState
from tests.helpers import wait_until

# -- raw response reading (shared with the other test_http_* files) -----------------


@dataclass
class RawResponse:
    """One response as read off the wire."""

    status: int
    #: Lower-case names; repeated fields joined with ", ".
    headers: dict[str, str]
    body: bytes
    head: bytes

    @property
    def closes(self) -> bool:
        """The response announces that the server closes the connection."""
        return "close" in self.headers.get("connection", "").lower()


class ResponseReader:
    """Reads responses one by one from a raw socket, keeping the bytes that follow."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0) -> None:
        sock.settimeout(timeout)
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def _until(self, sep: bytes) -> bytes:
        while True:
            end = self.buf.find(sep)
            if end >= 0:
                end += len(sep)
                out = bytes(self.buf[:end])
                del self.buf[:end]
                return out
            if not self._fill():
                raise EOFError(f"connection closed before {sep!r}; unread: {bytes(self.buf)!r}")

    def _exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            if not self._fill():
                raise EOFError(f"connection closed {size - len(self.buf)} bytes short")
        out = bytes(self.buf[:size])
        del self.buf[:size]
        return out

    def read(self, method: str = "GET") -> RawResponse:
        """The next response (an interim 1xx one is returned on its own)."""
        head = self._until(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        version, code = lines[0].split(" ", 2)[:2]
        assert version == "HTTP/1.1", lines[0]
        status = int(code)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon, f"bad header line {line!r}"
            key = name.lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if method == "HEAD" or status < 200 or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._read_chunked()
        elif "content-length" in headers:
            body = self._exact(int(headers["content-length"]))
        else:
            body = self.read_to_eof()
        return RawResponse(status, headers, body, head)

    def _read_chunked(self) -> bytes:
        parts = []
        for _ in range(100_000):
            size = int(self._until(b"\r\n").split(b";")[0], 16)
            if size == 0:
                while self._until(b"\r\n") != b"\r\n":
                    pass  # trailer fields
                return b"".join(parts)
            parts.append(self._exact(size))
            assert self._exact(2) == b"\r\n"
        raise AssertionError("too many chunks")

    def read_to_eof(self) -> bytes:
        """Everything until the server closes (raises on timeout)."""
        while self._fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_many(self, count: int, method: str = "GET") -> list[RawResponse]:
        """Up to ``count`` responses; fewer when the server closes after one."""
        out = [self.read(method)]
        while len(out) < count and not out[-1].closes:
            out.append(self.read(method))
        return out

    def next_or_eof(self, method: str = "GET") -> RawResponse | None:
        """The next response, or None when the server closed cleanly between responses."""
        if not self.buf and not self._fill():
            return None
        return self.read(method)

    def at_eof(self) -> bool:
        """True when the server closed the connection without sending anything more."""
        return self.read_to_eof() == b""


def get(path: str, *extra: str, version: str = "1.1") -> bytes:
    """A GET request as bytes, with Host and any ``extra`` header lines."""
    lines = [f"GET {path} HTTP/{version}", "Host: test", *extra, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def post(path: str, body: bytes, *extra: str) -> bytes:
    """A POST request with a Content-Length body."""
    lines = [f"POST {path} HTTP/1.1", "Host: test", f"Content-Length: {len(body)}", *extra, "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def path_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """Answers with the request's path and query."""
    body = (environ["PATH_INFO"] + "?" + environ["QUERY_STRING"]).encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


# -- tests ---------------------------------------------------------------------------


def test_pipelined_requests_in_one_send_are_answered_in_order(serve):
    seen: list[str] = []

    def app(environ, start_response):
        seen.append(environ["PATH_INFO"])
        return path_app(environ, start_response)

    st = serve(app)
    count = 50
    with st.connect() as sock:
        sock.sendall(b"".join(get(f"/r{i}") for i in range(count)))
        reader = ResponseReader(sock)
        bodies = [reader.read().body for _ in range(count)]
    assert bodies == [f"/r{i}?".encode() for i in range(count)]
    assert seen == [f"/r{i}" for i in range(count)]
    assert len(st.conn_ids()) == 1


def test_app_never_sees_next_pipelined_request_before_response_is_complete(serve):
    """A slow streamed first response ends (last chunk sent) before the app sees request 2."""
    events: list[tuple[str, str]] = []
    buffered = None  # a gevent Event, made in the server's hub below

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        events.append(("start", path))
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            try:
                if path == "/slow":
                    # The rest of the pipeline is in the kernel (or the parser) by now.
                    assert buffered.wait(5)
                    for piece in (b"one,", b"two,", b"three"):
                        gevent.sleep(0.02)
                        yield piece
                else:
                    yield path.encode()
            finally:
                events.append(("end", path))

        return body()

    st = serve(app)
    buffered = st.call(GeventEvent)
    with st.connect() as sock:
        sock.sendall(get("/slow") + get("/b") + get("/c"))
        st.call(buffered.set)
        reader = ResponseReader(sock)
        responses = [reader.read() for _ in range(3)]
        [conn_id] = st.conn_ids()
        wait_until(lambda: ConnState.IDLE in st.states_of(conn_id))
    assert [r.body for r in responses] == [b"one,two,three", b"/b", b"/c"]
    assert all(r.headers["transfer-encoding"] == "chunked" for r in responses)
    assert events == [
        ("start", "/slow"),
        ("end", "/slow"),
        ("start", "/b"),
        ("end", "/b"),
        ("start", "/c"),
        ("end", "/c"),
    ]
    # Between pipelined requests the connection never looked idle.
    assert st.states_of(conn_id)[:3] == [ConnState.NEW, ConnState.ACTIVE, ConnState.IDLE]


@pytest.mark.parametrize("reads_body", [True, False], ids=["app-reads-body", "app-ignores-body"])
def test_pipelined_requests_after_bodies_are_parsed_as_requests(serve, reads_body):
    """Bodies (Content-Length and chunked) end where framing says, read or not."""
    seen: list[tuple[str, str, str, bytes]] = []

    def app(environ, start_response):
        body = environ["wsgi.input"].read() if reads_body else b""
        seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"], body))
        return path_app(environ, start_response)

    st = serve(app)
    chunked = (
        b"POST /c HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nGET /\r\n6\r\nx HTTP\r\n0\r\n\r\n"
    )
    batch = post("/a", b"GET /smuggled HTTP/1.1\r\n\r\n") + get("/b?x=1") + chunked + get("/d")
    with st.connect() as sock:
        sock.sendall(batch)
        reader = ResponseReader(sock)
        responses = [reader.read() for _ in range(4)]
    assert [r.status for r in responses] == [200] * 4
    assert [r.body for r in responses] == [b"/a?", b"/b?x=1", b"/c?", b"/d?"]
    assert not any(r.closes for r in responses)
    bodies = [b"GET /smuggled HTTP/1.1\r\n\r\n", b"", b"GET /x HTTP", b""] if reads_body else [b""] * 4
    assert seen == [
        ("POST", "/a", "", bodies[0]),
        ("GET", "/b", "x=1", bodies[1]),
        ("POST", "/c", "", bodies[2]),
        ("GET", "/d", "", bodies[3]),
    ]


def test_pipelined_requests_after_connection_close_are_not_answered(serve):
    seen: list[str] = []

    def app(environ, start_response):
        seen.append(environ["PATH_INFO"])
        return path_app(environ, start_response)

    st = serve(app)
    with st.connect() as sock:
        sock.sendall(get("/first", "Connection: close") + get("/second") + get("/third"))
        reader = ResponseReader(sock)
        response = reader.read()
        assert reader.at_eof()
    assert response.status == 200
    assert response.body == b"/first?"
    assert response.closes
    assert seen == ["/first"]


def test_pipelined_batch_bigger_than_head_limits_is_not_an_oversized_head(serve):
    """Many small pipelined requests arriving together are each within the head limits.

    With small head limits, the bytes of complete requests received in one
    read must not count as one growing request head (431).
    """
    st = serve(path_app, max_request_line=256, max_header_bytes=1024)
    count = 100
    batch = b"".join(get(f"/item/{i}") for i in range(count))
    assert len(batch) > 2 * (256 + 1024)
    with st.connect() as sock:
        sock.sendall(batch)
        responses = ResponseReader(sock).read_many(count)
    assert [r.status for r in responses] == [200] * count
    assert [r.body for r in responses] == [f"/item/{i}?".encode() for i in range(count)]


def test_responses_to_pipelined_requests_are_complete_while_client_reads_slowly(serve):
    """Responses bigger than the socket buffers, to a pipeline, arrive whole and in order.

    The server blocks writing the first while the client is not reading yet.
    """
    size = 2 * 1024 * 1024

    def app(environ, start_response):
        fill = environ["PATH_INFO"][-1].encode()
        start_response("200 OK", [("Content-Length", str(size))])
        return [fill * size]

    st = serve(app)
    with st.connect() as sock:
        sock.sendall(get("/a") + get("/b") + get("/c"))
        reader = ResponseReader(sock)
        bodies = [reader.read().body for _ in range(3)]
    assert [len(b) for b in bodies] == [size] * 3
    assert [set(b) for b in bodies] == [{ord("a")}, {ord("b")}, {ord("c")}]


def test_pipelined_requests_from_several_clients_do_not_mix(serve):
    """Concurrent pipelining clients each get exactly their own responses, in order."""
    st = serve(path_app)
    results: dict[int, list[bytes]] = {}
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with st.connect() as sock:
                sock.sendall(b"".join(get(f"/c{n}/r{i}") for i in range(20)))
                reader = ResponseReader(sock)
                results[n] = [reader.read().body for _ in range(20)]
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert not errors
    assert results == {n: [f"/c{n}/r{i}?".encode() for i in range(20)] for n in range(5)}
    assert len(st.conn_ids()) == 5
