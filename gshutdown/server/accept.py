"""Accepting connections, and pausing when the process or the system runs out.

Accept: when the process (EMFILE) or the system (ENFILE) is out of file
descriptors, or the kernel out of buffers, accepting pauses, with a retry
delay that doubles from 5 ms to 1 s (as Go's ``Server.Serve``), while open
connections are served as usual; clients wait in the listen backlog meanwhile.
It is logged at most once per ``ACCEPT_ERROR_LOG_INTERVAL``, and when
accepting resumes after a pause that was logged.
"""

from __future__ import annotations

import _socket
import errno
import logging
import os
import time
from typing import Any

from gevent.server import StreamServer

log = logging.getLogger("gshutdown")

#: Seconds between log lines while accepting is paused for lack of resources.
ACCEPT_ERROR_LOG_INTERVAL = 10.0
_ACCEPT_RETRY_FIRST = 0.005
_ACCEPT_RETRY_MAX = 1.0
# accept() errors that say "no room for another connection now".
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept() errors about one connection, gone before it was accepted.
CONNECTION_ABORTED = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})


class PausingAccept(StreamServer):
    """gevent's ``StreamServer`` accept loop, made to pause rather than spin or fail.

    A plain connection is accepted as a plain non-blocking socket (see
    ``_accept``); the subclass makes a connection of it in ``do_handle``.
    """

    # Set by the subclass: TLS keeps gevent's socket wrapper for its ssl;
    # a paused accept is not resumed once a shutdown has started.
    ssl_context: Any
    shutdown_started: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Accept paused for lack of resources: the retry timer, its delay,
        # since when, and when it was last logged.
        self._accept_retry_timer: Any = None
        self._accept_retry_delay = 0.0
        self._accept_paused_at = 0.0
        self._accept_error_logged_at = -ACCEPT_ERROR_LOG_INTERVAL
        self._accept_pause_logged = False
        self._accept_errors = 0
        super().__init__(*args, **kwargs)

    def open_connections(self) -> int:
        """How many connections are open (for the log line of a pause)."""
        raise NotImplementedError

    def init_socket(self) -> None:
        super().init_socket()
        listener = self.socket
        self._accepted_kind = (int(listener.family), int(listener.type), listener.proto)

    def _accept(self) -> Any:
        """``(socket, address)`` of a connection accepted now, or None.

        A plain connection gets a plain non-blocking socket rather than
        gevent's wrapper, whose set-up and close cost more than the rest of
        a short connection's Python work (``Connection`` waits on its own
        watcher anyway). TLS needs the wrapper: gevent's ssl wraps it.
        """
        if self.ssl_context is not None:
            return super().do_read()
        try:
            fd, address = self.socket._accept()
        except BlockingIOError:
            return None
        family, kind, proto = self._accepted_kind
        sock = _socket.socket(family, kind, proto, fd)
        sock.setblocking(False)
        return sock, address

    def do_read(self) -> Any:
        """Accept one connection; None when there is none to accept now."""
        try:
            accepted = self._accept()
        except OSError as exc:
            if exc.errno in CONNECTION_ABORTED:
                return None  # that client is gone; the next one may be fine
            if exc.errno not in _OUT_OF_RESOURCES:
                raise
            self._pause_accepting(exc)
            return None
        if self._accept_retry_delay and accepted:
            if self._accept_pause_logged:
                log.info(
                    "accept: resumed after %.1f s (%d attempts failed)",
                    time.monotonic() - self._accept_paused_at,
                    self._accept_errors,
                )
            self._accept_retry_delay = 0.0
            self._accept_errors = 0
            self._accept_pause_logged = False
        return accepted

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors or buffers: stop watching the listener for a while.

        Watching on would spin: the listener stays readable while the backlog
        holds a connection that cannot be accepted.
        """
        now = time.monotonic()
        if not self._accept_retry_delay:
            self._accept_paused_at = now
        self._accept_errors += 1
        delay = min(max(2 * self._accept_retry_delay, _ACCEPT_RETRY_FIRST), _ACCEPT_RETRY_MAX)
        self._accept_retry_delay = delay
        if now - self._accept_error_logged_at >= ACCEPT_ERROR_LOG_INTERVAL:
            self._accept_error_logged_at = now
            self._accept_pause_logged = True
            log.warning(
                "accept: %s (%s); serving the %d open connections, new ones wait in the backlog; "
                "retrying for %.1f s so far (logged every %g s)",
                os.strerror(exc.errno or 0),
                errno.errorcode.get(exc.errno or 0, exc.errno),
                self.open_connections(),
                now - self._accept_paused_at,
                ACCEPT_ERROR_LOG_INTERVAL,
            )
        self.stop_accepting()
        self._cancel_accept_retry()
        timer = self._accept_retry_timer = self.loop.timer(delay)
        timer.start(self._retry_accepting)

    def _retry_accepting(self) -> None:
        self._cancel_accept_retry()
        if hasattr(self, "socket") and self.started and not self.shutdown_started:
            self.start_accepting()

    def _cancel_accept_retry(self) -> None:
        timer = self._accept_retry_timer
        if timer is not None:
            timer.close()
            self._accept_retry_timer = None
