"""``environ['wsgi.file_wrapper']``: files served zero-copy (``os.sendfile``) on plain sockets.

In-process servers (``ServerThread``) with real clients (``requests``,
``http.client``, raw sockets, TLS). ``os.sendfile`` is wrapped for the
duration of a test (the server thread shares the module) to count what went
through it; the last test runs a real ``gshutdown`` process, serves 100 MiB
through ``sendfile`` and sends it SIGTERM mid-transfer.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import io
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Optional
from urllib.parse import parse_qs

import pytest
import requests

from gshutdown import ConnState
from gshutdown.wsgi.file_wrapper import FileWrapper
from gshutdown.wsgi.middleware import AccessLog
from tests.helpers import ServerThread, read_response, recv_until_closed, wait_until
from tests.process_helpers import free_port, start_gshutdown
from tests.tls_helpers import TLSFiles, tls_connect

Serve = Callable[..., ServerThread]

#: Not a multiple of any block size: the last piece is a short one.
FILE_SIZE = 3 * 1024 * 1024 + 12345


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = os.urandom(FILE_SIZE)
    path = tmp_path_factory.mktemp("files") / "data.bin"
    path.write_bytes(data)
    return path, data


class SendfileCalls:
    """Counts the ``os.sendfile`` calls made while installed, and the bytes they sent."""

    def __init__(self) -> None:
        self.calls = 0
        self.sent = 0
        self._lock = threading.Lock()
        self._real = os.sendfile

    def __call__(self, out_fd: int, in_fd: int, offset: Optional[int], count: int) -> int:
        sent = self._real(out_fd, in_fd, offset, count)
        with self._lock:
            self.calls += 1
            self.sent += sent
        return sent

    def total(self, expected: int) -> int:
        """The bytes sent, once they reach ``expected`` (or 5 s pass).

        The client can read the last bytes before the server's thread gets
        back from the call to count them.
        """
        try:
            wait_until(lambda: self.sent >= expected)
        except AssertionError:
            pass
        return self.sent


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> SendfileCalls:
    counter = SendfileCalls()
    # gshutdown.server.socket_io calls os.sendfile through the os module.
    monkeypatch.setattr("gshutdown.server.socket_io.os.sendfile", counter)
    return counter


class FileApp:
    """Serves ``path`` through ``wsgi.file_wrapper``, steered by the query string.

    ``length=N``: Content-Length N (none by default); ``skip=N``: read (not
    seek) N bytes first, so a buffered reader has read ahead of them;
    ``seek=N``: seek to N first; ``kind=bytesio``: the same bytes in an
    ``io.BytesIO``; ``block=N``: the wrapper's block size.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        #: Every file-like handed to the wrapper, to check that each was closed.
        self.opened: list[Any] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        query = {name: values[0] for name, values in parse_qs(environ["QUERY_STRING"]).items()}
        bytesio = query.get("kind") == "bytesio"
        # The server closes it.
        filelike: Any = io.BytesIO(self.path.read_bytes()) if bytesio else open(self.path, "rb")  # noqa: SIM115
        self.opened.append(filelike)
        if "skip" in query:
            filelike.read(int(query["skip"]))
        if "seek" in query:
            filelike.seek(int(query["seek"]))
        headers = [("Content-Type", "application/octet-stream")]
        if "length" in query:
            headers.append(("Content-Length", query["length"]))
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](filelike, int(query.get("block", "8192")))  # type: ignore[no-any-return]

    def all_closed(self) -> bool:
        return bool(self.opened) and all(f.closed for f in self.opened)


def get(st: ServerThread, target: str, method: str = "GET") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", st.port, timeout=10)
    conn.request(method, target)
    return conn.getresponse()


def test_environ_offers_the_file_wrapper(serve: Serve) -> None:
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(environ.get("wsgi.file_wrapper"))
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    st = serve(app)
    assert requests.get(st.url(), timeout=10).status_code == 200
    assert seen == [FileWrapper]


def test_a_file_with_content_length_goes_out_through_sendfile_byte_for_byte(
    serve: Serve, data_file: tuple[Path, bytes], sendfile_calls: SendfileCalls
) -> None:
    path, data = data_file
    app = FileApp(path)
    st = serve(app)
    response = requests.get(st.url(f"/?length={len(data)}"), timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(data))
    assert "Transfer-Encoding" not in response.headers
    assert response.content == data
    # Every body byte went through sendfile, none through Python.
    assert sendfile_calls.total(len(data)) == len(data)
    assert sendfile_calls.calls >= 1
    wait_until(app.all_closed)


