"""Accepting connections, and pausing when the process or the system runs out.

Accept: when the process (EMFILE) or the system (ENFILE) is out of file
descriptors, or the kernel out of buffers, accepting pauses, with a retry
delay that doubles from 5 ms to 1 s (as Go's ``Server.Serve``), while open
connections are served as usual; clients wait in the listen backlog meanwhile.
It is logged at most once per ``ACCEPT_ERROR_LOG_INTERVAL``, and when
accepting resumes after a pause that was logged.

At the connection cap (``max_connections``, counted by the registry, not by
greenlets: a parked idle connection has none) accepting stops too, and the
listener is watched instead: a connection waiting in the backlog makes the
server reclaim a slot, as nginx does with its reusable connections (the
subclass's ``_reclaim_slot``: idle keep-alive connections first, then those
that have not sent a complete head, oldest first). Accepting resumes as soon
as a slot is free, reclaimed or not.
"""

from __future__ import annotations

import _socket
import errno
import logging
import os
import time
from typing import Any, Optional

from gevent.server import StreamServer

log = logging.getLogger("gshutdown")

#: Seconds between log lines while accepting is paused for lack of resources.
ACCEPT_ERROR_LOG_INTERVAL = 10.0
_ACCEPT_RETRY_FIRST = 0.005
_ACCEPT_RETRY_MAX = 1.0
# accept() errors that say "no room for another connection now".
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Seconds after a reclaim at the cap before looking again, should its slot
#: not have freed (the connection reclaimed turned out to have a request).
RECLAIM_RECHECK = 0.5
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
        # At the cap: the watcher on the listener, or the timer of the next
        # look for something to reclaim.
        self._cap_watcher: Any = None
        self._cap_timer: Any = None
        self._paused_at_cap = False
        super().__init__(*args, **kwargs)
        # gevent took the pool's full() as this server's: the cap is ours.
        self.__dict__.pop("full", None)

    def open_connections(self) -> int:
        """How many connections are open (for the log line of a pause)."""
        raise NotImplementedError

    # -- the connection cap ---------------------------------------------------------

    def _at_cap(self) -> bool:
        """True when no other connection may be accepted now."""
        raise NotImplementedError

    def _reclaim_slot(self) -> Optional[float]:
        """Close one connection to make room for one waiting in the backlog.

        Returns None when one was (its slot frees now or on the next loop
        turn), else the seconds after which one may be reclaimable.
        """
        raise NotImplementedError

    def full(self) -> bool:  # gevent's accept loop asks before each accept
        if not self._at_cap():
            return False
        # gevent stops accepting; watch the listener for a connection waiting.
        self._paused_at_cap = True
        if self._cap_watcher is None and self._cap_timer is None and hasattr(self, "socket"):
            self._cap_watcher = self.loop.io(self.socket.fileno(), 1)
            self._cap_watcher.start(self._waiting_at_cap)
        return True

    def _waiting_at_cap(self) -> None:
        # In the hub: the listener is readable while at the cap.
        self._end_cap_wait()
        if not self._at_cap():
            self._slot_freed()
            return
        retry = self._reclaim_slot()
        if not self._paused_at_cap:
            return  # the slot reclaimed is free already: accepting again
        # Reclaimed: its slot frees on the next turn (and _slot_freed cancels
        # this). Not yet reclaimable: look again when something may be (the
        # listener stays readable, so watching it now would spin).
        self._cap_timer = self.loop.timer(RECLAIM_RECHECK if retry is None else retry)
        self._cap_timer.start(self._cap_retry)

    def _cap_retry(self) -> None:
        self._end_cap_wait()
        if hasattr(self, "socket") and self.started and not self.shutdown_started:
            self._waiting_at_cap()

    def _slot_freed(self) -> None:
        """A served connection ended: accept again if the cap had stopped it."""
        if self._paused_at_cap:
            self._paused_at_cap = False
            self._end_cap_wait()
            if self._accept_retry_timer is None:
                self._retry_accepting()

    def _end_cap_wait(self) -> None:
        watcher, self._cap_watcher = self._cap_watcher, None
        if watcher is not None:
            watcher.close()
        timer, self._cap_timer = self._cap_timer, None
        if timer is not None:
            timer.close()

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
        self._end_cap_wait()
