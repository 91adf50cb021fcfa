"""HTTP/1.1 edge cases (RFC 9112, RFC 9110) against a real server, byte by byte over raw sockets.

Request side: framing the server must refuse (HTTP/1.0 with Transfer-Encoding,
transfer codings it does not implement, a chunk extension that never ends),
request-target forms and Host values, an Upgrade it ignores, and empty lines
between requests. Response side: what the writer keeps out of a response
(Content-Length on 204, hop-by-hop fields from the application).
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Iterator

import pytest

from gshutdown import ConnState
from tests.helpers import ServerThread, hello_app, wait_until
from tests.test_http_pipelining import RawResponse, ResponseReader, get


class App:
    """Records each request's environ essentials; routes a few response shapes.

    ``/echo`` reads the body and returns it; ``/204``, ``/hop`` and ``/426``
    answer with fields the writer must filter; anything else is hello_app.
    """

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ["PATH_INFO"]
        record = {
            "method": environ["REQUEST_METHOD"],
            "path": path,
            "host": environ.get("HTTP_HOST"),
            "conn": environ["gshutdown.connection"].id,
        }
        self.seen.append(record)
        if path == "/echo":
            body = environ["wsgi.input"].read()
            record["body"] = body
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]
        if path == "/204":
            start_response("204 No Content", [("Content-Length", "0"), ("X-Kept", "1")])
            return [b""]
        if path == "/hop":
            start_response(
                "200 OK",
                [
                    ("Content-Length", "2"),
                    ("Keep-Alive", "timeout=99"),
                    ("Upgrade", "h2c"),
                    ("Connection", "keep-alive, X-Private"),
                    ("Proxy-Connection", "keep-alive"),
                    ("TE", "trailers"),
                    ("Trailer", "X-Checksum"),
                    ("X-Private", "end-to-end after all"),
                ],
            )
            return [b"ok"]
        if path == "/426":
            start_response("426 Upgrade Required", [("Upgrade", "websocket"), ("Content-Length", "0")])
            return [b""]
        return hello_app(environ, start_response)


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[ServerThread, App]]:
    app = App()
    with ServerThread(app) as st:
        yield st, app


@pytest.fixture
def server(shared: tuple[ServerThread, App]) -> tuple[ServerThread, App]:
    st, app = shared
    app.seen.clear()
    return st, app


def exchange(st: ServerThread, data: bytes, count: int = 1) -> tuple[list[RawResponse], bool]:
    """Send ``data`` in one write; the responses (up to ``count``) and whether the server then closed."""
    with st.connect() as sock:
        sock.sendall(data)
        reader = ResponseReader(sock, timeout=5)
        responses = reader.read_many(count)
        closed = responses[-1].closes and reader.at_eof()
    return responses, closed


def assert_refused(st: ServerThread, app: App, data: bytes, status: int) -> RawResponse:
    """``data`` gets ``status`` and a closed connection; the app never sees it; the server still serves."""
    [response], closed = exchange(st, data)
    assert response.status == status, response.head
    assert closed
    assert app.seen == []
    [after], _ = exchange(st, get("/after"))
    assert (after.status, after.body) == (200, b"Hello, World!")
    return response


# -- request framing ----------------------------------------------------------------------


def test_http10_request_with_transfer_encoding_gets_400(server: tuple[ServerThread, App]) -> None:
    """RFC 9112 6.1: the framing of an HTTP/1.0 message with Transfer-Encoding is faulty."""
    st, app = server
    request = b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    response = assert_refused(st, app, request, 400)
    assert b"Transfer-Encoding" in response.body


@pytest.mark.parametrize(
    "fields",
    [
        ["Transfer-Encoding: gzip, chunked"],
        ["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"],
        ["Transfer-Encoding: deflate,chunked"],
    ],
    ids=["one-field", "two-fields", "no-space"],
)
def test_transfer_coding_other_than_chunked_gets_501(server: tuple[ServerThread, App], fields: list[str]) -> None:
    st, app = server
    head = "\r\n".join(["POST /echo HTTP/1.1", "Host: t", *fields, "", ""]).encode()
    assert_refused(st, app, head + b"2\r\n\x1f\x8b\r\n0\r\n\r\n", 501)


def test_chunk_extension_that_never_ends_gets_400_not_431(server: tuple[ServerThread, App]) -> None:
    st, app = server
    with st.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=")
        # Enough to pass the parser's backstop (2 x (64 KiB + 8190)), in pieces.
        for _ in range(20):
            sock.sendall(b"x" * 8192)
        response = ResponseReader(sock, timeout=5).read()
    assert response.status == 400
    assert response.body.startswith(b"400 Chunk Extension")
    assert response.closes
    assert [r["path"] for r in app.seen] == ["/echo"]  # the head was fine; the body read failed
    [after], _ = exchange(st, get("/after"))
    assert after.status == 200


# -- request target and Host ----------------------------------------------------------------


def test_asterisk_form_is_refused_except_for_options(server: tuple[ServerThread, App]) -> None:
    st, app = server
    assert_refused(st, app, b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400)
    [response], _ = exchange(st, b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n")
    assert response.status == 200
    assert (app.seen[-1]["method"], app.seen[-1]["path"]) == ("OPTIONS", "*")


@pytest.mark.parametrize("value", ["a b/c@d", "user@host", "host/path", "host:80x", "[::1", "h\xe9"], ids=repr)
def test_invalid_host_gets_400(server: tuple[ServerThread, App], value: str) -> None:
    st, app = server
    assert_refused(st, app, f"GET / HTTP/1.1\r\nHost: {value}\r\n\r\n".encode("latin-1"), 400)


@pytest.mark.parametrize("value", ["example.test", "example.test:8080", "[::1]:80", "192.0.2.7", ""])
def test_valid_host_reaches_the_app(server: tuple[ServerThread, App], value: str) -> None:
    st, app = server
    [response], _ = exchange(st, f"GET / HTTP/1.1\r\nHost: {value}\r\n\r\n".encode())
    assert response.status == 200
    assert app.seen[0]["host"] == value


def test_absolute_form_target_overrides_host(server: tuple[ServerThread, App]) -> None:
    """RFC 9112 3.2.2: the target's authority, not the Host field, names the host."""
    st, app = server
    [response], _ = exchange(st, b"GET http://real.example:81/p?q=1 HTTP/1.1\r\nHost: spoofed.example\r\n\r\n")
    assert response.status == 200
    assert app.seen == [{"method": "GET", "path": "/p", "host": "real.example:81", "conn": app.seen[0]["conn"]}]


