"""The greenlets that serve connections, kept between connections rather than spawned for each.

A gevent ``Pool`` spawn per connection (a new ``Greenlet``, its links, its
death's callbacks) was about 15k of the ~200k instructions a
``Connection: close`` request cost (issue 21). Here a greenlet that has
served a connection to its end waits, greenlet-idle, for the next one: a
connection accepted, or a parked one resumed, is handed to it by one
callback switching into it.

What the server's ``pool`` answers (``len()``, iteration, ``in``, ``join``,
``kill``) is about the greenlets serving a connection now, as with gevent's
pool: an idle one serves nothing and no shutdown waits for it. Once the
shutdown starts (``close()``) nothing is reused: idle greenlets end, busy
ones end with their connection, and what the shutdown accepts or resumes
gets a greenlet of its own. A hijacked connection keeps its greenlet, which
ends with its handler, as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import gevent
from gevent import Greenlet, getcurrent
from gevent.event import Event
from gevent.hub import get_hub
from gevent.lock import DummySemaphore

from gshutdown.server.state import HIJACKED

if TYPE_CHECKING:  # pragma: no cover
    from gshutdown.server.connection import Connection

#: Idle serving greenlets kept at most; past it, one that is done ends.
#: A burst of connections leaves this many behind (a few KiB each).
MAX_IDLE = 64


class ServingGreenlets:
    """The server's greenlets serving connections: busy ones counted, idle ones reused."""

    def __init__(self, max_idle: int = MAX_IDLE) -> None:
        self._busy: set[Greenlet] = set()
        self._idle: list[Greenlet] = []
        self._max_idle = max_idle
        self._run_callback = get_hub().loop.run_callback
        self._empty: Optional[Event] = None
        #: Set by ``close()``: no greenlet is reused from then on.
        self.closed = False
        # gevent's BaseServer links to its pool's semaphore; nothing bounds this one.
        self._semaphore = DummySemaphore()

    def __len__(self) -> int:
        return len(self._busy)

    def __iter__(self) -> Iterator[Greenlet]:
        return iter(list(self._busy))

    def __contains__(self, greenlet: object) -> bool:
        return greenlet in self._busy

    def serve(self, conn: Connection) -> Greenlet:
        """Serve ``conn`` (``conn.serve()``) on an idle greenlet, or a new one; returns it."""
        idle = self._idle
        if idle:
            worker = idle.pop()
            self._busy.add(worker)
            # As Greenlet.start(): it runs on the hub's next callbacks, not now.
            self._run_callback(worker.switch, conn)
            return worker
        # In a list it takes out: the greenlet keeps its arguments as long as it lives.
        worker = Greenlet(self._work, [conn])
        self._busy.add(worker)
        worker.start()
        return worker

    def spawn(self, fn: Callable[..., Any], *args: Any) -> Greenlet:
        """Run ``fn(*args)`` on a greenlet of its own, counted while it runs (gevent's ``Pool.spawn``)."""
        glet = Greenlet(fn, *args)
        self._busy.add(glet)
        glet.rawlink(self.discard)
        glet.start()
        return glet

    def _work(self, first: list[Connection]) -> None:
        conn = first.pop()
        worker = getcurrent()
        switch_to_hub = get_hub().switch
        busy = self._busy
        try:
            while True:
                conn.serve()
                if conn.state is HIJACKED or self.closed or len(self._idle) >= self._max_idle:
                    return  # the application's now (it keeps its greenlet), or not reused
                if conn.greenlet is worker:
                    conn.greenlet = None  # the worker moves on: nothing may kill it for this one
                busy.discard(worker)
                if not busy and self._empty is not None:
                    self._empty.set()
                self._idle.append(worker)
                del conn  # an idle greenlet must not keep the last connection alive
                conn = switch_to_hub()
                if conn is None:
                    return  # close(): idle greenlets end
        finally:
            self.discard(worker)

    def discard(self, greenlet: Any) -> None:
        """Stop counting ``greenlet`` (a detached hijacked connection's: see ``Connection.detach``)."""
        busy = self._busy
        busy.discard(greenlet)
        if not busy and self._empty is not None:
            self._empty.set()

    def close(self) -> None:
        """Reuse nothing from now on, and end the idle greenlets."""
        self.closed = True
        idle, self._idle = self._idle, []
        for worker in idle:
            self._run_callback(worker.switch, None)

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until no greenlet serves a connection; False if ``timeout`` (seconds) passed first."""
        if not self._busy:
            return True
        self._empty = Event()
        return bool(self._empty.wait(timeout))

    def kill(self, block: bool = True, timeout: Optional[float] = None) -> None:
        """Kill the greenlets serving connections (``gevent.killall``)."""
        gevent.killall(list(self._busy), block=block, timeout=timeout)
