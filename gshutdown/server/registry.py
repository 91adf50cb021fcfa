"""The registry of live connections, keyed per connection (per socket).

Invariant: the registry holds exactly the connections that are not yet in a
terminal state, each under its current state. It changes only in
``observe()``, which ``state.move()`` calls on every transition, so it can
never disagree with the connections themselves. (Keying by local address, as a
hand-rolled Go version does, would merge every accepted socket into one entry:
they all share the listener's address.)

Each state keeps its connections in the order they entered it (a dict, not
a set), so the first IDLE one is the one idle longest: reclaiming at the
connection cap takes the oldest first without sorting.

``wait_drained()`` is event-driven: the event is set by the very transition
that leaves no ACTIVE, NEW or IDLE connection, so a waiter wakes at once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from gevent.event import Event

from gshutdown.server.state import CLOSED, HIJACKED, NEW, ConnState, Stateful

if TYPE_CHECKING:  # pragma: no cover
    from gshutdown.server.connection import Connection

log = logging.getLogger("gshutdown")

#: The user's hook: called with (connection, new state) on every transition.
ConnStateHook = Callable[[object, ConnState], None]

_SERVED = (ConnState.NEW, ConnState.ACTIVE, ConnState.IDLE)


class ConnRegistry:
    """Live connections by state, and an event for "none left to serve"."""

    def __init__(self, hook: Optional[ConnStateHook] = None) -> None:
        self._by_state: dict[ConnState, dict[Connection, None]] = {
            state: {} for state in (ConnState.NEW, ConnState.ACTIVE, ConnState.IDLE, ConnState.HIJACKED)
        }
        self._hook = hook
        self._served = 0  # connections in NEW, ACTIVE or IDLE
        self._drained = Event()
        self._drained.set()
        # Connections a drain need not wait for: those whose own handler is
        # waiting for the shutdown to end (they cannot finish first).
        self._drain_floor = 0
        #: Called with no arguments whenever a served (NEW, ACTIVE, IDLE)
        #: connection leaves them: a slot under ``max_connections`` is free.
        self.on_slot_freed: Optional[Callable[[], None]] = None
        #: Connections that ever reached each terminal state.
        self.closed_total = 0
        self.hijacked_total = 0

    def observe(self, conn: Stateful, old: Optional[ConnState], new: ConnState) -> None:
        """Record a transition (called by ``state.move`` only), then run the hook."""
        by_state = self._by_state
        if old is not None:
            by_state[old].pop(conn, None)  # type: ignore[call-overload]
        if new is CLOSED:
            self.closed_total += 1
        else:
            by_state[new][conn] = None  # type: ignore[index]
            if new is HIJACKED:
                self.hijacked_total += 1
        # ACTIVE <-> IDLE, twice per request, leaves the served count alone.
        served_change = (new in _SERVED) - (old in _SERVED)
        if served_change:
            self._served += served_change
            self._update_drained()
            if served_change < 0 and self.on_slot_freed is not None:
                self.on_slot_freed()
        if self._hook is not None:
            try:
                self._hook(conn, new)
            except Exception:
                log.exception("conn_state hook failed for %r -> %s", conn, new.name)

    def _update_drained(self) -> None:
        if self._served <= self._drain_floor:
            self._drained.set()
        else:
            self._drained.clear()

    def set_drain_floor(self, count: int) -> None:
        """Count the registry drained with ``count`` connections still served."""
        self._drain_floor = count
        self._update_drained()

    def register(self, conn: Connection) -> None:
        """Enter a just-accepted connection, in state NEW."""
        self.observe(conn, None, NEW)

    def forget(self, conn: Connection) -> None:
        """Stop tracking a hijacked connection (its owner closed it or took it over)."""
        self._by_state[ConnState.HIJACKED].pop(conn, None)

    def in_state(self, *states: ConnState) -> list[Connection]:
        """A snapshot of the connections now in any of ``states``."""
        out: list[Connection] = []
        for state in states:
            out.extend(self._by_state[state])
        return out

    def all(self) -> list[Connection]:
        """A snapshot of every live connection, hijacked ones included."""
        return self.in_state(*self._by_state)

    def oldest_first(self, state: ConnState) -> Iterator[Connection]:
        """The connections in ``state``, the one that entered it first first.

        A live view: stop iterating once one of them has moved.
        """
        return iter(self._by_state[state])

    def count(self, state: ConnState) -> int:
        """How many connections are in ``state``."""
        return len(self._by_state[state])

    @property
    def served(self) -> int:
        """Connections NEW, ACTIVE or IDLE: what ``max_connections`` counts."""
        return self._served

    def counts(self) -> dict[str, int]:
        """Connections per live state, by state name (lower case)."""
        return {state.value: len(conns) for state, conns in self._by_state.items()}

    def __len__(self) -> int:
        return sum(len(conns) for conns in self._by_state.values())

    def wait_drained(self, timeout: Optional[float]) -> bool:
        """Block until no connection is NEW, ACTIVE or IDLE; False on timeout (seconds)."""
        return self._drained.wait(timeout)

    def drained(self) -> bool:
        """True when no connection is NEW, ACTIVE or IDLE (beyond the floor)."""
        return self._served <= self._drain_floor
