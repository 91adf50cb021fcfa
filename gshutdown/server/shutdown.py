"""What a shutdown reports: the server's phase, the connections it forced, its result."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from gshutdown.server.hooks import HookOutcome
from gshutdown.server.state import ConnState


class ShutdownPhase(enum.Enum):
    """Where the server is in its life."""

    SERVING = "serving"
    DRAINING = "draining"
    FORCING = "forcing"
    STOPPING = "stopping"  # running "stopped" hooks, joining greenlets
    STOPPED = "stopped"


@dataclass(frozen=True)
class ForcedConnection:
    """A connection that was still open at the shutdown deadline."""

    state: ConnState
    peer: Any
    request_line: str
    #: Seconds since the connection was accepted.
    age: float


@dataclass(frozen=True)
class ShutdownResult:
    """What ``Server.shutdown()`` did."""

    #: True when every connection finished on its own before the deadline.
    clean: bool
    #: Connections force-closed at the deadline.
    forced: tuple[ForcedConnection, ...] = ()
    #: Hijacked sockets still open at the end, closed by the server.
    hijacked_closed: int = 0
    hooks: tuple[HookOutcome, ...] = ()
    #: Seconds from the start of the shutdown to its end.
    duration: float = 0.0
    #: Idle connections closed by step 3.
    idle_closed: int = 0
    #: Periodic jobs killed because they were still running at the deadline.
    jobs_killed: tuple[str, ...] = ()
    #: Hijacked connections asked to end at the drain's start (WebSockets, sent
    #: Close 1001; see ``gshutdown.server.going_away``) that ended before the deadline.
    websockets_closed: int = 0
    #: Those still open at the deadline, closed by the server.
    websockets_forced: int = 0
