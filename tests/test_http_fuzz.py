"""Property tests against a real server: how bytes are split never matters; garbage never hurts.

One server per test function (not per example); each example uses fresh
connections. Hypothesis keeps no database here, so runs leave no files behind.
"""

from __future__ import annotations

import itertools
import logging
import socket
import time
from typing import Any, Callable, Iterator, NamedTuple
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import ServerThread, hello_app
from tests.test_http_pipelining import ResponseReader, get

FUZZ_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Essentials(NamedTuple):
    """What the application must see of a request, whatever the byte splits."""

    method: str
    path: str
    query: str
    header: str
    body: bytes


class RecordingApp:
    """Reads the whole body and records the request's essentials per connection."""

    def __init__(self) -> None:
        self.seen: dict[int, list[Essentials]] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        essentials = Essentials(
            environ["REQUEST_METHOD"],
            environ["PATH_INFO"],
            environ["QUERY_STRING"],
            environ.get("HTTP_X_FUZZ", ""),
            environ["wsgi.input"].read(),
        )
        conn_id = environ["gshutdown.connection"].id
        self.seen.setdefault(conn_id, []).append(essentials)
        body = repr(essentials).encode()
        start_response("200 OK", [("Content-Length", str(len(body))), ("X-Conn", str(conn_id))])
        return [body]


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def errors() -> Iterator[ErrorLog]:
    """Errors the server logs (an internal error would show up here)."""
    handler = ErrorLog()
    logger = logging.getLogger("gshutdown")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


# -- strategies -----------------------------------------------------------------------

SEGMENT = st.text("abcxyz019-._~", min_size=0, max_size=8) | st.sampled_from(["%20", "%2F", "%41", "%C3%A9"])
QUERY = st.text("abz09=&+-_.", max_size=20) | st.just("q=%20x&y=1")
VALUE = st.text("abcXYZ 019-_./:;,", max_size=20).map(str.strip)


@st.composite
def requests_(draw: st.DrawFn) -> tuple[bytes, Essentials]:
    """One valid request (bytes) and what the app must see of it."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    segments = draw(st.lists(SEGMENT, min_size=1, max_size=4))
    raw_path = "/" + "/".join(segments)
    query = draw(st.none() | QUERY)
    value = draw(VALUE)
    target = raw_path if query is None else f"{raw_path}?{query}"
    fields = ["Host: fuzz", f"X-Fuzz: {value}"]
    body = b""
    framed = b""
    framing = "none" if method in ("GET", "DELETE") else draw(st.sampled_from(["length", "chunked", "empty"]))
    if framing == "length":
        body = draw(st.binary(max_size=300))
        fields.append(f"Content-Length: {len(body)}")
        framed = body
    elif framing == "chunked":
        pieces = draw(st.lists(st.binary(min_size=1, max_size=60), max_size=5))
        body = b"".join(pieces)
        fields.append("Transfer-Encoding: chunked")
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    elif framing == "empty":
        fields.append("Content-Length: 0")
    request = "\r\n".join([f"{method} {target} HTTP/1.1", *fields, "", ""]).encode("latin-1") + framed
    path = unquote_to_bytes(raw_path).decode("latin-1")
    return request, Essentials(method, path, query or "", value, body)


@st.composite
def split_batches(draw: st.DrawFn) -> tuple[list[bytes], list[Essentials], bytes]:
    """A pipelined batch, the pieces it is cut into, and what the app must see."""
    batch = draw(st.lists(requests_(), min_size=1, max_size=5))
    whole = b"".join(request for request, _ in batch)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(whole) - 1)), max_size=8))))
    bounds = [0, *cuts, len(whole)]
    pieces = [whole[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    return pieces, [essentials for _, essentials in batch], whole


def send_and_read(st_: ServerThread, pieces: list[bytes], count: int) -> tuple[int, list[bytes]]:
    """Send ``pieces`` as separate segments, then read ``count`` responses."""
    with st_.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(0.001)  # let the server read each piece on its own
            sock.sendall(piece)
        responses = ResponseReader(sock).read_many(count)
    assert [r.status for r in responses] == [200] * count
    [conn_id] = {int(r.headers["x-conn"]) for r in responses}
    return conn_id, [r.body for r in responses]


def test_byte_splits_of_a_pipelined_batch_do_not_change_what_the_app_sees(serve, errors):
    app = RecordingApp()
    server = serve(app)

    @FUZZ_SETTINGS
    @given(split_batches())
    def check(case: tuple[list[bytes], list[Essentials], bytes]) -> None:
        pieces, expected, whole = case
        split_id, split_bodies = send_and_read(server, pieces, len(expected))
        whole_id, whole_bodies = send_and_read(server, [whole], len(expected))
        assert app.seen[split_id] == expected
        assert app.seen[whole_id] == expected
        assert split_bodies == whole_bodies == [repr(e).encode() for e in expected]

    check()
    assert errors.records == []


VALID = get("/valid?x=1") + b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """A valid pipelined pair with a few bytes replaced, inserted or removed."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.sampled_from([0, 9, 10, 13, 32, 58, 127, 255]) | st.integers(0, 255))
        if kind == "insert" or at == len(data):
            data.insert(at, byte)
        elif kind == "replace":
            data[at] = byte
        else:
            del data[at]
    return bytes(data)


GARBAGE = (
    st.binary(max_size=600)
    | mutated_requests()
    | st.lists(
        st.sampled_from([b"GET", b"POST", b" ", b"/", b"HTTP/1.1", b"HTTP/1.0", b"\r\n", b"\n", b":", b"Host: h"])
        | st.sampled_from([b"Content-Length: 2", b"Transfer-Encoding: chunked", b"0\r\n", b"\x00", b"\xff"]),
        max_size=20,
    ).map(b"".join)
)


def test_random_bytes_get_an_error_or_a_close_and_never_break_the_server(serve, errors):
    server = serve(hello_app)

    @FUZZ_SETTINGS
    @given(GARBAGE)
    def check(data: bytes) -> None:
        with server.connect() as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            reader = ResponseReader(sock)
            statuses = []
            for _ in range(20):  # the input holds at most a few requests
                response = reader.next_or_eof()  # a reset would raise here
                if response is None:
                    break
                statuses.append(response.status)
                assert response.status == 200 or 400 <= response.status < 500, response.head
                if response.status >= 400:
                    assert response.closes
                    assert reader.at_eof()
                    break
            else:
                raise AssertionError(f"too many responses: {statuses}")
        with server.connect() as sock:
            sock.sendall(get("/after"))
            after = ResponseReader(sock).read()
        assert after.status == 200
        assert after.body == b"Hello, World!"

    check()
    assert errors.records == []
