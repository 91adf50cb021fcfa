"""A request body cut for being too slow is answered, logged and counted.

``read_body_timeout`` bounds each wait for body bytes and ``min_body_rate``
the whole body; either can cut a body. The client then gets 408 Request
Timeout (unless the response had begun: it is cut off instead), the server
log gets one line with the bytes received and the seconds taken, the access
log a line with the status that went out, and the request counts as cut, not
served (``HTTPServer.requests_cut``, the exit line). The clients here trickle
for real, paced by their own short read timeouts.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from gshutdown import BodyTimeout
from gshutdown.wsgi.access_format import emitter
from gshutdown.wsgi.middleware import AccessLog
from tests.helpers import ServerThread, recv_until_closed, wait_until
from tests.process_helpers import connect, free_port, start_gshutdown
from tests.test_body_fairness import BodyCounter
from tests.tls_helpers import TLSFiles, read_until_close_notify, tls_connect

PROBE = "tests.apps.probe:app"
UPLOAD_HEAD = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n"


def trickle_until_answered(sock: socket.socket, pause: float = 0.1, limit: int = 100) -> bytes:
    """Send one body byte every ``pause`` seconds until the server answers or closes; what it sent."""
    sock.settimeout(pause)  # paces the trickle: a byte, then a short wait for a reply
    for _ in range(limit):
        try:
            sock.sendall(b"x")
            received = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionError:
            return b""
        return received + recv_until_closed(sock) if received else b""
    raise AssertionError(f"the trickling body was never cut ({limit} bytes sent)")


def test_a_body_cut_by_min_body_rate_gets_408_a_log_line_and_a_408_access_line(tmp_path: Path) -> None:
    """10 bytes a second against 0.5 s plus 1 s per 100 bytes: cut after about 0.6 s."""
    port = free_port()
    args = ("--access-log", "-", "--read-body-timeout", "0.5", "--min-body-rate", "100")
    with start_gshutdown(tmp_path / "log", *args, "--bind", f"127.0.0.1:{port}", PROBE) as server:
        with connect(port) as sock:
            sock.sendall(UPLOAD_HEAD)
            received = trickle_until_answered(sock)
        cut = server.wait_for_log(
            r"POST /upload HTTP/1\.1 from \('127\.0\.0\.1', \d+\): request body cut after (\d+) bytes in ([\d.]+) s:"
            r" request body slower than min_body_rate$"
        )
        server.wait_for_log(r'"POST /upload HTTP/1\.1" 408 ')
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"\r\nConnection: close\r\n" in received
    assert 0 < int(cut[1]) < 50
    assert 0.4 <= float(cut[2]) < 5  # 0.5 s at least, logged to 0.1 s; timers may fire a little early
    exit_line = server.wait_for_log(r"exit: clean after .*$")[0]
    assert "0 requests served" in exit_line and "1 requests cut" in exit_line


@pytest.fixture
def access_lines() -> Iterator[list[str]]:
    """Lines written to a logger by the Common Log Format emitter."""
    lines: list[str] = []
    logger = logging.getLogger("tests.body_cut.access")
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield lines
    logger.removeHandler(handler)


def streaming_reader(raised: list[BaseException]) -> Callable[..., Any]:
    """Begins its response, then reads the body (an echo that streams back as it goes)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"reading\n"
        try:
            environ["wsgi.input"].read()
        except BodyTimeout as exc:
            raised.append(exc)
            raise

    return app


def test_a_body_cut_after_the_response_began_is_logged_with_the_status_sent(
    serve: Callable[..., ServerThread], access_lines: list[str]
) -> None:
    raised: list[BaseException] = []
    app = AccessLog(streaming_reader(raised), emitter(None, logging.getLogger("tests.body_cut.access")))
    st = serve(app, read_body_timeout=0.3, min_body_rate=None)
    with st.connect() as sock:
        sock.sendall(UPLOAD_HEAD + b"x" * 10)  # then nothing: one wait of 0.3 s cuts it
        received = recv_until_closed(sock)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b"8\r\nreading\n\r\n"  # cut off: no last chunk, and no 408 after it
    # The output ends before the application hears of the cut.
    wait_until(lambda: access_lines)
    assert len(raised) == 1 and "timed out reading the request body" in str(raised[0])
    assert len(access_lines) == 1 and '"POST /upload HTTP/1.1" 200 ' in access_lines[0]
    assert st.call(lambda: st.server.stats()["requests_cut"]) == 1


def test_an_application_that_answers_anyway_after_a_cut_sends_nothing_more(
    serve: Callable[..., ServerThread], access_lines: list[str]
) -> None:
    """The 408 is the only response: what the application sends after catching the
    cut goes nowhere, and the access log shows the 408 the client got."""
    tried = threading.Event()

    def stubborn(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        try:
            environ["wsgi.input"].read()
        except BodyTimeout:
            tried.set()
        start_response("200 OK", [("Content-Length", "6")])
        return [b"anyway"]

    st = serve(AccessLog(stubborn, emitter(None, logging.getLogger("tests.body_cut.access"))), read_body_timeout=0.3)
    observed: list[str] = []  # what metrics count (gshutdown.process.metrics.RequestStats)
    st.call(setattr, st.server, "request_observer", lambda conn, started: observed.append(conn.response_status))
    with st.connect() as sock:
        sock.sendall(UPLOAD_HEAD + b"x" * 10)
        received = recv_until_closed(sock)
    assert tried.wait(5)
    wait_until(lambda: access_lines)
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"anyway" not in received and received.count(b"HTTP/1.1") == 1
    assert len(access_lines) == 1 and re.search(r'"POST /upload HTTP/1\.1" 408 ', access_lines[0])
    wait_until(lambda: observed)
    assert observed == ["408 Request Timeout"]
    assert st.call(lambda: st.server.stats()["requests_cut"]) == 1


def test_over_tls_the_408_ends_with_close_notify(serve: Callable[..., ServerThread], tls_files: TLSFiles) -> None:
    """The cut ends the TLS session cleanly: 408, then close_notify (not a bare FIN)."""
    st = serve(BodyCounter(), certfile=str(tls_files.cert), keyfile=str(tls_files.key), read_body_timeout=0.3)
    with tls_connect(tls_files, ("127.0.0.1", st.port)) as sock:
        sock.sendall(UPLOAD_HEAD + b"x" * 10)
        received = read_until_close_notify(sock)  # raises SSLEOFError on a bare FIN
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert st.call(lambda: st.server.stats()["requests_cut"]) == 1