def test_a_file_without_content_length_gets_one_from_its_size(
    serve: Serve, data_file: tuple[Path, bytes], sendfile_calls: SendfileCalls
) -> None:
    path, data = data_file
    app = FileApp(path)
    st = serve(app)
    conn = http.client.HTTPConnection("127.0.0.1", st.port, timeout=10)
    for _ in range(2):  # the same kept-alive connection: the framing is exact
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == str(len(data))
        assert response.getheader("Transfer-Encoding") is None
        assert response.read() == data
        assert response.getheader("Connection") is None
    conn.close()
    assert sendfile_calls.total(2 * len(data)) == 2 * len(data)
    wait_until(app.all_closed)
    assert st.conn_ids() and len(st.conn_ids()) == 1


def test_head_sends_the_head_only_and_keeps_the_connection(
    serve: Serve, data_file: tuple[Path, bytes], sendfile_calls: SendfileCalls
) -> None:
    path, data = data_file
    app = FileApp(path)
    st = serve(app)
    with st.connect() as sock:
        sock.sendall(b"HEAD /?length=%d HTTP/1.1\r\nHost: t\r\n\r\n" % len(data))
        sock.settimeout(10)
        response = http.client.HTTPResponse(sock, method="HEAD")  # type: ignore[arg-type]
        response.begin()
        assert response.status == 200
        assert response.getheader("Content-Length") == str(len(data))
        assert response.read() == b""
        # Had any body byte followed the head, it would be read as the next
        # response's status line.
        sock.sendall(b"GET /?length=10 HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = read_response(sock)
    assert status == 200
    assert body == data[:10]
    assert sendfile_calls.total(10) == 10
    wait_until(app.all_closed)
    assert len(app.opened) == 2


@pytest.mark.parametrize("how", ["seek", "skip"])
def test_a_range_from_the_file_position_with_its_content_length(
    serve: Serve, data_file: tuple[Path, bytes], sendfile_calls: SendfileCalls, how: str
) -> None:
    # skip: the application read 1000 bytes, and the buffered reader read
    # ahead of them (its descriptor is at 8192 or more): the body must start
    # at the file object's position, not at the descriptor's.
    path, data = data_file
    app = FileApp(path)
    st = serve(app)
    start, length = 1000, 100_000
    conn = http.client.HTTPConnection("127.0.0.1", st.port, timeout=10)
    conn.request("GET", f"/?{how}={start}&length={length}")
    response = conn.getresponse()
    assert response.getheader("Content-Length") == str(length)
    assert response.read() == data[start : start + length]
    # Exactly that many bytes: the next response on the connection parses.
    conn.request("GET", f"/?{how}={start}")
    response = conn.getresponse()
    assert response.getheader("Content-Length") == str(len(data) - start)
    assert response.read() == data[start:]
    conn.close()
    assert sendfile_calls.total(length + len(data) - start) == length + len(data) - start
    wait_until(app.all_closed)


def test_a_file_shorter_than_its_content_length_closes_the_connection(
    serve: Serve, data_file: tuple[Path, bytes], sendfile_calls: SendfileCalls
) -> None:
    path, data = data_file
    st = serve(FileApp(path))
    with st.connect() as sock:
        sock.sendall(b"GET /?length=%d HTTP/1.1\r\nHost: t\r\n\r\n" % (len(data) + 100))
        received = recv_until_closed(sock, 10)
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % (len(data) + 100) in head
    assert body == data  # all the file had, then the close: the client sees a short body


def test_a_file_system_without_sendfile_falls_back_to_reads_of_the_file(
    serve: Serve, data_file: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = data_file
    refused: list[int] = []

    def no_sendfile(out_fd: int, in_fd: int, offset: Optional[int], count: int) -> int:
        refused.append(count)
        raise OSError(errno.EINVAL, "Invalid argument")  # what some FUSE and /proc files answer

    monkeypatch.setattr("gshutdown.server.socket_io.os.sendfile", no_sendfile)
    app = FileApp(path)
    st = serve(app)
    conn = http.client.HTTPConnection("127.0.0.1", st.port, timeout=10)
    for target, expected in ((f"/?seek=3&length={len(data) - 3}", data[3:]), ("/?length=77", data[:77])):
        conn.request("GET", target)
        response = conn.getresponse()
        assert response.read() == expected
        assert response.getheader("Connection") is None
    conn.close()
    assert len(refused) == 2  # tried once per response, then pread and send
    wait_until(app.all_closed)


def test_no_sendfile_sends_the_file_with_reads_and_writes(
    serve: Serve, data_file: tuple[Path, bytes], sendfile_calls: SendfileCalls
) -> None:
    # gunicorn's --no-sendfile (sendfile = False): for file systems and kernels where it misbehaves.
    path, data = data_file
    app = FileApp(path)
    st = serve(app, sendfile=False)
    response = requests.get(st.url(f"/?length={len(data)}"), timeout=10)
    assert response.content == data
    assert sendfile_calls.calls == 0
    wait_until(app.all_closed)


@pytest.mark.parametrize("length", [None, FILE_SIZE, 5000])
def test_a_bytesio_goes_through_the_read_loop(
    serve: Serve, data_file: tuple[Path, bytes], sendfile_calls: SendfileCalls, length: Optional[int]
) -> None:
    path, data = data_file
    app = FileApp(path)
    st = serve(app)
    query = "" if length is None else f"&length={length}"
    conn = http.client.HTTPConnection("127.0.0.1", st.port, timeout=10)
    for _ in range(2):
        conn.request("GET", f"/?kind=bytesio&block=65536{query}")
        response = conn.getresponse()
        if length is None:
            assert response.getheader("Transfer-Encoding") == "chunked"
            assert response.read() == data
        else:
            assert response.getheader("Content-Length") == str(length)
            assert response.read() == data[:length]
    conn.close()
    assert sendfile_calls.calls == 0
    wait_until(app.all_closed)


def test_tls_reads_the_file_and_sends_it_encrypted(
    serve: Serve, data_file: tuple[Path, bytes], sendfile_calls: SendfileCalls, tls_files: TLSFiles
) -> None:
    path, data = data_file
    app = FileApp(path)
    st = serve(app, certfile=str(tls_files.cert), keyfile=str(tls_files.key))
    session = requests.Session()
    url = f"https://localhost:{st.port}/"
    with_length = session.get(url + f"?length={len(data)}", verify=str(tls_files.cert), timeout=10)
    without = session.get(url + "?seek=7", verify=str(tls_files.cert), timeout=10)
    head = session.head(url, verify=str(tls_files.cert), timeout=10)
    session.close()
    assert with_length.content == data
    assert without.headers["Content-Length"] == str(len(data) - 7)
    assert without.content == data[7:]
    assert head.status_code == 200 and head.content == b""
    # sendfile would have put plaintext on the TLS stream.
    assert sendfile_calls.calls == 0
    wait_until(app.all_closed)
    with tls_connect(tls_files, ("127.0.0.1", st.port)) as sock:
        sock.sendall(b"GET /?length=100 HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = read_response(sock)
    assert (status, body) == (200, data[:100])


class StreamingFile:
    """What Django's ``FileResponse`` hands the server: its file, whose ``close`` is the response's."""

    block_size = 4096

    def __init__(self, path: Path) -> None:
        self.file_to_stream = open(path, "rb")  # noqa: SIM115 - closed through close()
        self.closed_by_server = threading.Event()
        # Django's WSGIHandler: response.file_to_stream.close = response.close
        self.file_to_stream.close = self.close  # type: ignore[method-assign]

    def close(self) -> None:
        io.BufferedReader.close(self.file_to_stream)
        self.closed_by_server.set()


def test_django_file_response_usage(serve: Serve, data_file: tuple[Path, bytes], sendfile_calls: SendfileCalls) -> None:
    path, data = data_file
    responses: list[StreamingFile] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # As django.core.handlers.wsgi.WSGIHandler does with a FileResponse.
        response = StreamingFile(path)
        responses.append(response)
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(os.path.getsize(path))),
                ("Content-Disposition", 'attachment; filename="data.bin"'),
            ],
        )
        if environ.get("wsgi.file_wrapper") is not None:
            return environ["wsgi.file_wrapper"](response.file_to_stream, response.block_size)  # type: ignore[no-any-return]
        return iter(lambda: response.file_to_stream.read(response.block_size), b"")

    st = serve(app)
    got = requests.get(st.url("/download"), timeout=10)
    assert got.headers["Content-Disposition"] == 'attachment; filename="data.bin"'
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(data).digest()
    assert sendfile_calls.total(len(data)) == len(data)
    assert responses[0].closed_by_server.wait(5)


