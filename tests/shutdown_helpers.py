"""Helpers for the graceful-shutdown tests: raw clients that say exactly what they saw.

The shutdown contract is about the bytes a client receives and how the
connection ends (FIN or reset, before or after the first response byte), so
these helpers read responses from raw sockets and record every byte, instead
of letting an HTTP library retry or hide a reset.

Apps run in the server's hub thread. They signal the test thread with
``threading.Event`` (setting one never blocks the hub); the test thread wakes
them with a gevent ``Event`` that is only ever waited on and set in the hub
(``st.call(event.set)``): it binds to a hub on first use, not at creation.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from tests.helpers import ServerThread, read_response

#: How a connection can end, as the client sees it.
EOF = "eof"
RESET = "reset"
TIMEOUT = "timeout"
OPEN = "open"  # a complete response arrived; the connection was not read further

_RESET_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def request_bytes(path: str = "/", *, method: str = "GET", headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete HTTP/1.1 request head (no body)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass
class RawResponse:
    """What a client received for one request, byte for byte."""

    received: bytes = b""
    status: Optional[int] = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: True when a whole response (head and framed body) arrived.
    complete: bool = False
    #: How reading stopped: EOF, RESET, TIMEOUT, or OPEN after a complete response.
    ending: str = OPEN

    @property
    def closes(self) -> bool:
        """True when the response announced ``Connection: close``."""
        return self.headers.get("connection", "").lower() == "close"


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def _chunked_end(body: bytes) -> Optional[int]:
    """Length of a complete chunked body at the start of ``body`` (None: incomplete)."""
    pos = 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(body[pos:eol].split(b";")[0], 16)
        if size == 0:
            end = body.find(b"\r\n\r\n", eol)  # no trailers are sent by the server
            return None if end < 0 else end + 4
        pos = eol + 2 + size + 2
        if pos > len(body):
            return None


def decode_chunked(body: bytes) -> list[bytes]:
    """The chunks of a complete chunked body; fails if the terminating chunk is missing."""
    chunks = []
    pos = 0
    while True:
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol].split(b";")[0], 16)
        if size == 0:
            assert body[eol:] == b"\r\n\r\n", f"bad end of chunked body: {body[eol:]!r}"
            return chunks
        chunks.append(body[eol + 2 : eol + 2 + size])
        assert body[eol + 2 + size : eol + 4 + size] == b"\r\n", "chunk not followed by CRLF"
        pos = eol + 4 + size


def read_raw(sock: socket.socket, timeout: float = 5.0, *, until_closed: bool = False) -> RawResponse:
    """Read one response from ``sock``, recording every byte and how reading ended.

    Never raises for a reset or a timeout: they are reported in ``ending``.
    With ``until_closed``, keep reading after a complete response until EOF.
    """
    out = RawResponse()
    buf = b""
    deadline = time.monotonic() + timeout
    head_end = -1
    while True:
        if not out.complete and head_end < 0:
            head_end = buf.find(b"\r\n\r\n")
            if head_end >= 0:
                out.status, out.headers = _parse_head(buf[:head_end])
        if not out.complete and head_end >= 0:
            body = buf[head_end + 4 :]
            if out.status in (204, 304) or 100 <= (out.status or 0) < 200:
                out.complete = True
            elif "content-length" in out.headers:
                length = int(out.headers["content-length"])
                if len(body) >= length:
                    out.body, out.complete = body[:length], True
            elif out.headers.get("transfer-encoding", "").lower() == "chunked":
                end = _chunked_end(body)
                if end is not None:
                    out.body, out.complete = body[:end], True
        if out.complete and not until_closed:
            out.received = buf
            out.ending = OPEN
            return out
        left = deadline - time.monotonic()
        if left <= 0:
            out.received, out.ending = buf, TIMEOUT
            return out
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except _RESET_ERRORS:
            out.received, out.ending = buf, RESET
            return out
        except TimeoutError:
            out.received, out.ending = buf, TIMEOUT
            return out
        if not data:
            framed = "content-length" in out.headers or "transfer-encoding" in out.headers
            if head_end >= 0 and not out.complete and not framed:
                out.body, out.complete = buf[head_end + 4 :], True  # delimited by EOF
            out.received, out.ending = buf, EOF
            return out
        buf += data


def recv_all(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, str]:
    """Every byte until the connection ends, and how it ended (EOF, RESET or TIMEOUT)."""
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), TIMEOUT
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except _RESET_ERRORS:
            return b"".join(chunks), RESET
        except TimeoutError:
            return b"".join(chunks), TIMEOUT
        if not data:
            return b"".join(chunks), EOF
        chunks.append(data)


def keep_alive_connections(st: ServerThread, count: int, path: str = "/") -> list[socket.socket]:
    """``count`` connections that each completed one keep-alive request (now IDLE)."""
    socks = []
    try:
        for _ in range(count):
            sock = st.connect()
            socks.append(sock)
            sock.sendall(request_bytes(path))
            status, headers, _ = read_response(sock)
            assert status == 200 and headers.get("connection") != "close"
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def fin_times(socks: list[socket.socket], since: float, timeout: float, *, close: bool = True) -> list[float]:
    """Seconds after ``since`` at which each socket saw EOF (in ``socks`` order).

    Fails if any socket receives data, is reset, or stays open past ``timeout``.
    With ``close``, each socket is closed as soon as its EOF is seen, as a
    client does.
    """
    times: list[Optional[float]] = [None] * len(socks)
    timeouts = [sock.gettimeout() for sock in socks]
    sel = selectors.DefaultSelector()
    try:
        for index, sock in enumerate(socks):
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, index)
        deadline = time.monotonic() + timeout
        pending = len(socks)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pending} of {len(socks)} connections not closed within {timeout} s")
            for key, _ in sel.select(left):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data = sock.recv(1024)
                assert data == b"", f"expected EOF, got {data[:80]!r}"
                times[key.data] = time.monotonic() - since
                sel.unregister(sock)
                pending -= 1
                if close:
                    sock.close()
    finally:
        sel.close()
        for sock, previous in zip(socks, timeouts, strict=True):
            if sock.fileno() != -1:
                sock.settimeout(previous)
    return [t for t in times if t is not None]


def has_fin(sock: socket.socket, timeout: float) -> bool:
    """True if the peer's FIN arrives within ``timeout``, without consuming it (or data)."""
    sel = selectors.DefaultSelector()
    try:
        sel.register(sock, selectors.EVENT_READ)
        if not sel.select(timeout):
            return False
        previous = sock.gettimeout()
        sock.setblocking(False)
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        finally:
            sock.settimeout(previous)
    finally:
        sel.close()


