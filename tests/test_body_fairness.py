"""A fast chunked body cannot take the server over: bounded work per byte, and turns for others.

A client that sends a body faster than the server parses it never makes its
connection wait, and a wait was the only place a connection let the others
run. Reading a body now gives the hub a turn every so many bytes or chunks,
and a body of tiny chunks (the costly kind: each chunk costs three parser
callbacks) is refused with 400 past an allowance. How much latency the
uploads add to another client is measured by ``bench/body_fairness.py``;
these tests check the behaviour by order of events, not by time.
"""

from __future__ import annotations

import http.client
import socket
from typing import Any, Callable

from gevent.event import Event as GEvent

from gshutdown import BadRequestBody
from gshutdown.protocol.parser import DEFAULT_MIN_AVERAGE_CHUNK_SIZE, FREE_CHUNKS
from tests.helpers import ServerThread, hello_app, read_response, recv_until_closed

CHUNKED_HEAD = b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def chunks(size: int, count: int) -> bytes:
    return (b"%x\r\n" % size + b"d" * size + b"\r\n") * count


class BodyCounter:
    """/upload reads the body and answers its length; anything else is hello_app."""

    def __init__(self) -> None:
        self.raised: list[BaseException] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["PATH_INFO"] != "/upload":
            return hello_app(environ, start_response)
        try:
            body = environ["wsgi.input"].read()
        except Exception as exc:
            self.raised.append(exc)
            raise
        answer = str(len(body)).encode()
        start_response("200 OK", [("Content-Length", str(len(answer)))])
        return [answer]


def test_a_body_of_1_byte_chunks_past_the_allowance_gets_400_and_a_close(serve: Callable[..., ServerThread]) -> None:
    app = BodyCounter()
    st = serve(app)
    with st.connect() as sock:
        sock.sendall(CHUNKED_HEAD + chunks(1, 2 * FREE_CHUNKS) + LAST_CHUNK)
        received = recv_until_closed(sock)  # ...and the server closes
    assert received.startswith(b"HTTP/1.1 400 Chunks Too Small\r\n")
    assert b"\r\nConnection: close\r\n" in received
    assert len(app.raised) == 1 and isinstance(app.raised[0], BadRequestBody)


def test_a_chunked_body_of_small_but_reasonable_chunks_is_read_whole(serve: Callable[..., ServerThread]) -> None:
    """http.client sends each item of an iterable body as one chunk: 6,000 lines of 100 bytes
    (a CSV streamed line by line), and 6,000 chunks of the minimum average size."""
    st = serve(BodyCounter())
    for size in (100, DEFAULT_MIN_AVERAGE_CHUNK_SIZE):
        pieces = [b"%0*d\n" % (size - 1, index) for index in range(6000)]
        client = http.client.HTTPConnection("127.0.0.1", st.port, timeout=10)
        try:
            client.request("POST", "/upload", body=iter(pieces), encode_chunked=True)
            response = client.getresponse()
            assert (response.status, response.read()) == (200, str(size * 6000).encode())
        finally:
            client.close()


def test_another_connection_is_served_while_a_fast_chunked_upload_is_read(serve: Callable[..., ServerThread]) -> None:
    """Megabytes of chunked body already in the kernel's buffers when the application starts
    reading: the server never has to wait for the client, yet a request that arrives on
    another connection meanwhile is served before the application has read half of them."""
    release = GEvent()
    progress = {"read": 0, "read_at_ping": -1}
    ping = socket.socket()
    ping_request = b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n"

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["PATH_INFO"] == "/ping":
            progress["read_at_ping"] = progress["read"]
            return hello_app(environ, start_response)
        release.wait()
        stream = environ["wsgi.input"]
        while True:
            data = stream.read(4096)
            if not data:
                break
            if not progress["read"]:
                # Runs in the server's thread: the ping is in the server's socket
                # before the read goes on.
                ping.sendall(ping_request)
            progress["read"] += len(data)
        answer = str(progress["read"]).encode()
        start_response("200 OK", [("Content-Length", str(len(answer)))])
        return [answer]

    st = serve(app)
    ping.settimeout(10)
    ping.connect(st.address)
    with ping, st.connect() as upload:
        ping.sendall(ping_request)  # accepted and idle before the upload starts
        assert read_response(ping)[0] == 200
        body = memoryview(chunks(DEFAULT_MIN_AVERAGE_CHUNK_SIZE, 140_000))  # 9.8 MB on the wire
        upload.sendall(CHUNKED_HEAD)
        upload.setblocking(False)
        buffered = 0
        try:
            while True:
                buffered += upload.send(body[buffered : buffered + 65536])
        except BlockingIOError:
            pass
        chunk_wire = DEFAULT_MIN_AVERAGE_CHUNK_SIZE + 6  # "40\r\n" + data + "\r\n"
        buffered_body = buffered // chunk_wire * DEFAULT_MIN_AVERAGE_CHUNK_SIZE
        assert buffered_body >= 1024 * 1024, f"the kernel took only {buffered} bytes"
        st.call(release.set)
        assert read_response(ping, timeout=10)[0] == 200
        upload.setblocking(True)
        upload.sendall(body[buffered:])
        upload.sendall(LAST_CHUNK)
        status, _, answer = read_response(upload, timeout=30)
    assert (status, answer) == (200, str(DEFAULT_MIN_AVERAGE_CHUNK_SIZE * 140_000).encode())
    # Before the fix the upload read every buffered byte (waiting only when they
    # ran out) before the ping got its turn.
    assert 0 < progress["read_at_ping"] < buffered_body // 2, (progress, buffered_body)