@pytest.mark.parametrize("kind", ["file", "bytesio"])
def test_the_access_log_keeps_the_file_wrapper_and_logs_the_bytes_sent(
    serve: Serve, data_file: tuple[Path, bytes], sendfile_calls: SendfileCalls, kind: str
) -> None:
    path, data = data_file
    app = FileApp(path)
    lines: list[tuple[str, int]] = []

    def emit(environ: dict[str, Any], status: str, headers: Any, sent: int, seconds: float) -> None:
        lines.append((status, sent))

    st = serve(AccessLog(app, emit))
    response = requests.get(st.url(f"/?kind={kind}&seek=5"), timeout=10)
    assert response.content == data[5:]
    wait_until(lambda: lines)
    assert lines == [("200 OK", len(data) - 5)]
    # Wrapped for the log, the file still goes out through sendfile.
    expected = len(data) - 5 if kind == "file" else 0
    assert sendfile_calls.total(expected) == expected
    assert app.all_closed()


def test_a_client_that_stops_reading_is_dropped_after_write_timeout(serve: Serve, tmp_path: Path) -> None:
    # Bigger than loopback's socket buffers can hold between them.
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    app = FileApp(path)
    st = serve(app, write_timeout=0.5)
    with st.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        # Never read: the server's sendfile waits, then gives up and closes the file.
        wait_until(app.all_closed, timeout=10)
        conn_id = st.conn_ids()[0]
        wait_until(lambda: ConnState.CLOSED in st.states_of(conn_id), timeout=5)


