"""Hijacked connections that can be asked to end: the server's side of a graceful WebSocket drain.

A hijacked connection belongs to its owner, and a shutdown does not wait for
it (as in Go). Some owners can end their connection gracefully when asked: a
WebSocket sends Close 1001 "going away" and waits for the client's Close. Such
an owner sets ``Connection.going_away`` to a ``GoingAway`` after the hijack:

- when a shutdown starts draining, the server calls ``notify()`` once for each
  of them (the owner's callback must not block: it sends, it does not wait);
- the owner calls ``finish()`` when its connection is over;
- the shutdown waits for every notified connection to finish until its
  deadline, and closes the rest, counting both (``ShutdownResult``).

The server knows nothing of the protocol spoken: only of this promise.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from gevent.event import Event

log = logging.getLogger("gshutdown")


class GoingAway:
    """An owner's promise to end its hijacked connection when told to.

    Args:
        notify: called once, with no arguments, in the server's greenlet when
            the shutdown's drain starts (or at once if it already has); it
            must not block. An exception in it is logged.
    """

    __slots__ = ("_notify", "finished", "notified")

    def __init__(self, notify: Callable[[], Any]) -> None:
        self._notify = notify
        self.notified = False
        #: Set by ``finish()``: the connection is over.
        self.finished = Event()

    def notify(self) -> None:
        """Ask the owner to end the connection (once; later calls do nothing)."""
        if self.notified or self.finished.is_set():
            return
        self.notified = True
        try:
            self._notify()
        except Exception:
            log.exception("going-away notice failed")

    def finish(self) -> None:
        """Called by the owner when its connection is over (closed cleanly or lost)."""
        self.finished.set()