def test_absolute_form_with_userinfo_gets_400(server: tuple[ServerThread, App]) -> None:
    """RFC 9110 4.2.4: userinfo in an http(s) URI is an error."""
    st, app = server
    assert_refused(st, app, b"GET http://user:pw@real.example/ HTTP/1.1\r\nHost: real.example\r\n\r\n", 400)


def test_connect_with_an_origin_form_target_gets_400(server: tuple[ServerThread, App]) -> None:
    st, app = server
    assert_refused(st, app, b"CONNECT /x HTTP/1.1\r\nHost: t\r\n\r\n", 400)


# -- Upgrade ------------------------------------------------------------------------------------


def test_upgrade_request_with_a_chunked_body_is_served_as_an_ordinary_request(
    server: tuple[ServerThread, App],
) -> None:
    """RFC 9110 7.8: the server may ignore Upgrade; it does when the body is chunked."""
    st, app = server
    request = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    )
    responses, closed = exchange(st, request + get("/next"), count=2)
    assert [(r.status, r.body) for r in responses] == [(200, b"abcdefg"), (200, b"Hello, World!")]
    assert not closed
    assert [r["path"] for r in app.seen] == ["/echo", "/next"]
    assert app.seen[0]["body"] == b"abcdefg"
    assert app.seen[0]["conn"] == app.seen[1]["conn"]  # the same connection, kept alive


# -- empty lines between requests (RFC 9112 2.2) --------------------------------------------------


