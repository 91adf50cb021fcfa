"""registry.py: live connections by state, drained event, the user's hook.

Fake connections (a ``state`` and an ``observer``) are driven through
``state.move`` exactly as ``conn.py`` drives real ones; no sockets.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import gevent
import pytest

from gshutdown.server.registry import ConnRegistry
from gshutdown.server.state import ConnState, move

LISTENER = ("127.0.0.1", 8080)


class FakeConn:
    """Like an accepted connection: every one shares the listener's local address."""

    def __init__(self, registry: ConnRegistry, name: str) -> None:
        self.name = name
        self.local_address = LISTENER
        self.state = ConnState.NEW
        self.observer = registry.observe
        registry.register(self)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<FakeConn {self.name}>"


def conns(registry: ConnRegistry, count: int) -> list[FakeConn]:
    return [FakeConn(registry, f"c{i}") for i in range(count)]


def test_new_registry_is_empty_and_drained() -> None:
    registry = ConnRegistry()
    assert len(registry) == 0
    assert registry.counts() == {"new": 0, "active": 0, "idle": 0, "hijacked": 0}
    assert registry.drained()
    assert registry.wait_drained(0) is True


def test_connections_sharing_a_local_address_each_get_their_own_entry() -> None:
    registry = ConnRegistry()
    many = conns(registry, 5)
    assert {c.local_address for c in many} == {LISTENER}
    assert len(registry) == 5
    assert registry.counts()["new"] == 5
    move(many[0], ConnState.CLOSED)
    assert len(registry) == 4
    assert set(registry.all()) == set(many[1:])


def test_counts_follow_every_transition() -> None:
    registry = ConnRegistry()
    a, b, c, d = conns(registry, 4)
    move(a, ConnState.ACTIVE)
    move(b, ConnState.ACTIVE)
    move(b, ConnState.IDLE)
    move(c, ConnState.ACTIVE)
    move(c, ConnState.HIJACKED)
    assert registry.counts() == {"new": 1, "active": 1, "idle": 1, "hijacked": 1}
    assert registry.in_state(ConnState.NEW) == [d]
    assert registry.in_state(ConnState.ACTIVE) == [a]
    assert registry.in_state(ConnState.IDLE) == [b]
    assert registry.in_state(ConnState.HIJACKED) == [c]
    assert set(registry.in_state(ConnState.IDLE, ConnState.ACTIVE)) == {a, b}
    move(b, ConnState.ACTIVE)
    move(a, ConnState.CLOSED)
    move(d, ConnState.CLOSED)
    assert registry.counts() == {"new": 0, "active": 1, "idle": 0, "hijacked": 1}
    assert len(registry) == 2
    assert registry.closed_total == 2
    assert registry.hijacked_total == 1


def test_snapshots_are_copies_unaffected_by_later_transitions() -> None:
    registry = ConnRegistry()
    a, b = conns(registry, 2)
    snapshot = registry.in_state(ConnState.NEW)
    everything = registry.all()
    move(a, ConnState.CLOSED)
    move(b, ConnState.ACTIVE)
    assert set(snapshot) == {a, b}
    assert set(everything) == {a, b}
    snapshot.clear()
    assert registry.in_state(ConnState.ACTIVE) == [b]


def test_forget_drops_a_hijacked_connection_only() -> None:
    registry = ConnRegistry()
    a, b = conns(registry, 2)
    move(a, ConnState.ACTIVE)
    move(a, ConnState.HIJACKED)
    registry.forget(a)  # type: ignore[arg-type]
    assert registry.counts()["hijacked"] == 0
    assert registry.hijacked_total == 1
    registry.forget(b)  # type: ignore[arg-type]
    assert registry.in_state(ConnState.NEW) == [b]


def test_drained_only_when_nothing_is_new_active_or_idle() -> None:
    registry = ConnRegistry()
    a, b, c = conns(registry, 3)
    assert not registry.drained()
    move(a, ConnState.CLOSED)
    move(b, ConnState.ACTIVE)
    move(b, ConnState.IDLE)
    assert not registry.drained()
    move(b, ConnState.CLOSED)
    assert not registry.drained()
    move(c, ConnState.ACTIVE)
    move(c, ConnState.HIJACKED)  # hijacked connections are not the server's to drain
    assert registry.drained()
    assert registry.wait_drained(0) is True


def test_wait_drained_times_out_while_a_connection_is_served() -> None:
    registry = ConnRegistry()
    (a,) = conns(registry, 1)
    move(a, ConnState.ACTIVE)
    started = time.monotonic()
    assert registry.wait_drained(0.05) is False
    assert time.monotonic() - started >= 0.04


