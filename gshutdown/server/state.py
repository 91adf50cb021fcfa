"""Connection states and the one function that moves a connection between them.

Theory of operation: a connection is NEW when accepted, ACTIVE from the first
byte of a request until its response is complete, IDLE between requests on a
kept-alive connection, and ends in exactly one terminal state: CLOSED, or
HIJACKED when the application took the socket over. The meanings are those of
Go's ``http.ConnState``, with one rule Go gets wrong (golang/go#65802): a
connection that has received any byte of its next request is ACTIVE, not IDLE,
so a graceful shutdown never closes a connection under a request it has begun
to read.

Everything that changes a connection's state goes through ``move()``: it
rejects edges not in ``TRANSITIONS`` and then tells the connection's observer
(the server's registry, which in turn calls the user's ``conn_state`` hook).
"""

from __future__ import annotations

import enum
from typing import Mapping, Optional, Protocol


class ConnState(enum.Enum):
    """Where a connection is in its life; see the module docstring."""

    NEW = "new"
    ACTIVE = "active"
    IDLE = "idle"
    HIJACKED = "hijacked"
    CLOSED = "closed"

    # Members are singletons, so identity is equality: hash them as objects
    # rather than through Enum.__hash__, a Python call on every dict and set
    # lookup (the registry does several per request).
    __hash__ = object.__hash__

    @property
    def terminal(self) -> bool:
        """True for HIJACKED and CLOSED: nothing follows them."""
        return self in TERMINAL_STATES


TRANSITIONS: Mapping[ConnState, frozenset[ConnState]] = {
    ConnState.NEW: frozenset({ConnState.ACTIVE, ConnState.CLOSED}),
    ConnState.ACTIVE: frozenset({ConnState.IDLE, ConnState.HIJACKED, ConnState.CLOSED}),
    ConnState.IDLE: frozenset({ConnState.ACTIVE, ConnState.CLOSED}),
    ConnState.HIJACKED: frozenset(),
    ConnState.CLOSED: frozenset(),
}
#: The states nothing follows: HIJACKED and CLOSED.
TERMINAL_STATES = frozenset(state for state, after in TRANSITIONS.items() if not after)

# The members as module globals, for the hot paths here and in conn, wsgi and
# registry: ``ConnState.ACTIVE`` is an attribute lookup through the enum's
# metaclass (about 0.1 us in CPython 3.11), a global is a dictionary hit.
NEW = ConnState.NEW
ACTIVE = ConnState.ACTIVE
IDLE = ConnState.IDLE
HIJACKED = ConnState.HIJACKED
CLOSED = ConnState.CLOSED


class IllegalTransition(RuntimeError):
    """A move not in ``TRANSITIONS`` was attempted (a bug in gshutdown)."""


class StateObserver(Protocol):
    def __call__(self, conn: Stateful, old: Optional[ConnState], new: ConnState) -> None: ...


class Stateful(Protocol):
    state: ConnState
    observer: StateObserver


def move(conn: Stateful, new: ConnState) -> None:
    """Move ``conn`` to ``new`` and notify its observer.

    Raises:
        IllegalTransition: ``new`` is not reachable from the current state.
    """
    old = conn.state
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{old.name} -> {new.name}")
    conn.state = new
    conn.observer(conn, old, new)
