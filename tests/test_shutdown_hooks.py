"""On-shutdown hooks (order, timeouts, failures, the two phases), hijacked sockets, long polls."""

from __future__ import annotations

import logging
import threading
import time

import gevent
import pytest

from gshutdown import HookPhase
from tests.helpers import hello_app
from tests.shutdown_helpers import (
    EOF,
    on_drain,
    read_raw,
    recv_all,
    request_bytes,
    server_stats,
    wait_for_state_count,
)

UPGRADE = request_bytes("/ws", headers=(("Connection", "Upgrade"), ("Upgrade", "echo")))
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"


def test_hooks_of_a_phase_run_in_registration_order(serve):
    """Hooks run one after another in the order registered; each reports "ok"."""
    calls: list[str] = []
    st = serve(hello_app)

    def make(name: str):
        def hook() -> None:
            calls.append(name)
            gevent.sleep(0.01)  # a yield: the next hook must still wait for this one

        hook.__qualname__ = name
        return hook

    for name in ("first", "second", "third"):
        st.server.register_on_shutdown(make(name))
    result = st.shutdown(5)
    assert calls == ["first", "second", "third"]
    assert [(h.name, h.phase, h.outcome) for h in result.hooks] == [
        ("first", HookPhase.STOPPED, "ok"),
        ("second", HookPhase.STOPPED, "ok"),
        ("third", HookPhase.STOPPED, "ok"),
    ]


def test_hanging_hook_is_killed_at_its_timeout_and_the_next_hook_still_runs(serve):
    """A hook past its own timeout is killed ("timed out"); the one after it runs ("ok")."""
    calls: list[str] = []
    st = serve(hello_app)

    def hangs() -> None:
        calls.append("hangs")
        try:
            gevent.sleep(30)
        finally:
            calls.append("hangs killed")

    def after() -> None:
        calls.append("after")

    st.server.register_on_shutdown(hangs, timeout=0.2)
    st.server.register_on_shutdown(after)
    began = time.monotonic()
    result = st.shutdown(10)
    wall = time.monotonic() - began
    assert calls == ["hangs", "hangs killed", "after"]
    hung = result.hooks[0]
    assert hung.name.endswith("hangs") and hung.outcome == "timed out"
    assert 0.15 <= hung.duration < 1.0
    assert result.hooks[1].outcome == "ok"
    assert wall < 2.0


def test_failing_hook_is_logged_and_reported_and_the_next_hook_still_runs(serve, caplog):
    """A hook that raises is logged with its traceback, reported "failed", and does not stop the next."""
    caplog.set_level(logging.ERROR, logger="gshutdown")
    calls: list[str] = []
    st = serve(hello_app)

    def fails() -> None:
        raise RuntimeError("hook boom")

    st.server.register_on_shutdown(fails)
    st.server.register_on_shutdown(lambda: calls.append("after"))
    result = st.shutdown(5)
    assert [h.outcome for h in result.hooks] == ["failed", "ok"]
    assert calls == ["after"]
    logged = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], RuntimeError)]
    assert logged and "hook boom" in str(logged[0].exc_info[1])
    assert "fails" in logged[0].getMessage()


def test_drain_hook_still_running_at_the_shutdown_deadline_is_killed_and_reported(serve):
    """A drain hook with no timeout of its own that outlives shutdown(timeout=0.5) is
    killed and reported "timed out"; the hooks before it keep their outcome, the stopped
    hooks still run, and shutdown() returns shortly after the deadline."""
    calls: list[str] = []
    st = serve(hello_app)

    def quick() -> None:
        calls.append("quick")

    def slow() -> None:
        try:
            gevent.sleep(5)
            calls.append("slow finished")
        finally:
            gevent.sleep(0.2)  # its cleanup on the way out takes a moment (and yields)
            calls.append("slow ended")

    st.server.register_on_shutdown(quick, phase="drain")
    st.server.register_on_shutdown(slow, phase="drain")
    st.server.register_on_shutdown(lambda: calls.append("stopped"), phase="stopped")
    began = time.monotonic()
    future = st.shutdown_async(timeout=0.5)
    result = future.result(4)  # a hang here is a failure, not a slow pass
    wall = time.monotonic() - began
    assert wall < 2.0, f"shutdown(timeout=0.5) returned after {wall:.2f} s"
    assert calls == ["quick", "slow ended", "stopped"]
    assert [(h.name.rsplit(".", 1)[-1], h.phase, h.outcome) for h in result.hooks] == [
        ("quick", HookPhase.DRAIN, "ok"),
        ("slow", HookPhase.DRAIN, "timed out"),
        ("<lambda>", HookPhase.STOPPED, "ok"),
    ]


