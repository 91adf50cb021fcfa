"""On-shutdown hooks: cleanup that runs as part of a graceful shutdown.

Two phases, as a careful service needs them:

- ``drain`` hooks run when the shutdown starts, while requests are still in
  flight: tell long polls, event streams and hijacked WebSockets to finish.
- ``stopped`` hooks run after the connections are drained: close database
  pools and Redis clients, flush files.

Hooks of a phase run one after another in registration order, each in its own
greenlet with its own timeout, all inside the shutdown deadline. A hook that
raises or hangs is logged and recorded, and the next one still runs.

Where hooks are registered, by who runs the shutdown:

- ``Server.register_on_shutdown``: one server's, for a library user who calls
  ``server.shutdown()`` directly;
- ``gshutdown.on_shutdown`` in an application module: the process's, for when
  the runner serves it (the CLI, ``gshutdown.run``, every worker). The
  decorator only records the hook here (``app_hooks``); the runner takes the
  list over when it starts, and runs its "stopped" hooks once every server has
  drained, whatever the number of listeners.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import gevent

log = logging.getLogger("gshutdown")

HookFn = Callable[[], Any]

#: A "stopped" hook still gets this many seconds past an expired deadline:
#: skipping it would leak the very resources it exists to close.
STOPPED_HOOK_MINIMUM = 0.5


class HookPhase(enum.StrEnum):
    """When an on-shutdown hook runs (see the module docstring)."""

    DRAIN = "drain"
    STOPPED = "stopped"


@dataclass(frozen=True)
class HookOutcome:
    """How one hook ended: ``"ok"``, ``"failed"`` or ``"timed out"``."""

    name: str
    phase: HookPhase
    outcome: str
    #: Seconds the hook ran.
    duration: float


@dataclass(frozen=True)
class ShutdownHook:
    fn: HookFn
    #: Seconds the hook may run (None: bounded by the shutdown deadline only).
    timeout: Optional[float]
    phase: HookPhase
    name: str


class HookList:
    """Hooks in registration order, run phase by phase."""

    def __init__(self) -> None:
        self.hooks: list[ShutdownHook] = []

    def add(
        self,
        fn: HookFn,
        *,
        timeout: Optional[float] = None,
        phase: Union[HookPhase, str] = HookPhase.STOPPED,
    ) -> ShutdownHook:
        if timeout is not None and timeout < 0:
            raise ValueError(f"hook timeout must be zero or more seconds, got {timeout!r}")
        hook = ShutdownHook(fn, timeout, HookPhase(phase), getattr(fn, "__qualname__", None) or repr(fn))
        self.hooks.append(hook)
        return hook

    def run(self, phase: HookPhase, deadline: Optional[float]) -> list[HookOutcome]:
        """Run the hooks of ``phase``; ``deadline`` is a ``time.monotonic()`` value."""
        outcomes = []
        for hook in self.hooks:
            if hook.phase is phase:
                outcomes.append(_run_one(hook, deadline))
        return outcomes


def _run_one(hook: ShutdownHook, deadline: Optional[float]) -> HookOutcome:
    limit = hook.timeout
    if deadline is not None:
        floor = STOPPED_HOOK_MINIMUM if hook.phase is HookPhase.STOPPED else 0.0
        left = max(deadline - time.monotonic(), floor)
        limit = left if limit is None else min(limit, left)
    began = time.monotonic()
    runner = gevent.spawn(hook.fn)
    runner.join(limit)
    if not runner.ready():
        runner.kill(block=True, timeout=1.0)
        outcome = "timed out"
        log.error("shutdown: %s hook %s timed out after %.2f s", hook.phase.value, hook.name, limit or 0.0)
    elif runner.successful():
        outcome = "ok"
    else:
        outcome = "failed"
        exc = runner.exception
        log.error(
            "shutdown: %s hook %s failed",
            hook.phase.value,
            hook.name,
            exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
        )
    return HookOutcome(hook.name, hook.phase, outcome, time.monotonic() - began)


def join_drain_hooks(runner: gevent.Greenlet, deadline: Optional[float]) -> list[HookOutcome]:
    """Wait (within ``deadline``) for a greenlet running ``HookList.run(DRAIN, ...)``."""
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    # Each hook is already bounded by the deadline (_run_one): give the runner
    # the time to kill an overrunning hook and record it as "timed out".
    runner.join(None if remaining is None else remaining + 1.5)
    if not runner.ready():
        runner.kill(block=True, timeout=1.0)
    value = runner.value
    return list(value) if isinstance(value, list) else []


#: Hooks an application module declares with ``on_shutdown``; the runner
#: (CLI or ``gshutdown.run``) runs them with its graceful shutdown.
app_hooks = HookList()


def on_shutdown(
    fn: Optional[HookFn] = None,
    *,
    timeout: Optional[float] = None,
    phase: Union[HookPhase, str] = HookPhase.STOPPED,
) -> Any:
    """Declare a shutdown hook from an application module.

    Usable as ``@on_shutdown``, ``@on_shutdown(phase="drain", timeout=5)``
    or ``on_shutdown(pool.close)``. Arguments as ``Server.register_on_shutdown``.
    """

    def register(func: HookFn) -> HookFn:
        app_hooks.add(func, timeout=timeout, phase=phase)
        return func

    return register(fn) if fn is not None else register
