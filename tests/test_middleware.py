"""``gshutdown.wsgi.middleware``: the access log's emitter contract, through a real server."""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

import pytest

from gshutdown.wsgi.middleware import AccessLog
from tests.helpers import ServerThread, read_response, wait_until

HEADERS = [("Content-Type", "text/plain")]


def list_body(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("201 Created", [*HEADERS, ("Content-Length", "5")])
    return [b"hello"]


def iterable_body(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    write = start_response("200 OK", list(HEADERS))
    write(b"ab")  # the legacy write() counts too
    yield b"cde"
    yield b"f"


@pytest.mark.parametrize(("app", "status", "sent"), [(list_body, "201 Created", 5), (iterable_body, "200 OK", 6)])
def test_emit_gets_the_status_line_headers_bytes_sent_and_duration(app: Any, status: str, sent: int) -> None:
    lines: list[tuple[Any, ...]] = []
    lock = threading.Lock()

    def emit(environ: dict[str, Any], status: str, headers: list[tuple[str, str]], sent: int, seconds: float) -> None:
        with lock:
            lines.append((environ["PATH_INFO"], status, headers, sent, seconds))

    with ServerThread(AccessLog(app, emit)) as server, server.connect() as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(sock)[0] == int(status[:3])
        wait_until(lambda: lines)
    [(path, logged_status, headers, logged_sent, seconds)] = lines
    assert (path, logged_status, logged_sent) == ("/x", status, sent)
    assert ("Content-Type", "text/plain") in headers
    assert 0 <= seconds < 5