def test_drain_hooks_run_at_shutdown_start_and_stopped_hooks_after_connections_drained(serve):
    """ "drain" hooks run while a request is still in flight; "stopped" hooks run only
    after it ended and no connection is left to serve."""
    events: list[tuple[str, float, dict]] = []
    started = threading.Event()

    def app(environ, start_response):
        started.set()
        gevent.sleep(0.5)
        events.append(("request ended", time.monotonic(), {}))
        return hello_app(environ, start_response)

    st = serve(app)
    server = st.server

    def snapshot(name: str):
        def hook() -> None:
            events.append((name, time.monotonic(), dict(server.registry.counts(), phase=server.phase.value)))

        return hook

    server.register_on_shutdown(snapshot("drain"), phase="drain")
    server.register_on_shutdown(snapshot("stopped"), phase="stopped")
    sock = st.connect()
    try:
        sock.sendall(request_bytes("/"))
        assert started.wait(5)
        began = time.monotonic()
        future = st.shutdown_async(10)
        response = read_raw(sock, until_closed=True)
        sock.close()
        result = future.result(5)
    finally:
        sock.close()
    assert response.status == 200 and response.closes
    assert [name for name, _, _ in events] == ["drain", "request ended", "stopped"]
    (_, drained_at, at_drain), (_, ended_at, _), (_, stopped_at, at_stop) = events
    assert drained_at - began < 0.1, "drain hook did not run at the start of the shutdown"
    assert at_drain["active"] == 1 and at_drain["phase"] == "draining"
    assert at_stop["active"] == at_stop["idle"] == at_stop["new"] == 0
    assert at_stop["phase"] == "stopping"
    assert ended_at <= stopped_at
    assert [(h.phase, h.outcome) for h in result.hooks] == [(HookPhase.DRAIN, "ok"), (HookPhase.STOPPED, "ok")]


def _hijacking_app(sockets: list, *, detach: bool, hand_on: bool, done: threading.Event):
    """Upgrade to an echo protocol; echo until the peer closes or the socket is closed."""

    def echo(sock) -> None:
        try:
            while True:
                data = sock.recv(1024)
                if not data:
                    break
                sock.sendall(b"echo:" + data)
        except OSError:
            pass
        finally:
            sock.close()
            done.set()

    def app(environ, start_response):
        sock, extra = environ["gshutdown.hijack"]()
        assert extra == b""
        sock.sendall(SWITCHED)
        sockets.append(sock)
        if detach:
            environ["gshutdown.connection"].detach()
        if hand_on:
            gevent.spawn(echo, sock)
        else:
            echo(sock)
        return []

    return app


def test_hijacked_socket_is_notified_by_a_drain_hook_and_closed_at_the_end_of_shutdown(serve):
    """A drain hook can talk to a hijacked socket; the socket stays usable through the
    shutdown (a stopped hook still writes to it) and is closed at its end."""
    sockets: list = []
    done = threading.Event()
    st = serve(_hijacking_app(sockets, detach=False, hand_on=False, done=done))
    st.server.register_on_shutdown(lambda: [s.sendall(b"going away;") for s in sockets], phase="drain")
    st.server.register_on_shutdown(lambda: [s.sendall(b"last words;") for s in sockets], phase="stopped")
    client = st.connect()
    try:
        client.sendall(UPGRADE)
        assert read_raw(client).status == 101
        client.sendall(b"hi")
        assert client.recv(100) == b"echo:hi"
        result = st.shutdown(5)
        data, ending = recv_all(client, timeout=5)
    finally:
        client.close()
    assert (data, ending) == (b"going away;last words;", EOF)
    assert result.hijacked_closed == 1 and result.clean
    assert done.wait(5), "the hijack handler did not end when its socket was closed"
    assert server_stats(st)["connections"]["hijacked"] == 0


@pytest.mark.parametrize("hand_on", [True, False], ids=["handed-to-own-greenlet", "kept-by-handler"])
def test_detached_hijacked_socket_outlives_the_shutdown(serve, hand_on):
    """After conn.detach() the socket is the application's: shutdown neither closes it
    nor kills whoever serves it, so it still echoes after shutdown() returned."""
    sockets: list = []
    done = threading.Event()
    st = serve(_hijacking_app(sockets, detach=True, hand_on=hand_on, done=done))
    client = st.connect()
    try:
        client.sendall(UPGRADE)
        assert read_raw(client).status == 101
        result = st.shutdown(5)
        client.settimeout(2)
        client.sendall(b"after")
        reply = client.recv(100)
    finally:
        client.close()
    # Closing our end ends the echo loop, which closes its socket (no leak into teardown).
    assert done.wait(5)
    assert reply == b"echo:after"
    assert result.hijacked_closed == 0 and result.clean


def test_long_poll_waiting_on_shutting_down_returns_early_with_a_normal_response(serve):
    """A long poll waiting (up to 30 s) on environ['gshutdown.shutting_down'] answers
    normally, with Connection: close, as soon as the shutdown starts."""
    waiting = threading.Event()

    def app(environ, start_response):
        waiting.set()
        woke = environ["gshutdown.shutting_down"].wait(30)
        body = b"no news, shutting down" if woke else b"timed out"
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    st = serve(app)
    sock = st.connect()
    try:
        sock.sendall(request_bytes("/poll"))
        assert waiting.wait(5)
        wait_for_state_count(st, "active", 1)
        began = time.monotonic()
        future = st.shutdown_async(timeout=30)
        response = read_raw(sock, until_closed=True)
        answered = time.monotonic() - began
        sock.close()
        result = future.result(5)
    finally:
        sock.close()
    assert response.status == 200 and response.body == b"no news, shutting down"
    assert response.closes and response.ending == EOF
    assert answered < 0.5
    assert result.clean and result.duration < 0.5


def test_drain_hook_sees_the_shutdown_already_under_way(serve):
    """By the time drain hooks run, the listener is closed and keep-alive is off."""
    seen: dict = {}
    st = serve(hello_app)
    server = st.server

    def hook() -> None:
        seen.update(
            listening=hasattr(server, "socket"),
            keep_alive=server.keep_alives_enabled,
            shutting_down=server.shutting_down.is_set(),
        )

    began = on_drain(st)
    server.register_on_shutdown(hook, phase="drain")
    st.shutdown(5)
    assert began.is_set()
    assert seen == {"listening": False, "keep_alive": False, "shutting_down": True}