def test_empty_lines_before_and_between_requests_are_ignored(server: tuple[ServerThread, App]) -> None:
    st, app = server
    with st.connect() as sock:
        reader = ResponseReader(sock)
        sock.sendall(b"\r\n" + get("/first"))
        assert reader.read().status == 200
        sock.sendall(b"\r\n")
        sock.sendall(b"\r\n\r\n" + get("/second"))
        assert reader.read().status == 200
    assert [r["path"] for r in app.seen] == ["/first", "/second"]
    assert app.seen[0]["conn"] == app.seen[1]["conn"]


def test_empty_line_on_an_idle_connection_keeps_it_idle_until_the_idle_timeout(
    serve: Callable[..., ServerThread],
) -> None:
    """Before: the CRLF made the connection ACTIVE, so it got a 408 after read_header_timeout."""
    st = serve(hello_app, idle_timeout=0.5, read_header_timeout=30.0)
    with st.connect() as sock:
        reader = ResponseReader(sock, timeout=10)
        sock.sendall(get("/"))
        assert reader.read().status == 200
        sock.sendall(b"\r\n")
        assert reader.read_to_eof() == b""  # closed by the idle timeout: nothing sent
    [conn_id] = st.conn_ids()
    wait_until(lambda: st.states_of(conn_id)[-1] is ConnState.CLOSED)
    assert st.states_of(conn_id) == [ConnState.NEW, ConnState.ACTIVE, ConnState.IDLE, ConnState.CLOSED]


def test_empty_line_on_an_idle_connection_does_not_hold_up_shutdown(serve: Callable[..., ServerThread]) -> None:
    """Before: shutdown waited out read_header_timeout for it, and the client got a 408."""
    st = serve(hello_app, read_header_timeout=5.0)
    with st.connect() as sock:
        reader = ResponseReader(sock)
        sock.sendall(get("/"))
        assert reader.read().status == 200
        [conn_id] = st.conn_ids()
        wait_until(lambda: st.states_of(conn_id)[-1] is ConnState.IDLE)
        # Read by the server before the shutdown starts or during its grace:
        # either way the connection must stay idle and close within the grace.
        sock.sendall(b"\r\n")
        result = st.shutdown(10)
        assert reader.read_to_eof() == b""
    assert result.clean
    assert result.duration < 2.0, result
    assert st.states_of(conn_id) == [ConnState.NEW, ConnState.ACTIVE, ConnState.IDLE, ConnState.CLOSED]


# -- the response writer ------------------------------------------------------------------------


def test_204_never_carries_content_length(server: tuple[ServerThread, App]) -> None:
    """RFC 9110 8.6: no Content-Length in a 204, even when the application sets one."""
    st, _ = server
    responses, _ = exchange(st, get("/204") + get("/after"), count=2)
    assert responses[0].status == 204
    assert "content-length" not in responses[0].headers
    assert responses[0].headers["x-kept"] == "1"
    assert (responses[1].status, responses[1].body) == (200, b"Hello, World!")


def test_hop_by_hop_fields_from_the_app_are_dropped(server: tuple[ServerThread, App]) -> None:
    st, _ = server
    responses, closed = exchange(st, get("/hop") + get("/after"), count=2)
    hop = responses[0]
    assert (hop.status, hop.body) == (200, b"ok")
    for name in ("keep-alive", "upgrade", "proxy-connection", "te", "trailer", "connection"):
        assert name not in hop.headers, hop.head
    assert hop.headers["x-private"] == "end-to-end after all"
    assert responses[1].status == 200 and not closed


def test_426_keeps_its_upgrade_field_and_names_it_in_connection(server: tuple[ServerThread, App]) -> None:
    """RFC 9110 15.5.22: a 426 must carry Upgrade, which is hop-by-hop (so listed in Connection)."""
    st, _ = server
    responses, _ = exchange(st, get("/426") + get("/after"), count=2)
    assert responses[0].status == 426
    assert responses[0].headers["upgrade"] == "websocket"
    assert responses[0].headers["connection"] == "upgrade"
    assert responses[1].status == 200


def test_426_to_a_closing_request_says_close_and_upgrade(server: tuple[ServerThread, App]) -> None:
    st, _ = server
    with st.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(get("/426", "Connection: close"))
        reader = ResponseReader(sock)
        response = reader.read()
        assert reader.at_eof()
    assert response.headers["connection"] == "close, upgrade"