def fd_count() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def on_drain(st: ServerThread) -> threading.Event:
    """A threading.Event set by a "drain" hook, i.e. just after the shutdown began.

    Drain hooks start in the shutdown greenlet's first yield, after the
    listener is closed, keep-alive is off and idle connections have their
    grace deadline: the moment the shutdown is observably under way.
    """
    began = threading.Event()
    st.call(st.server.register_on_shutdown, began.set, phase="drain")
    return began


def server_stats(st: ServerThread) -> dict[str, Any]:
    return st.call(st.server.stats)


def wait_for_state_count(st: ServerThread, state: str, count: int, timeout: float = 5.0) -> None:
    """Wait until the server reports ``count`` connections in ``state`` (e.g. "new")."""
    deadline = time.monotonic() + timeout
    while True:
        counts = server_stats(st)["connections"]
        if counts[state] == count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"wanted {count} {state} connections, have {counts}")
        time.sleep(0.005)


def run_in_thread(fn: Callable[[], Any], name: str = "shutdown-test-client") -> tuple[threading.Thread, list[Any]]:
    """Start ``fn`` in a daemon thread; the list gets its result or exception."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread, out


def joined(thread: threading.Thread, out: list[Any], timeout: float) -> Any:
    """Join a ``run_in_thread`` thread (bounded) and return its result; re-raise its error."""
    thread.join(timeout)
    assert not thread.is_alive(), f"{thread.name} still running after {timeout} s"
    (value,) = out
    if isinstance(value, BaseException):
        raise value
    return value
