"""The PEP 3333 environ a real server builds for real requests.

Each test sends raw bytes (so the request target and header fields are exactly
what the test says) and inspects a copy of the environ the application saw.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

import pytest

from tests.helpers import ServerThread, read_response


class EnvironRecorder:
    """A WSGI app that keeps the environ of every request it serves."""

    def __init__(self) -> None:
        self.environs: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self._lock:
            self.environs.append(dict(environ))
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    @property
    def last(self) -> dict[str, Any]:
        with self._lock:
            assert self.environs, "the application was never called"
            return self.environs[-1]


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[ServerThread, EnvironRecorder]]:
    # One server for the module, shared by its tests.
    app = EnvironRecorder()
    with ServerThread(app) as st:
        yield st, app


def exchange(st: ServerThread, raw: bytes) -> tuple[int, bytes]:
    """Send ``raw`` on a new connection; the response's status and body."""
    with st.connect() as sock:
        sock.sendall(raw)
        status, _, body = read_response(sock)
    return status, body


def get(st: ServerThread, target: str, *headers: str) -> None:
    head = f"GET {target} HTTP/1.1\r\nHost: example.test\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    status, _ = exchange(st, head.encode("latin-1"))
    assert status == 200


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/caf%C3%A9", "/caf\u00c3\u00a9", ""),
        ("/a%2Fb/c", "/a/b/c", ""),
        ("/sp%20ace?x=%20y&z=%2F", "/sp ace", "x=%20y&z=%2F"),
        ("/plain?", "/plain", ""),
        ("/?a=1&a=2", "/", "a=1&a=2"),
    ],
)
def test_path_info_is_percent_decoded_as_latin1_and_query_string_stays_raw(
    recorder: tuple[ServerThread, EnvironRecorder], target: str, path: str, query: str
) -> None:
    st, app = recorder
    get(st, target)
    assert app.last["PATH_INFO"] == path
    assert app.last["QUERY_STRING"] == query


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("http://example.test/p%20q?x=1", "/p q", "x=1"),
        ("http://example.test:8080/a/b", "/a/b", ""),
        ("http://example.test", "/", ""),
        # RFC 3986: the query may follow the authority directly (empty path).
        ("http://example.test?x=1", "/", "x=1"),
        ("http://example.test?next=/b", "/", "next=/b"),
    ],
)
def test_absolute_form_target_gives_path_and_query_only(
    recorder: tuple[ServerThread, EnvironRecorder], target: str, path: str, query: str
) -> None:
    st, app = recorder
    get(st, target)
    assert app.last["PATH_INFO"] == path
    assert app.last["QUERY_STRING"] == query


def test_request_line_fields_and_addresses(recorder: tuple[ServerThread, EnvironRecorder]) -> None:
    st, app = recorder
    status, _ = exchange(st, b"DELETE /thing HTTP/1.0\r\n\r\n")
    assert status == 200
    env = app.last
    assert env["REQUEST_METHOD"] == "DELETE"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert env["SCRIPT_NAME"] == ""
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(st.port)
    assert isinstance(env["SERVER_PORT"], str)

    with st.connect() as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = read_response(client)
        local = client.getsockname()
    assert status == 200
    assert app.last["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert app.last["REMOTE_ADDR"] == local[0]
    assert app.last["REMOTE_PORT"] == str(local[1])


def test_content_type_and_length_have_no_http_prefix(recorder: tuple[ServerThread, EnvironRecorder]) -> None:
    st, app = recorder
    status, body = exchange(
        st,
        b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 7\r\n\r\na=1&b=2",
    )
    assert (status, body) == (200, b"a=1&b=2")
    env = app.last
    assert env["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert env["CONTENT_LENGTH"] == "7"
    assert "HTTP_CONTENT_TYPE" not in env
    assert "HTTP_CONTENT_LENGTH" not in env


def test_headers_map_to_http_keys(recorder: tuple[ServerThread, EnvironRecorder]) -> None:
    st, app = recorder
    get(st, "/", "X-Request-Id: abc-123", "accept-LANGUAGE: fr", "User-Agent: probe/1.0")
    env = app.last
    assert env["HTTP_HOST"] == "example.test"
    assert env["HTTP_X_REQUEST_ID"] == "abc-123"
    assert env["HTTP_ACCEPT_LANGUAGE"] == "fr"
    assert env["HTTP_USER_AGENT"] == "probe/1.0"


def test_duplicate_headers_are_joined_with_comma_and_cookies_with_semicolon(
    recorder: tuple[ServerThread, EnvironRecorder],
) -> None:
    st, app = recorder
    get(st, "/", "Accept: text/html", "Cookie: a=1", "accept: text/plain", "Cookie: b=2", "Cookie: c=3")
    env = app.last
    assert env["HTTP_ACCEPT"] == "text/html,text/plain"
    assert env["HTTP_COOKIE"] == "a=1; b=2; c=3"


def test_header_names_with_underscore_are_dropped_and_cannot_spoof(
    recorder: tuple[ServerThread, EnvironRecorder],
) -> None:
    st, app = recorder
    get(st, "/", "X_Forwarded_For: 6.6.6.6")
    assert "HTTP_X_FORWARDED_FOR" not in app.last
    assert not any("6.6.6.6" in str(value) for value in app.last.values())

    # Before or after the real header, the underscore variant adds nothing.
    get(st, "/", "X_Forwarded_For: 6.6.6.6", "X-Forwarded-For: 10.0.0.1", "x_forwarded_for: 7.7.7.7")
    assert app.last["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"


def test_wsgi_keys(recorder: tuple[ServerThread, EnvironRecorder]) -> None:
    st, app = recorder
    get(st, "/")
    env = app.last
    assert env["wsgi.version"] == (1, 0)
    assert env["wsgi.url_scheme"] == "http"
    assert callable(env["wsgi.errors"].write)
    assert callable(env["wsgi.errors"].flush)
    assert env["wsgi.multithread"] is False
    assert env["wsgi.multiprocess"] is False
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    for method in ("read", "readline", "readlines", "__iter__"):
        assert callable(getattr(env["wsgi.input"], method))


def test_shutting_down_is_an_event_not_set_while_serving(serve: Callable[..., ServerThread]) -> None:
    seen: list[tuple[bool, bool]] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        event = environ["gshutdown.shutting_down"]
        seen.append((callable(event.wait), event.is_set()))
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    st = serve(app)
    for _ in range(2):
        with st.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[0] == 200
    assert seen == [(True, False), (True, False)]
    assert st.call(lambda: st.server.shutting_down.is_set()) is False
