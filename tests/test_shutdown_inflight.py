"""Shutdown with work in flight: it finishes, whole, and shutdown() returns right after."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import gevent
import pytest

from tests.helpers import hello_app
from tests.shutdown_helpers import (
    EOF,
    close_all,
    decode_chunked,
    fin_times,
    has_fin,
    joined,
    keep_alive_connections,
    on_drain,
    read_raw,
    recv_all,
    request_bytes,
    run_in_thread,
    wait_for_state_count,
)


def _slow_app(seconds: float, started: threading.Event, ended: list[float]):
    """``/slow`` sleeps ``seconds``, then records the time just before returning its body."""

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/slow":
            return hello_app(environ, start_response)
        started.set()
        gevent.sleep(seconds)
        body = b"slow body " * 100
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        ended.append(time.monotonic())
        return [body]

    return app


def test_inflight_request_completes_with_connection_close_and_shutdown_returns_right_after(serve):
    """A 2 s request gets its whole body with Connection: close; idle connections are closed
    meanwhile (well before 2 s); shutdown() returns within 50 ms of the request's end."""
    started, ended = threading.Event(), []
    st = serve(_slow_app(2.0, started, ended))
    idle = keep_alive_connections(st, 5)
    busy = st.connect()
    try:
        busy.sendall(request_bytes("/slow"))
        assert started.wait(5)
        began = time.monotonic()
        future = st.shutdown_async()
        completed: list[float] = []
        future.add_done_callback(lambda _: completed.append(time.monotonic()))
        idle_fins = fin_times(idle, began, timeout=5.0)
        assert not future.done(), "shutdown returned while a request was in flight"
        response = read_raw(busy, timeout=10, until_closed=True)
        busy.close()  # as a client does on EOF
        result = future.result(5)
    finally:
        close_all([*idle, busy])
    assert max(idle_fins) < 0.5, f"idle connections closed after {max(idle_fins):.3f} s"
    assert response.complete and response.ending == EOF
    assert response.status == 200 and response.body == b"slow body " * 100
    assert response.closes
    assert result.clean and result.forced == ()
    lag = completed[0] - ended[0]
    print(f"\nlast request end -> shutdown() returned: {lag * 1000:.1f} ms (duration {result.duration:.3f} s)")
    assert 0 <= lag < 0.05, f"shutdown() returned {lag * 1000:.0f} ms after the last request ended"


def test_shutdown_is_not_held_up_by_idle_clients_that_keep_their_end_open(serve):
    """Pooled clients (urllib3, requests.Session) notice a server's FIN only when they next
    use the connection. Holding such idle sockets must not delay shutdown() past the end
    of the last request: it still returns within 50 ms of it."""
    started, ended = threading.Event(), []
    st = serve(_slow_app(0.6, started, ended))
    pooled = keep_alive_connections(st, 5)
    busy = st.connect()
    try:
        busy.sendall(request_bytes("/slow"))
        assert started.wait(5)
        future = st.shutdown_async()
        completed: list[float] = []
        future.add_done_callback(lambda _: completed.append(time.monotonic()))
        for sock in pooled:  # the FIN is there, the pool has not looked yet
            assert has_fin(sock, timeout=0.5)
        response = read_raw(busy, timeout=10, until_closed=True)
        busy.close()
        result = future.result(5)
    finally:
        close_all([*pooled, busy])
    assert response.complete and response.closes
    assert result.clean
    lag = completed[0] - ended[0]
    assert 0 <= lag < 0.05, f"shutdown() returned {lag * 1000:.0f} ms after the last request ended"


def test_streaming_chunked_response_in_flight_gets_every_chunk_and_the_terminating_chunk(serve):
    """A generator yielding over ~1 s keeps streaming through a shutdown, to its last chunk."""
    parts = [b"part-%02d;" % i for i in range(10)]

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        for index, part in enumerate(parts):
            if index:
                gevent.sleep(0.1)
            yield part

    st = serve(app)
    sock = st.connect()
    try:
        sock.sendall(request_bytes("/stream"))
        sock.settimeout(5)
        head = b""
        while b"part-00;" not in head:  # the head and the first chunk are on the wire
            data = sock.recv(4096)
            assert data, "connection closed before the first chunk"
            head += data
        future = st.shutdown_async()
        rest, ending = recv_all(sock, timeout=10)
        sock.close()
        result = future.result(5)
    finally:
        sock.close()
    raw = head + rest
    assert ending == EOF
    assert raw.startswith(b"HTTP/1.1 200 ")
    head_part, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head_part.lower()
    assert decode_chunked(body) == parts
    assert result.clean
    assert result.duration > 0.5, "shutdown returned before the stream ended"


