"""Strict HTTP/1.1 framing on a real server: what is rejected, with which status, and how.

Every malformed request gets its error status and ``Connection: close``, the
connection is then closed (FIN after the response, no reset), nothing reaches
the application, and the server keeps serving. The table of malformed requests
shares one server (the checks are sequential); tests that need their own
configuration start their own.
"""

from __future__ import annotations

import hashlib
import shutil
import ssl
import subprocess
from typing import Any, Callable, Iterator

import pytest

from gshutdown import BadRequestBody
from tests.helpers import ServerThread, hello_app
from tests.test_http_pipelining import ResponseReader, get


class Recorder:
    """An app that records each call; ``/echo`` reads the body, anything else ignores it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path != "/echo":
            self.calls.append((path, "called"))
            return hello_app(environ, start_response)
        try:
            body = environ["wsgi.input"].read()
        except Exception as exc:
            self.calls.append((path, type(exc).__name__))
            raise
        self.calls.append((path, "read"))
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[ServerThread, Recorder]]:
    app = Recorder()
    with ServerThread(app) as st:
        yield st, app


@pytest.fixture
def server(shared: tuple[ServerThread, Recorder]) -> tuple[ServerThread, Recorder]:
    st, app = shared
    app.calls.clear()
    return st, app


def assert_still_serving(st: ServerThread, app: Recorder) -> None:
    """A fresh connection still gets a normal answer (and the recorder sees it)."""
    before = len(app.calls)
    with st.connect() as sock:
        sock.sendall(get("/health"))
        response = ResponseReader(sock).read()
    assert response.status == 200
    assert response.body == b"Hello, World!"
    assert app.calls[before:] == [("/health", "called")]


def tls_client_hello() -> bytes:
    """The first bytes a TLS client sends (a real ClientHello, made in memory)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    assert hello[:1] == b"\x16"  # a TLS handshake record
    return hello


def head(*lines: str, method: str = "GET", target: str = "/x", version: str = "HTTP/1.1") -> bytes:
    return "\r\n".join([f"{method} {target} {version}", *lines, "", ""]).encode("latin-1")


def raw(request_line: bytes, *fields: bytes) -> bytes:
    return b"\r\n".join([request_line, *fields, b"", b""])


MALFORMED: dict[str, tuple[bytes, int]] = {
    "content-length-with-transfer-encoding": (
        head("Host: t", "Content-Length: 5", "Transfer-Encoding: chunked", method="POST") + b"0\r\n\r\n",
        400,
    ),
    "conflicting-content-lengths": (
        head("Host: t", "Content-Length: 5", "Content-Length: 6", method="POST") + b"hello!",
        400,
    ),
    "content-length-list": (head("Host: t", "Content-Length: 5, 6", method="POST") + b"hello!", 400),
    "negative-content-length": (head("Host: t", "Content-Length: -1", method="POST"), 400),
    "transfer-encoding-not-chunked-last": (
        head("Host: t", "Transfer-Encoding: chunked, gzip", method="POST") + b"0\r\n\r\n",
        400,
    ),
    "obs-fold": (raw(b"GET /x HTTP/1.1", b"Host: t", b"X-Folded: a", b" b"), 400),
    "obs-fold-tab": (raw(b"GET /x HTTP/1.1", b"Host: t", b"X-Folded: a", b"\tb"), 400),
    "nul-in-name": (raw(b"GET /x HTTP/1.1", b"Host: t", b"X-A\x00b: v"), 400),
    "nul-in-value": (raw(b"GET /x HTTP/1.1", b"Host: t", b"X-A: v\x00w"), 400),
    "cr-in-name": (raw(b"GET /x HTTP/1.1", b"Host: t", b"X-A\rb: v"), 400),
    "cr-in-value": (raw(b"GET /x HTTP/1.1", b"Host: t", b"X-A: v\rw"), 400),
    "lf-in-name": (raw(b"GET /x HTTP/1.1", b"Host: t", b"X-A\nb: v"), 400),
    "lf-in-value": (raw(b"GET /x HTTP/1.1", b"Host: t", b"X-A: v\nw"), 400),
    "bare-lf-line-ends": (b"GET /x HTTP/1.1\nHost: t\n\n", 400),
    "space-before-colon": (raw(b"GET /x HTTP/1.1", b"Host: t", b"X-A : v"), 400),
    "missing-colon": (raw(b"GET /x HTTP/1.1", b"Host: t", b"X-A v"), 400),
    "http-2.0-request-line": (head("Host: t", version="HTTP/2.0"), 400),
    "http-2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "http-0.9-request-line": (b"GET /x\r\n", 400),
    "http-0.9-request-line-with-blank-line": (b"GET /x\r\n\r\n", 400),
    "http-1.2": (head("Host: t", version="HTTP/1.2"), 400),
    "lowercase-version": (head("Host: t", version="http/1.1"), 400),
    "lowercase-method": (head("Host: t", method="get"), 400),
    "request-line-too-long": (head("Host: t", target="/" + "a" * 9000), 414),
    "headers-over-64-kib": (head("Host: t", *(f"X-Big-{i}: {'v' * 4000}" for i in range(20))), 431),
    "too-many-header-fields": (head("Host: t", *(f"X-F{i}: v" for i in range(100))), 431),
    "tls-client-hello": (tls_client_hello(), 400),
    "missing-host": (head(), 400),
    "two-hosts": (head("Host: a", "Host: b"), 400),
}