def test_wait_drained_returns_as_soon_as_the_last_served_connection_leaves() -> None:
    registry = ConnRegistry()
    a, b = conns(registry, 2)
    move(a, ConnState.ACTIVE)
    move(b, ConnState.ACTIVE)
    move(b, ConnState.IDLE)
    woke: list[float] = []

    def waiter() -> bool:
        result = registry.wait_drained(30)
        woke.append(time.monotonic())
        return result

    glet = gevent.spawn(waiter)
    gevent.idle()  # the waiter is now blocked in wait_drained
    assert not glet.ready()
    move(a, ConnState.CLOSED)
    gevent.idle()
    assert not glet.ready(), "woke while an IDLE connection was still served"
    closed_at = time.monotonic()
    move(b, ConnState.CLOSED)
    glet.join(5)
    assert glet.ready()
    assert glet.value is True
    assert woke[0] - closed_at < 1.0  # at once, nowhere near the 30 s timeout


def test_drained_event_is_cleared_again_by_a_new_connection() -> None:
    registry = ConnRegistry()
    (a,) = conns(registry, 1)
    move(a, ConnState.CLOSED)
    assert registry.wait_drained(0) is True
    (b,) = conns(registry, 1)
    assert registry.wait_drained(0) is False
    move(b, ConnState.CLOSED)
    assert registry.wait_drained(0) is True


def test_drain_floor_counts_the_registry_drained_with_that_many_served() -> None:
    registry = ConnRegistry()
    a, b = conns(registry, 2)
    move(a, ConnState.ACTIVE)
    move(b, ConnState.ACTIVE)
    registry.set_drain_floor(1)
    assert not registry.drained()
    glet = gevent.spawn(registry.wait_drained, 30)
    gevent.idle()
    assert not glet.ready()
    move(b, ConnState.IDLE)  # two still served, one above the floor
    gevent.idle()
    assert not glet.ready()
    move(b, ConnState.CLOSED)  # one served, which the floor allows
    glet.join(5)
    assert glet.value is True
    assert registry.drained()
    registry.set_drain_floor(0)
    assert not registry.drained()
    assert registry.wait_drained(0) is False
    move(a, ConnState.CLOSED)
    assert registry.drained()


def test_raising_the_drain_floor_wakes_a_waiter() -> None:
    registry = ConnRegistry()
    (a,) = conns(registry, 1)
    move(a, ConnState.ACTIVE)
    glet = gevent.spawn(registry.wait_drained, 30)
    gevent.idle()
    assert not glet.ready()
    registry.set_drain_floor(1)
    glet.join(5)
    assert glet.value is True


def test_hook_sees_every_transition_with_the_new_state() -> None:
    seen: list[tuple[object, ConnState]] = []
    registry = ConnRegistry(hook=lambda conn, state: seen.append((conn, state)))
    (a,) = conns(registry, 1)
    move(a, ConnState.ACTIVE)
    move(a, ConnState.IDLE)
    move(a, ConnState.ACTIVE)
    move(a, ConnState.HIJACKED)
    assert seen == [
        (a, ConnState.NEW),
        (a, ConnState.ACTIVE),
        (a, ConnState.IDLE),
        (a, ConnState.ACTIVE),
        (a, ConnState.HIJACKED),
    ]


def test_hook_runs_after_the_registry_is_updated() -> None:
    observed: list[Optional[dict[str, int]]] = []
    registry: ConnRegistry

    def hook(conn: object, state: ConnState) -> None:
        observed.append(registry.counts())

    registry = ConnRegistry(hook=hook)
    (a,) = conns(registry, 1)
    move(a, ConnState.ACTIVE)
    assert observed[-1] == {"new": 0, "active": 1, "idle": 0, "hijacked": 0}


def test_hook_exception_is_logged_and_does_not_break_the_transition(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[ConnState] = []

    def hook(conn: object, state: ConnState) -> None:
        calls.append(state)
        raise ValueError("hook bug")

    registry = ConnRegistry(hook=hook)
    with caplog.at_level(logging.ERROR, logger="gshutdown"):
        (a,) = conns(registry, 1)
        move(a, ConnState.ACTIVE)
        move(a, ConnState.CLOSED)
    assert calls == [ConnState.NEW, ConnState.ACTIVE, ConnState.CLOSED]
    assert a.state is ConnState.CLOSED
    assert len(registry) == 0
    assert registry.closed_total == 1
    assert registry.drained()
    failures = [r for r in caplog.records if "conn_state hook failed" in r.getMessage()]
    assert len(failures) == 3
    assert all(r.levelno == logging.ERROR and r.exc_info is not None for r in failures)
    assert "CLOSED" in failures[-1].getMessage()
    assert isinstance(failures[-1].exc_info[1], ValueError)