def test_the_file_is_closed_when_the_client_goes_away_mid_transfer(serve: Serve, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    app = FileApp(path)
    st = serve(app)
    with st.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sock.recv(65536)
    wait_until(app.all_closed, timeout=10)


def test_shutdown_waits_for_a_file_being_sent_and_forces_it_at_the_deadline(serve: Serve, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    app = FileApp(path)
    st = serve(app)
    with st.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
        # The client reads no more: sendfile waits (write_timeout is 30 s) and
        # the shutdown waits for it, until its own deadline.
        result = st.shutdown(timeout=0.5)
        assert not result.clean
        assert [forced.request_line for forced in result.forced] == ["GET / HTTP/1.1"]
        wait_until(app.all_closed)


def test_sigterm_mid_sendfile_of_100_mib_completes_then_closes(tmp_path: Path) -> None:
    size = 100 * 1024 * 1024
    path = tmp_path / "100mib.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        block = os.urandom(1024 * 1024)
        for index in range(size // len(block)):
            piece = index.to_bytes(8, "big") + block[8:]  # no two MiB alike
            digest.update(piece)
            f.write(piece)
    port = free_port()
    with (
        start_gshutdown(
            tmp_path / "log",
            "--bind",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            "60",
            "tests.apps.files:app",
            env={"SERVE_FILE": str(path)},
        ) as server,
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
    ):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        sock.sendall(b"GET /file HTTP/1.1\r\nHost: t\r\n\r\n")
        received = bytearray()
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        head, _, body_start = bytes(received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Content-Length: %d" % size in head
        assert b"Connection: close" not in head  # sent before the shutdown began
        got = hashlib.sha256(body_start)
        count = len(body_start)
        while count < 1024 * 1024:  # slowly: the server waits on us meanwhile
            data = sock.recv(16 * 1024)
            assert data
            got.update(data)
            count += len(data)
        server.send_signal(signal.SIGTERM)
        server.wait_for_log(r"shutdown: started")
        while count < size:
            data = sock.recv(1024 * 1024)
            assert data, f"closed after {count} of {size} bytes"
            got.update(data)
            count += len(data)
        assert count == size
        # No keep-alive after it: the server closes (EOF), no further bytes.
        assert recv_until_closed(sock, 10) == b""
        status = server.wait()
    assert got.digest() == digest.digest()
    assert status == 0
    log = server.log()
    assert "file response started" in log
    assert "0 connections forced" in log