@pytest.mark.parametrize(("request_bytes", "status"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_request_gets_error_and_close_and_never_reaches_app(server, request_bytes, status):
    st, app = server
    with st.connect() as sock:
        sock.sendall(request_bytes)
        reader = ResponseReader(sock, timeout=3)
        response = reader.read()
        assert reader.at_eof()  # FIN after the response (a reset would raise)
    assert response.status == status
    assert response.closes
    assert response.body.startswith(str(status).encode())
    assert app.calls == []
    assert_still_serving(st, app)


def test_requests_at_the_head_limits_are_accepted(server):
    """The limits reject only what is beyond them: 100 fields and an 8190-byte target pass."""
    st, app = server
    fields = ["Host: t", *(f"X-F{i}: v" for i in range(99))]
    target = "/" + "a" * 8189
    with st.connect() as sock:
        sock.sendall(head(*fields) + head("Host: t", target=target))
        reader = ResponseReader(sock)
        responses = reader.read_many(2)
    assert [r.status for r in responses] == [200, 200]
    assert app.calls == [("/x", "called"), (target, "called")]


def test_http10_request_without_host_is_accepted(server):
    st, app = server
    with st.connect() as sock:
        sock.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        reader = ResponseReader(sock)
        response = reader.read()
        assert reader.at_eof()
    assert response.status == 200
    assert app.calls == [("/old", "called")]


def test_malformed_request_after_a_good_pipelined_one_is_answered_400_after_it(server):
    st, app = server
    with st.connect() as sock:
        sock.sendall(get("/good") + b"GARBAGE\r\n\r\n" + get("/never"))
        reader = ResponseReader(sock)
        good = reader.read()
        bad = reader.read()
        assert reader.at_eof()
    assert good.status == 200
    assert not good.closes
    assert bad.status == 400
    assert bad.closes
    assert app.calls == [("/good", "called")]


BAD_CHUNKS = {
    "non-hex-size": b"zz\r\nabc\r\n0\r\n\r\n",
    "negative-size": b"-3\r\nabc\r\n0\r\n\r\n",
    "0x-prefix": b"0x3\r\nabc\r\n0\r\n\r\n",
    "size-overflow": b"fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    "bad-size-after-good-chunk": b"3\r\nabc\r\nzz\r\nabc\r\n0\r\n\r\n",
    "data-longer-than-size": b"3\r\nabcd\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("body", BAD_CHUNKS.values(), ids=BAD_CHUNKS.keys())
def test_bad_chunked_body_read_by_app_gets_400_and_close(server, body):
    """The app's read raises ``BadRequestBody`` (no bad bytes reach it); the server answers 400."""
    st, app = server
    request = head("Host: t", "Transfer-Encoding: chunked", method="POST", target="/echo") + body
    with st.connect() as sock:
        sock.sendall(request + get("/never"))
        reader = ResponseReader(sock)
        response = reader.read()
        assert reader.at_eof()
    assert response.status == 400
    assert response.closes
    assert app.calls == [("/echo", BadRequestBody.__name__)]
    assert_still_serving(st, app)


def test_bad_chunked_body_ignored_by_app_closes_after_its_response(server):
    """The discard of an unread body finds the bad chunk: no further request is read."""
    st, app = server
    request = head("Host: t", "Transfer-Encoding: chunked", method="POST", target="/ignore") + b"zz\r\n"
    with st.connect() as sock:
        sock.sendall(request + get("/never"))
        reader = ResponseReader(sock)
        response = reader.read()
        assert reader.at_eof()
    assert response.status == 200
    assert app.calls == [("/ignore", "called")]


# -- curl ---------------------------------------------------------------------------

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


def curl(*args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    assert CURL is not None
    return subprocess.run(
        [CURL, "--silent", "--show-error", "--max-time", "10", *args],
        input=data,
        capture_output=True,
        timeout=20,
        check=True,
    )


@needs_curl
@pytest.mark.parametrize("version", ["--http1.1", "--http1.0"])
def test_curl_get_requests_share_one_connection(serve, version):
    st = serve(hello_app)
    result = curl(version, "--verbose", st.url("/a"), st.url("/b"), st.url("/c"))
    assert result.stdout == b"Hello, World!" * 3
    assert b"< HTTP/1.1 200 OK" in result.stderr
    if version == "--http1.1":
        assert len(st.conn_ids()) == 1
        assert result.stderr.count(b"Re-using existing connection") == 2
    else:  # curl sends no keep-alive request on HTTP/1.0
        assert len(st.conn_ids()) == 3


@needs_curl
@pytest.mark.parametrize(
    "args",
    [
        ("--upload-file", "-"),
        ("--header", "Transfer-Encoding: chunked", "--data-binary", "@-"),
    ],
    ids=["upload-file-stdin", "post-chunked"],
)
def test_curl_chunked_upload_reaches_app_dechunked(serve, args):
    seen: list[dict[str, str]] = []

    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        seen.append(
            {
                "method": environ["REQUEST_METHOD"],
                "te": environ.get("HTTP_TRANSFER_ENCODING", ""),
                "expect": environ.get("HTTP_EXPECT", ""),
            }
        )
        digest = hashlib.sha256(body).hexdigest().encode()
        start_response("200 OK", [("Content-Length", str(len(digest)))])
        return [digest]

    st = serve(app)
    payload = bytes(range(256)) * 2048  # 512 KiB
    result = curl("--verbose", *args, st.url("/upload"), data=payload)
    assert result.stdout == hashlib.sha256(payload).hexdigest().encode()
    assert len(seen) == 1
    assert seen[0]["te"] == "chunked"
    assert seen[0]["method"] == ("PUT" if "--upload-file" in args else "POST")
    # curl asks for 100-continue on a PUT of unknown size: it got one (no 1 s wait).
    if seen[0]["expect"] == "100-continue":
        assert b"< HTTP/1.1 100 Continue" in result.stderr
