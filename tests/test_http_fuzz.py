"""Property tests against a real server: how bytes are split never matters; garbage never hurts.

One server per test function (not per example); each example uses fresh
connections. Hypothesis keeps no database here, so runs leave no files behind.
The last test fuzzes a server *process*, so that its descriptors and memory
can be compared with a baseline taken before the run.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import ServerThread, hello_app
from tests.process_helpers import PROBE, connect, free_port, start_gshutdown, wait_until
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


# -- a server process under random, mutated and edge-case requests, split at random points ------------

EDGE_LINES = st.sampled_from(
    [
        b"POST /echo HTTP/1.1\r\n",
        b"POST /echo HTTP/1.0\r\n",
        b"GET / HTTP/1.1\r\n",
        b"GET * HTTP/1.1\r\n",
        b"OPTIONS * HTTP/1.1\r\n",
        b"CONNECT h:1 HTTP/1.1\r\n",
        b"CONNECT /x HTTP/1.1\r\n",
        b"GET http://u@h/ HTTP/1.1\r\n",
        b"POST http://h:81/echo HTTP/1.1\r\n",
        b"\r\n",
    ]
)
EDGE_HOST = st.sampled_from([b"Host: h\r\n", b"Host: h:8080\r\n", b"Host: a b/c@d\r\n", b"Host: h:80x\r\n", b""])
EDGE_FIELDS = st.sampled_from(
    [
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Content-Length: 3\r\n",
        b"Content-Length: 99999999\r\n",
        b"Connection: upgrade\r\nUpgrade: websocket\r\n",
        b"Expect: 100-continue\r\n",
        b"Connection: close\r\n",
        b"X-Big: " + b"v" * 3000 + b"\r\n",
    ]
)
EDGE_BODY = st.sampled_from(
    [b"3\r\nabc\r\n", b"5;ext=" + b"e" * 40 + b"\r\nhello\r\n", b"0\r\n\r\n", b"0\r\nX-T: 1\r\n\r\n", b"abc", b"\r\n"]
)


@st.composite
def edge_requests(draw: st.DrawFn) -> bytes:
    """Requests built from the edge cases of tests/test_http_edge_cases.py, valid or not."""
    out = b""
    for _ in range(draw(st.integers(1, 3))):
        fields = draw(EDGE_HOST) + b"".join(draw(st.lists(EDGE_FIELDS, max_size=3, unique=True)))
        out += draw(EDGE_LINES) + fields + b"\r\n" + b"".join(draw(st.lists(EDGE_BODY, max_size=3)))
    return out


PROCESS_INPUT = requests_().map(lambda case: case[0]) | mutated_requests() | edge_requests() | st.binary(max_size=300)


@st.composite
def split_input(draw: st.DrawFn) -> list[bytes]:
    data = draw(PROCESS_INPUT)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=6))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert match
    return int(match.group(1))


def exchange_pieces(port: int, pieces: list[bytes]) -> list[int]:
    """Send ``pieces`` as separate segments, end our side, read every response: their statuses."""
    with connect(port, timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(0.001)  # let the server read each piece on its own
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server already answered an error and closed
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        reader = ResponseReader(sock, timeout=10)
        statuses = []
        for _ in range(20):
            try:
                response = reader.next_or_eof()
            except ConnectionResetError:
                break  # our unread bytes after an error response: a reset, after the response
            if response is None:
                break
            statuses.append(response.status)
            if response.status == 100:
                continue
            if response.status >= 400:
                assert response.closes, response.head
                break
        return statuses


def test_fuzzed_requests_split_at_random_points_leave_a_server_process_as_it_was(tmp_path: Path) -> None:
    """No 5xx (but the 501 RFC 9112 asks for an unknown transfer coding), no traceback, still
    serving, and open descriptors and RSS back at their baseline after the run."""
    port = free_port()
    with start_gshutdown(tmp_path / "log", "--no-monkey-patch", "--bind", f"127.0.0.1:{port}", PROBE) as server:
        for _ in range(20):  # warm up what is cached or allocated once
            assert exchange_pieces(port, [get("/")]) == [200]
        baseline_fds = open_fds(server.pid)
        baseline_rss = rss_kib(server.pid)
        seen: dict[int, int] = {}

        @settings(FUZZ_SETTINGS, max_examples=150)
        @given(split_input())
        def check(pieces: list[bytes]) -> None:
            statuses = exchange_pieces(port, pieces)
            for status in statuses:
                seen[status] = seen.get(status, 0) + 1
                if status == 501:
                    assert b"transfer-encoding" in b"".join(pieces).lower()
                else:
                    assert status in (100, 200) or 400 <= status < 500, statuses

        check()
        assert exchange_pieces(port, [get("/after")]) == [200]
        wait_until(lambda: open_fds(server.pid) <= baseline_fds)
        grown = rss_kib(server.pid) - baseline_rss
        print(
            f"\nstatuses {dict(sorted(seen.items()))}; fds {baseline_fds} -> {open_fds(server.pid)}; RSS +{grown} KiB"
        )
        assert grown < 4096, f"RSS grew by {grown} KiB"
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    log = server.log()
    assert "Traceback" not in log and "[ERROR]" not in log, log
    # The run reached the application and the error paths (counts vary with the examples drawn).
    assert seen.get(200) and any(400 <= status < 500 for status in seen), seen
