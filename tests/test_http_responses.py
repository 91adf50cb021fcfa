"""Response framing and integrity, checked byte for byte on the wire.

One server serves the whole module (each test mounts its own application on a
path of its own); tests read raw bytes so that framing mistakes (a stray body
byte, a missing last chunk, an injected header) cannot hide behind a lenient
client.
"""

from __future__ import annotations

import email.utils
import itertools
import socket
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional

import pytest
import requests

from tests.helpers import ServerThread, read_response

App = Callable[[dict[str, Any], Callable[..., Any]], Any]


class Router:
    """A WSGI app that dispatches on PATH_INFO to apps the tests mount."""

    def __init__(self) -> None:
        self.routes: dict[str, App] = {"/hello": self.hello}
        self._ids = itertools.count()

    def mount(self, app: App) -> str:
        path = f"/t{next(self._ids)}"
        self.routes[path] = app
        return path

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        app = self.routes.get(environ["PATH_INFO"])
        if app is None:
            start_response("404 Not Found", [("Content-Length", "0")])
            return []
        return app(environ, start_response)

    @staticmethod
    def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ServerThread, Router]]:
    # One server for the module, shared by its tests.
    router = Router()
    with ServerThread(router) as st:
        yield st, router


class Client:
    """A raw HTTP/1.1 client socket with a read buffer."""

    def __init__(self, st: ServerThread, timeout: float = 5.0) -> None:
        self.sock = st.connect(timeout)
        self.buf = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def read_head(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """The next response head: status code, header fields in order, the raw head."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise AssertionError(f"connection closed before a complete head: {self.buf!r}")
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        version, code, _ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        fields = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields.append((name, value.strip()))
        return int(code), fields, raw + b"\r\n\r\n"

    def read_exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            if not self._fill():
                raise AssertionError(f"connection closed after {len(self.buf)} of {size} bytes")
        out, self.buf = self.buf[:size], self.buf[size:]
        return out

    def read_until_closed(self) -> bytes:
        while self._fill():
            pass
        out, self.buf = self.buf, b""
        return out

    def request(self, path: str, method: str = "GET", version: str = "1.1", extra: str = "") -> None:
        host = "Host: t\r\n" if version == "1.1" else ""
        self.send(f"{method} {path} HTTP/{version}\r\n{host}{extra}\r\n".encode("latin-1"))


def header(fields: list[tuple[str, str]], name: str) -> Optional[str]:
    values = [value for key, value in fields if key.lower() == name.lower()]
    assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
    return values[0] if values else None


def assert_still_serving(st: ServerThread) -> None:
    """A new connection gets a normal response: the server survived."""
    with Client(st) as client:
        client.request("/hello")
        code, fields, _ = client.read_head()
        assert code == 200
        assert client.read_exact(int(header(fields, "Content-Length") or -1)) == b"hello"


def fetch_closing(st: ServerThread, path: str, method: str = "GET", version: str = "1.1") -> tuple[int, list, bytes]:
    """One request; its head, and every byte after it until the server closes."""
    with Client(st) as client:
        client.request(path, method, version)
        code, fields, _ = client.read_head()
        return code, fields, client.read_until_closed()


# -- framing -------------------------------------------------------------------


def test_no_content_length_under_http11_is_chunked_and_empty_items_do_not_end_it(
    server: tuple[ServerThread, Router],
) -> None:
    st, router = server

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b""
        yield b"hello"
        yield b""
        yield b" chunked world"
        yield b""

    path = router.mount(app)
    with Client(st) as client:
        client.request(path)
        code, fields, _ = client.read_head()
        assert code == 200
        assert header(fields, "Transfer-Encoding") == "chunked"
        assert header(fields, "Content-Length") is None
        expected = b"5\r\nhello\r\ne\r\n chunked world\r\n0\r\n\r\n"
        assert client.read_exact(len(expected)) == expected
        # The connection is still usable: the body ended exactly there.
        client.request("/hello")
        assert client.read_head()[0] == 200
        assert client.read_exact(5) == b"hello"


def test_http10_without_length_ends_body_at_close(server: tuple[ServerThread, Router]) -> None:
    st, router = server

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"part one, "
        yield b"part two"

    path = router.mount(app)
    with Client(st) as client:
        # Even a keep-alive request cannot be kept alive: the close frames the body.
        client.request(path, version="1.0", extra="Connection: keep-alive\r\n")
        code, fields, _ = client.read_head()
        assert code == 200
        assert header(fields, "Content-Length") is None
        assert header(fields, "Transfer-Encoding") is None
        assert (header(fields, "Connection") or "").lower() != "keep-alive"
        assert client.read_until_closed() == b"part one, part two"
    assert_still_serving(st)


def test_one_item_list_gets_content_length(server: tuple[ServerThread, Router]) -> None:
    st, router = server

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"exactly this"]

    path = router.mount(app)
    with Client(st) as client:
        for _ in range(2):  # kept alive: the length framed it
            client.request(path)
            code, fields, _ = client.read_head()
            assert code == 200
            assert header(fields, "Content-Length") == "12"
            assert header(fields, "Transfer-Encoding") is None
            assert client.read_exact(12) == b"exactly this"


def test_head_sends_no_body_and_keeps_the_apps_content_length(server: tuple[ServerThread, Router]) -> None:
    st, router = server

    def with_length(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "13")])
        return [b"thirteen byte"]

    def streamed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"streamed "
        yield b"body"

    p1, p2 = router.mount(with_length), router.mount(streamed)
    with Client(st) as client:
        client.request(p1, method="HEAD")
        code, fields, _ = client.read_head()
        assert code == 200
        assert header(fields, "Content-Length") == "13"
        client.request(p2, method="HEAD")
        # Had any body byte been sent, this head would not parse as the next response.
        assert client.read_head()[0] == 200
        client.request("/hello")
        assert client.read_head()[0] == 200
        assert client.read_exact(5) == b"hello"


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_204_and_304_send_no_body(server: tuple[ServerThread, Router], status: str) -> None:
    st, router = server

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response(status, [("ETag", '"v1"')])
        return [b"this body must not be sent"]

    def streamed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response(status, [])
        yield b"nor this one"

    p1, p2 = router.mount(app), router.mount(streamed)
    with Client(st) as client:
        for path in (p1, p2):
            client.request(path)
            code, fields, raw = client.read_head()
            assert code == int(status[:3])
            assert header(fields, "Transfer-Encoding") is None
            assert b"must not" not in raw
        client.request("/hello")
        code, _, _ = client.read_head()
        assert code == 200
        assert client.read_exact(5) == b"hello"


def test_date_and_server_headers_are_added(server: tuple[ServerThread, Router]) -> None:
    st, _ = server
    with Client(st) as client:
        client.request("/hello")
        _, fields, _ = client.read_head()
    assert header(fields, "Server") == "gshutdown"
    date = header(fields, "Date")
    assert date is not None and date.endswith(" GMT")
    assert abs(email.utils.parsedate_to_datetime(date).timestamp() - time.time()) < 60


def test_apps_own_date_and_server_win(server: tuple[ServerThread, Router]) -> None:
    st, router = server
    date = "Tue, 15 Nov 1994 08:12:31 GMT"

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Date", date), ("Server", "my-app/2")])
        return [b"x"]

    with Client(st) as client:
        client.request(router.mount(app))
        _, fields, _ = client.read_head()
    # header() also asserts each was sent once.
    assert header(fields, "Date") == date
    assert header(fields, "Server") == "my-app/2"


def test_write_callable_mixed_with_yielded_data(server: tuple[ServerThread, Router]) -> None:
    st, router = server

    def chunked(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        write = start_response("200 OK", [])
        write(b"a")
        write(b"")
        write(b"bc")
        return iter([b"d", b"", b"ef"])

    def sized(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        write = start_response("200 OK", [("Content-Length", "9")])
        write(b"writ")
        return [b"ten!!"]

    p1, p2 = router.mount(chunked), router.mount(sized)
    with Client(st) as client:
        client.request(p1)
        code, fields, _ = client.read_head()
        assert code == 200
        assert header(fields, "Transfer-Encoding") == "chunked"
        expected = b"1\r\na\r\n2\r\nbc\r\n1\r\nd\r\n2\r\nef\r\n0\r\n\r\n"
        assert client.read_exact(len(expected)) == expected
        client.request(p2)
        code, fields, _ = client.read_head()
        assert code == 200
        assert header(fields, "Content-Length") == "9"
        assert client.read_exact(9) == b"written!!"


# -- exc_info ------------------------------------------------------------------


def test_start_response_with_exc_info_before_head_replaces_response(server: tuple[ServerThread, Router]) -> None:
    st, router = server

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("X-First", "yes"), ("Content-Length", "100")])
        try:
            raise LookupError("not there")
        except LookupError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"sorry"]

    with Client(st) as client:
        client.request(router.mount(app))
        code, fields, _ = client.read_head()
        assert code == 503
        assert header(fields, "X-First") is None
        assert header(fields, "Content-Length") == "5"
        assert client.read_exact(5) == b"sorry"


def test_start_response_with_exc_info_after_head_reraises_and_closes(server: tuple[ServerThread, Router]) -> None:
    st, router = server
    raised: list[BaseException] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"partial")
        try:
            try:
                raise KeyError("original")
            except KeyError:
                start_response("500 Internal Server Error", [], sys.exc_info())
        except BaseException as exc:
            raised.append(exc)
            raise
        return [b"never"]

    code, fields, rest = fetch_closing(st, router.mount(app))
    assert code == 200
    assert header(fields, "Transfer-Encoding") == "chunked"
    # Cut off: the chunk written, and no last chunk.
    assert rest == b"7\r\npartial\r\n"
    assert len(raised) == 1 and isinstance(raised[0], KeyError)
    assert_still_serving(st)


# -- close() of the response iterable ---------------------------------------------


class ClosingBody:
    """A response iterable that records its close() and can fail or run long."""

    def __init__(self, items: list[bytes], fail_after: Optional[int] = None, endless: bool = False) -> None:
        self.items = items
        self.fail_after = fail_after
        self.endless = endless
        self.closed = threading.Event()
        self.close_calls = 0

    def __iter__(self) -> Iterator[bytes]:
        for index, item in enumerate(self.items):
            if index == self.fail_after:
                raise RuntimeError("failed mid-iteration")
            yield item
        if self.endless:
            piece = b"x" * 65536
            for _ in range(100_000):  # bounded: 6.5 GB, never reached
                yield piece

    def close(self) -> None:
        self.close_calls += 1
        self.closed.set()


def mount_body(router: Router, body: ClosingBody) -> str:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> ClosingBody:
        start_response("200 OK", [])
        return body

    return router.mount(app)


def test_close_is_called_after_a_normal_response(server: tuple[ServerThread, Router]) -> None:
    st, router = server
    body = ClosingBody([b"one", b"two"])
    with Client(st) as client:
        client.request(mount_body(router, body))
        client.read_head()
        expected = b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
        assert client.read_exact(len(expected)) == expected
        assert body.closed.wait(5)
    assert body.close_calls == 1


def test_close_is_called_when_iteration_raises(server: tuple[ServerThread, Router]) -> None:
    st, router = server
    body = ClosingBody([b"one", b"two", b"three"], fail_after=1)
    code, _, rest = fetch_closing(st, mount_body(router, body))
    assert code == 200
    assert rest == b"3\r\none\r\n"  # closed mid-body, no last chunk
    assert body.closed.wait(5)
    assert body.close_calls == 1
    assert_still_serving(st)


def test_close_is_called_when_client_disconnects_mid_body(server: tuple[ServerThread, Router]) -> None:
    st, router = server
    body = ClosingBody([b"start"], endless=True)
    with Client(st) as client:
        client.request(mount_body(router, body))
        assert client.read_head()[0] == 200
        client.read_exact(1)
    assert body.closed.wait(10)
    assert body.close_calls == 1
    assert_still_serving(st)


# -- integrity ---------------------------------------------------------------------


def test_body_longer_than_content_length_is_cut_and_closed(server: tuple[ServerThread, Router]) -> None:
    st, router = server

    def streamed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Length", "5")])
        yield b"abc"
        yield b"defgh"
        yield b"ijk"

    def listed(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "5")])
        return [b"0123456789"]

    for app, expected in ((streamed, b"abcde"), (listed, b"01234")):
        code, fields, rest = fetch_closing(st, router.mount(app))
        assert code == 200
        assert header(fields, "Content-Length") == "5"
        assert rest == expected
    assert_still_serving(st)


def test_body_shorter_than_content_length_closes_after_the_bytes(server: tuple[ServerThread, Router]) -> None:
    st, router = server

    def streamed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Length", "10")])
        yield b"abc"

    def listed(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "10")])
        return [b"xyz"]

    for app, expected in ((streamed, b"abc"), (listed, b"xyz")):
        code, fields, rest = fetch_closing(st, router.mount(app))
        assert code == 200
        assert header(fields, "Content-Length") == "10"
        assert rest == expected
    assert_still_serving(st)


BAD_RESPONSES = {
    "name-crlf": ("200 OK", [("X-Bad\r\nEvil-Injected", "v")]),
    "name-space": ("200 OK", [("X Evil", "v")]),
    "name-colon": ("200 OK", [("X-Evil:", "v")]),
    "name-empty": ("200 OK", [("", "evil")]),
    "name-bytes": ("200 OK", [(b"X-Evil", "v")]),
    "value-crlf": ("200 OK", [("X-Ok", "v\r\nSet-Cookie: evil=1")]),
    "value-lf": ("200 OK", [("X-Ok", "v\nEvil: 1")]),
    "value-cr": ("200 OK", [("X-Ok", "v\rEvil: 1")]),
    "value-nul": ("200 OK", [("X-Ok", "v\x00evil")]),
    "value-int": ("200 OK", [("X-Evil", 5)]),
    "value-bytes": ("200 OK", [("X-Evil", b"v")]),
    "value-not-latin1": ("200 OK", [("X-Evil", "\u20ac")]),
    "not-a-pair": ("200 OK", [("X-Evil",)]),
    "content-length-text": ("200 OK", [("Content-Length", "evil")]),
    "content-length-negative": ("200 OK", [("Content-Length", "-1"), ("X-Evil", "1")]),
    # Two lengths on the wire: each client would frame the body its own way.
    "content-length-twice": ("200 OK", [("Content-Length", "4"), ("X-Evil", "1"), ("content-length", "9")]),
    "status-crlf": ("200 OK\r\nX-Evil: 1", []),
    "status-int": (200, [("X-Evil", "1")]),
    "status-no-code": ("OK", [("X-Evil", "1")]),
    "status-four-digits": ("2000 Evil", []),
    "status-leading-zero": ("099 Evil", []),
    "status-bytes": (b"200 OK", [("X-Evil", "1")]),
    "status-1xx": ("103 Early Hints", [("X-Evil", "1")]),
    "status-101-without-hijack": ("101 Switching Protocols", [("Upgrade", "evil")]),
}


@pytest.mark.parametrize("case", sorted(BAD_RESPONSES))
def test_invalid_status_or_header_gives_500_and_nothing_reaches_the_wire(
    server: tuple[ServerThread, Router], case: str
) -> None:
    st, router = server
    status, headers = BAD_RESPONSES[case]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response(status, headers)
        return [b"evil body"]

    path = router.mount(app)
    # Twice: a head is validated once and then remembered; a bad one must
    # never be remembered as good.
    for _ in range(2):
        with Client(st) as client:
            # Connection: close, so that a wrongly sent 200 does not wait out the idle timeout.
            client.request(path, extra="Connection: close\r\n")
            code, fields, raw_head = client.read_head()
            rest = client.read_until_closed()
        assert code == 500
        wire = raw_head + rest
        assert b"evil" not in wire.lower()
        assert b"set-cookie" not in wire.lower()
        assert int(header(fields, "Content-Length") or -1) == len(rest)
    assert_still_serving(st)


def test_header_pairs_given_as_lists_are_accepted(server: tuple[ServerThread, Router]) -> None:
    st, router = server

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [["X-Pair", "list"], ["Content-Length", "2"]])  # type: ignore[list-item]
        return [b"ok"]

    path = router.mount(app)
    with Client(st) as client:
        for _ in range(2):
            client.request(path)
            code, fields, _ = client.read_head()
            assert (code, header(fields, "X-Pair"), client.read_exact(2)) == (200, "list", b"ok")


@pytest.mark.parametrize("value", ["chunked", "gzip, chunked", "identity"])
def test_app_setting_transfer_encoding_gives_500(server: tuple[ServerThread, Router], value: str) -> None:
    st, router = server

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Transfer-Encoding", value)])
        return [b"5\r\nhello\r\n0\r\n\r\n"]

    code, fields, rest = fetch_closing(st, router.mount(app))
    assert code == 500
    assert header(fields, "Transfer-Encoding") is None
    assert b"hello" not in rest
    assert_still_serving(st)


def test_exception_before_head_gives_500_without_traceback(
    server: tuple[ServerThread, Router], caplog: pytest.LogCaptureFixture
) -> None:
    st, router = server

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        raise ZeroDivisionError("secret-detail-42")

    def late(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("X-Partial", "1")])  # no body yet: nothing sent
        raise ValueError("secret-detail-43")
        yield b""

    for path in (router.mount(app), router.mount(late)):
        code, fields, rest = fetch_closing(st, path)
        assert code == 500
        assert header(fields, "X-Partial") is None
        assert b"secret-detail" not in rest
        assert b"Traceback" not in rest
        assert b"Error" in rest  # "500 Internal Server Error"
    assert "secret-detail-42" in caplog.text  # logged for the operator instead
    assert_still_serving(st)


def test_connection_error_raised_by_the_app_gives_500(server: tuple[ServerThread, Router]) -> None:
    """An app's own ConnectionError (a backend is down) is a server error, not a client leaving."""
    st, router = server

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        raise ConnectionRefusedError("database at 10.0.0.5:5432 refused")

    def timing_out(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        raise TimeoutError("backend timed out")

    for path in (router.mount(app), router.mount(timing_out)):
        with Client(st) as client:
            client.request(path)
            code, _, _ = client.read_head()
            assert code == 500
            assert b"10.0.0.5" not in client.read_until_closed()
    assert_still_serving(st)


def test_exception_after_head_closes_the_connection(server: tuple[ServerThread, Router]) -> None:
    st, router = server

    def streamed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"begun"
        raise RuntimeError("secret-detail-44")

    def sized(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Length", "100")])
        yield b"begun"
        raise RuntimeError("secret-detail-45")

    code, _, rest = fetch_closing(st, router.mount(streamed))
    assert code == 200
    assert rest == b"5\r\nbegun\r\n"
    code, _, rest = fetch_closing(st, router.mount(sized))
    assert code == 200
    assert rest == b"begun"
    assert_still_serving(st)


def test_keep_alive_client_sees_the_server_serving_after_each_failure(server: tuple[ServerThread, Router]) -> None:
    """requests' pooled session keeps working across 500s."""
    st, router = server

    def failing(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        raise RuntimeError("boom")

    bad = router.mount(failing)
    with requests.Session() as session:
        for _ in range(3):
            with session.get(st.url(bad), timeout=5) as response:
                assert response.status_code == 500
            with session.get(st.url("/hello"), timeout=5) as response:
                assert (response.status_code, response.content) == (200, b"hello")


def test_read_response_helper_agrees_on_chunked_body(server: tuple[ServerThread, Router]) -> None:
    """http.client decodes our chunked framing to the same bytes the app yielded."""
    st, router = server

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        for i in range(50):
            yield str(i).encode() * (i + 1)

    expected = b"".join(str(i).encode() * (i + 1) for i in range(50))
    with socket.create_connection(st.address[:2], timeout=5) as sock:
        sock.sendall(f"GET {router.mount(app)} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        status, headers, body = read_response(sock)
    assert (status, headers["transfer-encoding"], body) == (200, "chunked", expected)
