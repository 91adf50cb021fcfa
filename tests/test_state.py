"""state.py: the TRANSITIONS table is the only way between states."""

from __future__ import annotations

import itertools
from typing import Optional

import pytest

import gshutdown
from gshutdown.server.state import TRANSITIONS, ConnState, IllegalTransition, move


class FakeConn:
    """The smallest Stateful: a state and an observer that records calls."""

    def __init__(self, state: ConnState) -> None:
        self.state = state
        self.calls: list[tuple[object, Optional[ConnState], ConnState]] = []

    def observer(self, conn: object, old: Optional[ConnState], new: ConnState) -> None:
        self.calls.append((conn, old, new))


LEGAL = [(old, new) for old, targets in TRANSITIONS.items() for new in sorted(targets, key=lambda s: s.value)]
ILLEGAL = [(old, new) for old, new in itertools.product(ConnState, ConnState) if new not in TRANSITIONS[old]]


def _id(edge: tuple[ConnState, ConnState]) -> str:
    return f"{edge[0].name}->{edge[1].name}"


def test_table_covers_every_state_and_only_states() -> None:
    assert set(TRANSITIONS) == set(ConnState)
    for targets in TRANSITIONS.values():
        assert targets <= set(ConnState)


def test_table_is_the_documented_go_style_machine() -> None:
    assert {_id(edge) for edge in LEGAL} == {
        "NEW->ACTIVE",
        "NEW->CLOSED",
        "ACTIVE->IDLE",
        "ACTIVE->HIJACKED",
        "ACTIVE->CLOSED",
        "IDLE->ACTIVE",
        "IDLE->CLOSED",
    }


@pytest.mark.parametrize("edge", LEGAL, ids=_id)
def test_every_legal_edge_moves_and_notifies_the_observer_once(edge: tuple[ConnState, ConnState]) -> None:
    old, new = edge
    conn = FakeConn(old)
    move(conn, new)
    assert conn.state is new
    assert conn.calls == [(conn, old, new)]


@pytest.mark.parametrize("edge", ILLEGAL, ids=_id)
def test_every_illegal_edge_raises_and_changes_nothing(edge: tuple[ConnState, ConnState]) -> None:
    old, new = edge
    conn = FakeConn(old)
    with pytest.raises(IllegalTransition) as raised:
        move(conn, new)
    assert conn.state is old
    assert conn.calls == []
    assert old.name in str(raised.value)
    assert new.name in str(raised.value)


def test_no_state_moves_to_itself() -> None:
    assert all(state not in TRANSITIONS[state] for state in ConnState)


@pytest.mark.parametrize("state", list(ConnState), ids=lambda s: s.name)
def test_terminal_means_no_way_out(state: ConnState) -> None:
    assert state.terminal is (state in (ConnState.CLOSED, ConnState.HIJACKED))
    assert state.terminal is (not TRANSITIONS[state])


def test_every_live_state_can_close_directly() -> None:
    for state in ConnState:
        if not state.terminal:
            assert ConnState.CLOSED in TRANSITIONS[state]


def test_only_an_active_connection_can_be_hijacked() -> None:
    assert [s for s in ConnState if ConnState.HIJACKED in TRANSITIONS[s]] == [ConnState.ACTIVE]


def test_a_whole_life_walks_through_move() -> None:
    conn = FakeConn(ConnState.NEW)
    path = [ConnState.ACTIVE, ConnState.IDLE, ConnState.ACTIVE, ConnState.IDLE, ConnState.CLOSED]
    for state in path:
        move(conn, state)
    assert [new for _, _, new in conn.calls] == path
    assert [old for _, old, _ in conn.calls] == [ConnState.NEW, *path[:-1]]
    with pytest.raises(IllegalTransition):
        move(conn, ConnState.ACTIVE)
    assert conn.state is ConnState.CLOSED


def test_illegal_transition_is_exported_and_a_runtime_error() -> None:
    assert gshutdown.IllegalTransition is IllegalTransition
    assert gshutdown.TRANSITIONS is TRANSITIONS
    assert issubclass(IllegalTransition, RuntimeError)
