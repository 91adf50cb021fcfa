"""A non-blocking socket whose every wait has a deadline the server can cut.

``Connection`` builds its request loop on this. Reads go straight to the
plain socket (``_raw``), never through gevent's socket object: a wait is "the
socket is readable, or the deadline timer fired", and both wake the waiting
greenlet by switching straight back into it. Because the deadline is a timer
rather than an exception thrown into the greenlet, the server can shorten it
from outside (``Connection.shorten_wait``, ``end_wait``) without ever landing
in the middle of a request.

Writes try one direct ``send`` first and fall back to gevent's
``wait_write`` for what the kernel did not take, within ``write_timeout`` in
all. A file goes out with ``os.sendfile`` (``send_file``) when the socket is
a plain one. Closing stops the read watcher before its descriptor goes away.
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import os
import socket
import termios
import time
from typing import Any, Callable, Optional

from gevent import getcurrent
from gevent.hub import get_hub
from gevent.socket import wait_write

from gshutdown.server.errors import ClientDisconnected

#: Bytes asked of the kernel per read of a request head.
RECV_SIZE = 64 * 1024
#: Most bytes one ``os.sendfile`` call is asked for (Linux takes at most ~2 GiB anyway).
_SENDFILE_MAX = 1 << 30
#: Bytes read per ``pread`` where the file system cannot ``sendfile``.
_PREAD_SIZE = 256 * 1024
#: ``os.sendfile`` errors that mean "not from this file", not "the client is gone".
_SENDFILE_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)
_NO_BYTES = bytes(4)  # FIONREAD's answer (a C int) when nothing is unread
_PLAIN_SOCKET = _socket.socket


class SocketIO:
    """A client socket with interruptible, deadline-bounded waits.

    Args:
        sock: a plain non-blocking socket as the server accepts it, or a
            gevent socket (TLS: gevent's ssl wraps one).
        write_timeout: seconds one write may take in all (None: no limit).
    """

    def __init__(self, sock: Any, write_timeout: Optional[float]) -> None:
        #: The socket: a plain non-blocking one as the server accepts it (a
        #: gevent socket is made only if the application hijacks it), or a
        #: gevent socket (TLS: gevent's ssl wraps one).
        self.sock: Any = sock
        # gevent sockets wrap a non-blocking plain socket; reading it directly
        # lets every wait go through our own interruptible deadline.
        self._raw: _socket.socket = sock if type(sock) is _PLAIN_SOCKET else getattr(sock, "_sock", sock)
        self._write_timeout = write_timeout
        self._hub = get_hub()
        self._read_watcher: Any = None
        # While a wait is pending: the switch into the waiting greenlet, which
        # the watcher, the deadline timer and end_wait() call.
        self._wake: Optional[Callable[[bool], Any]] = None
        # The timer of the pending wait, if it has one.
        self._deadline_timer: Any = None
        # A timer kept for the next wait of the same length (each keep-alive
        # wait is idle_timeout long): restarting it costs less than a new one.
        self._reusable_timer: Any = None
        self._reusable_seconds = -1.0

    # -- reading ---------------------------------------------------------------

    def _recv(self, timeout: Optional[float], wait_first: bool = False, size: int = RECV_SIZE) -> Optional[bytes]:
        """Up to ``size`` bytes from the socket; ``b""`` at EOF; None if ``timeout`` passed."""
        raw = self._raw
        if wait_first and not self._wait_readable(timeout):
            return None
        while True:
            try:
                return raw.recv(size)
            except BlockingIOError:
                pass
            except InterruptedError:
                continue
            except ConnectionError:
                return b""
            if timeout is not None and timeout <= 0:
                return None
            if not self._wait_readable(timeout):
                return None

    def _bytes_waiting(self) -> bool:
        """True if the kernel holds bytes from the client (or cannot say).

        Asked of every idle connection at a shutdown: unlike a read that
        finds nothing, it raises no exception (a tenth of the per-connection
        cost of closing 10,000 of them).
        """
        # A mutable buffer of its own (servers may run in several threads):
        # ioctl() takes one on its first try, where an immutable one costs it
        # a formatted exception first.
        answer = bytearray(4)
        try:
            fcntl.ioctl(self._raw.fileno(), termios.FIONREAD, answer)
        except OSError:
            return True
        return answer != _NO_BYTES

    def _wait_readable(self, timeout: Optional[float]) -> bool:
        """Block until readable (True) or the deadline timer fires (False).

        The greenlet parks in the hub and the watcher or the timer switches
        straight back into it: both are stopped before this returns, so
        neither can fire later, and a Waiter object per wait would add
        nothing but its cost.
        """
        hub = self._hub
        watcher = self._read_watcher
        if watcher is None:
            watcher = self._read_watcher = hub.loop.io(self._raw.fileno(), 1)
        wake = getcurrent().switch
        watcher.start(wake, True)
        if timeout is not None:
            if timeout == self._reusable_seconds:
                timer = self._reusable_timer
                timer.again(wake, False)  # its repeat is ``timeout``: fires ``timeout`` from now
            elif timeout > 0:
                if self._reusable_timer is not None:
                    self._reusable_timer.close()
                timer = self._reusable_timer = hub.loop.timer(timeout, timeout)
                self._reusable_seconds = timeout
                timer.start(wake, False)
            else:  # a deadline already past (a repeat must be positive)
                timer = hub.loop.timer(timeout)
                timer.start(wake, False)
            self._deadline_timer = timer
        self._wake = wake
        try:
            return bool(hub.switch())
        finally:
            self._wake = None
            watcher.stop()
            self._end_deadline_timer()

    def _watch_parked(
        self, on_readable: Callable[[], Any], on_deadline: Callable[[], Any], timeout: Optional[float]
    ) -> None:
        """Wait with no greenlet: ``on_readable()`` or ``on_deadline()`` runs in the hub.

        The same watcher and deadline timer as a greenlet's wait, with
        callbacks instead of a switch; ``_unwatch_parked()`` stops both (each
        callback must call it first).
        """
        watcher = self._read_watcher
        if watcher is None:
            watcher = self._read_watcher = self._hub.loop.io(self._raw.fileno(), 1)
        watcher.start(on_readable)
        if timeout is not None:
            timer = self._hub.loop.timer(max(0.0, timeout))
            timer.start(on_deadline)
            self._deadline_timer = timer

    def _unwatch_parked(self) -> None:
        watcher = self._read_watcher
        if watcher is not None:
            watcher.stop()
        self._end_deadline_timer()

    def _end_deadline_timer(self) -> None:
        timer = self._deadline_timer
        if timer is not None:
            self._deadline_timer = None
            if timer is self._reusable_timer:
                timer.stop()
            else:
                timer.close()

    def send(self, data: bytes) -> None:
        """Write bytes to the client (bounded by ``write_timeout``).

        Raises:
            ClientDisconnected: the client is gone or stopped reading.
        """
        try:
            # One direct send first: gevent's sendall asks the kernel for the
            # send buffer size on every call, which costs more than the send
            # itself for a small response.
            try:
                sent = self._raw.send(data)
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                self._send_rest(memoryview(data)[sent:])
        except OSError as exc:  # TimeoutError included: write_timeout passed
            raise ClientDisconnected(f"sending the response failed: {exc}") from exc

    def send_parts(self, head: bytes, body: bytes) -> None:
        """Write ``head`` then ``body`` with one ``sendmsg``, not joined first (a copy less).

        Raises:
            ClientDisconnected: the client is gone or stopped reading.
        """
        try:
            try:
                sent = self._raw.sendmsg((head, body))
            except BlockingIOError:
                sent = 0
            if sent < len(head):
                self._send_rest(memoryview(head)[sent:])
                sent = len(head)
            if sent - len(head) < len(body):
                self._send_rest(memoryview(body)[sent - len(head) :])
        except OSError as exc:  # TimeoutError included: write_timeout passed
            raise ClientDisconnected(f"sending the response failed: {exc}") from exc

    def _send_rest(self, data: memoryview) -> None:
        """Send what the kernel did not take at once, within ``write_timeout`` in all.

        Raises:
            OSError: TimeoutError when ``write_timeout`` passes first.
        """
        sock = self.sock
        if sock is not self._raw:  # a gevent socket: its sendall obeys its timeout
            sock.sendall(data)
            return
        raw = self._raw
        timeout = self._write_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while data:
            wait_write(raw.fileno(), timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            try:
                data = data[raw.send(data) :]
            except BlockingIOError:
                pass

    def can_send_file(self) -> bool:
        """True when ``send_file`` may hand a file to the kernel: a plain socket (not TLS, not hijacked)."""
        return self.sock is self._raw and type(self._raw) is _PLAIN_SOCKET

    def send_file(self, head: bytes, fd: int, offset: int, count: int, piece: int) -> int:
        """Write ``head``, then ``count`` bytes of file ``fd`` from ``offset``, with ``os.sendfile``.

        The file's own position is neither used nor moved. Only for a socket
        where ``can_send_file()``. Each ``piece`` bytes the client takes must
        arrive within ``write_timeout`` seconds, as if each were one write, so
        a client that stops reading is dropped while a slow one is not.

        Returns the file bytes sent: fewer than ``count`` when the file ends first.

        Raises:
            ClientDisconnected: the client is gone or stopped reading.
        """
        raw = self._raw
        out = raw.fileno()
        timeout = self._write_timeout
        piece = max(1, piece)
        sent = 0
        try:
            if count <= 0:
                self.send(head)
                return 0
            # MSG_MORE: the head waits in the kernel for the file's first bytes
            # (one segment, not a tiny one first, TCP_NODELAY notwithstanding).
            try:
                head_sent = raw.send(head, socket.MSG_MORE)
            except BlockingIOError:
                head_sent = 0
            if head_sent < len(head):
                self._send_rest(memoryview(head)[head_sent:])
            deadline = None if timeout is None else time.monotonic() + timeout
            piece_end = piece
            while sent < count:
                try:
                    done = os.sendfile(out, fd, offset + sent, min(count - sent, _SENDFILE_MAX))
                except BlockingIOError:
                    done = -1
                except OSError as exc:
                    if exc.errno not in _SENDFILE_UNSUPPORTED or sent:
                        raise
                    return self._send_file_by_reads(fd, offset, count)
                if done == 0:
                    break  # the file ended before ``count``
                if done > 0:
                    sent += done
                    if sent >= piece_end:
                        piece_end = sent + piece
                        deadline = None if timeout is None else time.monotonic() + timeout
                    if sent >= count:
                        break
                wait_write(out, timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except OSError as exc:  # TimeoutError included: write_timeout passed
            raise ClientDisconnected(f"sending the response failed: {exc}") from exc
        return sent

    def _send_file_by_reads(self, fd: int, offset: int, count: int) -> int:
        """``send_file``'s way for a file ``sendfile`` cannot read: ``pread`` and ``send``."""
        sent = 0
        while sent < count:
            data = os.pread(fd, min(_PREAD_SIZE, count - sent), offset + sent)
            if not data:
                break
            self.send(data)
            sent += len(data)
        return sent

    def _close_watcher(self) -> None:
        watcher = self._read_watcher
        if watcher is not None:
            self._read_watcher = None
            watcher.close()

    def _close_socket(self) -> None:
        # The watcher first: none may outlive the descriptor it watches.
        self._close_watcher()
        self.sock.close()

    def _close_waits(self) -> None:
        # The connection is over: nothing of its waiting may outlive it.
        self._close_watcher()
        if self._reusable_timer is not None:
            self._reusable_timer.close()