@pytest.mark.parametrize("reused", [False, True], ids=["fresh", "kept-alive"])
def test_half_received_request_head_is_completed_and_served_with_connection_close(serve, reused):
    """A request whose head is half in when shutdown starts is served (Connection: close)
    when the client finishes it, even well past the idle grace period."""
    st = serve(hello_app)
    (sock,) = keep_alive_connections(st, 1) if reused else [st.connect()]
    try:
        head = request_bytes("/")
        sock.sendall(head[:20])
        wait_for_state_count(st, "active", 1)
        began = on_drain(st)
        future = st.shutdown_async(timeout=10)
        assert began.wait(5)
        time.sleep(0.3)  # a slow client: three times the idle grace
        assert not future.done()
        sock.sendall(head[20:])
        response = read_raw(sock, until_closed=True)
        result = future.result(5)
    finally:
        sock.close()
    assert response.complete and response.status == 200 and response.body == b"Hello, World!"
    assert response.closes and response.ending == EOF
    assert result.clean


def test_half_received_request_head_never_finished_gets_408_after_read_header_timeout(serve):
    """A client that stops mid-head is answered 408 at read_header_timeout, not dropped."""
    st = serve(hello_app, read_header_timeout=1.0)
    sock = st.connect()
    try:
        sock.sendall(request_bytes("/")[:20])
        first_byte = time.monotonic()
        wait_for_state_count(st, "active", 1)
        future = st.shutdown_async(timeout=10)
        response = read_raw(sock, timeout=5, until_closed=True)
        answered = time.monotonic() - first_byte
        result = future.result(5)
    finally:
        sock.close()
    assert response.status == 408 and response.closes and response.ending == EOF
    assert 0.9 <= answered < 1.6, f"408 after {answered:.3f} s"
    assert result.clean and result.forced == ()


def test_large_upload_in_progress_completes_with_the_right_answer(serve):
    """20 MiB sent in pieces, shutdown starting after the first MiB: the app reads all
    of it and its answer (the body's sha256) arrives, with Connection: close."""
    total = 20 * 1024 * 1024
    payload = os.urandom(1024 * 1024)
    read_so_far = [0]

    def app(environ, start_response):
        digest = hashlib.sha256()
        stream = environ["wsgi.input"]
        while True:
            data = stream.read(65536)
            if not data:
                break
            digest.update(data)
            read_so_far[0] += len(data)
        body = digest.hexdigest().encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    st = serve(app)
    began = on_drain(st)
    read_at_shutdown: list[int] = []
    st.call(st.server.register_on_shutdown, lambda: read_at_shutdown.append(read_so_far[0]), phase="drain")
    expected = hashlib.sha256()
    for _ in range(total // len(payload)):
        expected.update(payload)
    sock = st.connect(timeout=30)
    try:
        sock.sendall(request_bytes("/upload", method="POST", headers=(("Content-Length", str(total)),)))

        def upload():
            for piece in range(total // len(payload)):
                if piece == 1:
                    assert began.wait(5), "shutdown did not start"
                sock.sendall(payload)

        sender, out = run_in_thread(upload)
        wait_for_state_count(st, "active", 1)
        future = st.shutdown_async(timeout=30)
        joined(sender, out, timeout=30)
        response = read_raw(sock, timeout=30, until_closed=True)
        result = future.result(30)
    finally:
        sock.close()
    assert read_at_shutdown and read_at_shutdown[0] < total, "shutdown did not start mid-upload"
    assert response.status == 200 and response.body == expected.hexdigest().encode()
    assert response.closes and response.ending == EOF
    assert read_so_far[0] == total
    assert result.clean
