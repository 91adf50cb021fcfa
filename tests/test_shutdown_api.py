"""The shutdown API: repeated, concurrent and in-handler calls, close(), keep-alive control,
stats(), and connections waiting in the listen backlog."""

from __future__ import annotations

import socket
import threading
import time

from gevent.event import Event as GEvent

from gshutdown import ConnState, ShutdownResult
from tests.helpers import hello_app, read_response, wait_until
from tests.shutdown_helpers import (
    EOF,
    close_all,
    fin_times,
    keep_alive_connections,
    read_raw,
    recv_all,
    request_bytes,
    server_stats,
    wait_for_state_count,
)


def _gated_app(release: GEvent, started: threading.Event):
    """``/wait`` blocks until ``release`` is set (in the hub); anything else says hello."""

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/wait":
            started.set()
            release.wait(10)
        return hello_app(environ, start_response)

    return app


def test_shutdown_is_idempotent_and_returns_the_same_result(serve):
    """A second shutdown() (even with another timeout) returns the very same result object."""
    runs: list[int] = []
    st = serve(hello_app)
    st.server.register_on_shutdown(lambda: runs.append(1))
    first = st.shutdown(5)
    second = st.shutdown(1)
    assert isinstance(first, ShutdownResult)
    assert second is first
    assert runs == [1], "the shutdown ran twice"


def test_concurrent_shutdown_calls_share_one_shutdown_and_one_result(serve):
    """Two shutdown() calls pending at once (a request in flight) get the same result."""
    release, started = GEvent(), threading.Event()
    runs: list[int] = []
    st = serve(_gated_app(release, started))
    st.server.register_on_shutdown(lambda: runs.append(1))
    sock = st.connect()
    try:
        sock.sendall(request_bytes("/wait"))
        assert started.wait(5)
        first, second = st.shutdown_async(10), st.shutdown_async(10)
        wait_until(lambda: server_stats(st)["phase"] == "draining")
        assert not first.done() and not second.done()
        st.call(release.set)
        assert read_raw(sock, until_closed=True).closes
        sock.close()
        assert first.result(5) is second.result(5)
    finally:
        sock.close()
    assert runs == [1]


def test_shutdown_called_from_a_request_handler_returns_and_its_response_still_arrives(serve):
    """A handler calling server.shutdown() neither deadlocks nor loses its own response;
    it gets the same result as any other caller, and idle connections are still closed."""
    got: list = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/stop":
            got.append(environ["gshutdown.connection"].server.shutdown(5))
            body = b"stopping: clean=%d" % got[0].clean
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]
        return hello_app(environ, start_response)

    st = serve(app)
    idle = keep_alive_connections(st, 3)
    sock = st.connect()
    try:
        began = time.monotonic()
        sock.sendall(request_bytes("/stop"))
        fins = fin_times(idle, began, timeout=5)
        response = read_raw(sock, timeout=5, until_closed=True)
        elapsed = time.monotonic() - began
    finally:
        close_all([*idle, sock])
    assert response.status == 200 and response.body == b"stopping: clean=1"
    assert response.closes and response.ending == EOF
    assert max(fins) < 0.5 and elapsed < 1.0
    assert st.shutdown(5) is got[0]
    wait_until(lambda: len(st.server.registry) == 0, timeout=2)
    assert server_stats(st)["phase"] == "stopped"


def test_shutdown_called_from_a_hijacked_handler_returns_to_it(serve):
    """Every caller gets the result, a handler that hijacked its socket included: it is
    not killed by the shutdown it is waiting for (its socket is closed at the end, as
    for any hijacked socket not detached)."""
    got: list = []
    asked = threading.Event()

    def app(environ, start_response):
        sock, _ = environ["gshutdown.hijack"]()
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: admin\r\n\r\n")
        if sock.recv(100) == b"shutdown":
            asked.set()
            try:
                got.append(environ["gshutdown.connection"].server.shutdown(5))
            except BaseException as exc:
                got.append(exc)
                raise
        return []

    st = serve(app)
    sock = st.connect()
    try:
        sock.sendall(request_bytes("/admin", headers=(("Connection", "Upgrade"), ("Upgrade", "admin"))))
        assert read_raw(sock).status == 101
        sock.sendall(b"shutdown")
        assert asked.wait(5)
        recv_all(sock, timeout=5)
        wait_until(lambda: got, timeout=5)
    finally:
        sock.close()
    assert isinstance(got[0], ShutdownResult), f"the handler got {got[0]!r}"
    assert st.shutdown(5) is got[0]


def test_close_closes_the_listener_and_every_connection_at_once(serve):
    """close(): idle, silent and busy connections all end within ~0.3 s, the busy one
    with no response bytes; new connects are refused."""
    release, started = GEvent(), threading.Event()
    st = serve(_gated_app(release, started))
    socks = [*keep_alive_connections(st, 3), st.connect()]
    busy = st.connect()
    socks.append(busy)
    try:
        busy.sendall(request_bytes("/wait"))
        assert started.wait(5)
        wait_for_state_count(st, "new", 1)
        address = st.address[:2]
        began = time.monotonic()
        st.call(st.server.close)
        ends = [recv_all(sock, timeout=5) for sock in socks]
        elapsed = time.monotonic() - began
    finally:
        close_all(socks)
    assert elapsed < 0.3, f"connections ended {elapsed:.3f} s after close()"
    assert all(data == b"" for data, _ in ends), ends
    try:
        socket.create_connection(address, timeout=2).close()
    except ConnectionRefusedError:
        pass
    else:
        raise AssertionError("close() left the listener accepting")
    wait_until(lambda: len(st.server.registry) == 0, timeout=2)
    for cid in st.conn_ids():
        assert st.states_of(cid)[-1] is ConnState.CLOSED
    assert server_stats(st)["phase"] == "stopped"


def test_close_during_a_shutdown_reports_the_request_it_killed_as_forced(serve):
    """Before: the shutdown said clean=True, forced=() although close() ended an in-flight request."""
    release, started = GEvent(), threading.Event()
    st = serve(_gated_app(release, started))
    with st.connect() as busy:
        busy.sendall(request_bytes("/wait"))
        assert started.wait(5)
        pending = st.shutdown_async(30)
        wait_until(lambda: server_stats(st)["phase"] == "draining")
        st.call(st.server.close)
        result = pending.result(10)
        assert recv_all(busy, timeout=5)[0] == b""  # killed: no response
    assert not result.clean
    [forced] = result.forced
    assert forced.state is ConnState.ACTIVE
    assert forced.request_line == "GET /wait HTTP/1.1"
    assert result.duration < 5


def test_close_before_shutdown_reports_every_connection_it_ended(serve):
    release, started = GEvent(), threading.Event()
    st = serve(_gated_app(release, started))
    idle = keep_alive_connections(st, 2)
    busy = st.connect()
    try:
        busy.sendall(request_bytes("/wait"))
        assert started.wait(5)
        wait_for_state_count(st, "idle", 2)
        st.call(st.server.close)
        st.call(st.server.close)  # a second close() reports nothing twice
        result = st.shutdown(5)
    finally:
        close_all([*idle, busy])
    assert not result.clean
    assert sorted(item.state.name for item in result.forced) == ["ACTIVE", "IDLE", "IDLE"]


def test_a_shutdown_that_fails_raises_in_every_caller_and_closes_what_is_left(serve):
    """An internal error in a shutdown step must not leave callers waiting forever."""
    st = serve(hello_app)
    socks = keep_alive_connections(st, 2)

    def broken_step():
        raise RuntimeError("a bug in a shutdown step")

    st.server._close_idle = broken_step
    try:
        first, second = st.shutdown_async(5), st.shutdown_async(5)
        for future in (first, second):
            error = future.exception(timeout=5)
            assert isinstance(error, RuntimeError) and "a bug" in str(error)
        assert [recv_all(sock, timeout=5)[0] for sock in socks] == [b"", b""]
    finally:
        close_all(socks)
    assert server_stats(st)["phase"] == "stopped"


def test_set_keep_alives_enabled_false_closes_idle_and_answers_close_true_restores(serve):
    """False: idle connections are closed and responses say Connection: close.
    True again: responses keep the connection alive, and it serves a second request."""
    st = serve(hello_app)
    idle = keep_alive_connections(st, 3)
    began = time.monotonic()
    st.call(st.server.set_keep_alives_enabled, False)
    fins = fin_times(idle, began, timeout=2)
    assert max(fins) < 0.3
    sock = st.connect()
    try:
        sock.sendall(request_bytes("/"))
        response = read_raw(sock, until_closed=True)
        assert response.status == 200 and response.closes and response.ending == EOF
    finally:
        sock.close()
    st.call(st.server.set_keep_alives_enabled, True)
    (sock,) = keep_alive_connections(st, 1)
    try:
        sock.sendall(request_bytes("/again"))
        status, headers, body = read_response(sock)
        assert status == 200 and "connection" not in headers and body == b"Hello, World!"
    finally:
        sock.close()
    assert server_stats(st)["phase"] == "serving"


def test_stats_report_counts_totals_and_every_phase_of_a_shutdown(serve):
    """stats(): connections per state, totals, and the phase: serving, draining (drain
    hook), forcing (as the deadline kills a connection), stopping (stopped hook), stopped."""
    release, started = GEvent(), threading.Event()
    phases: list[str] = []

    def on_state(conn, state) -> None:
        if state is ConnState.CLOSED:
            phases.append("closed during " + conn.server.phase.value)

    st = serve(_gated_app(release, started), conn_state=on_state)
    idle = keep_alive_connections(st, 2)
    busy = st.connect()
    try:
        busy.sendall(request_bytes("/wait"))
        assert started.wait(5)
        stats = server_stats(st)
        assert stats["connections"] == {"new": 0, "active": 1, "idle": 2, "hijacked": 0}
        assert stats["requests"] == 3 and stats["connections_closed"] == 0
        assert stats["connections_hijacked"] == 0 and stats["phase"] == "serving"
        server = st.server
        server.register_on_shutdown(lambda: phases.append("drain hook: " + server.phase.value), phase="drain")
        server.register_on_shutdown(lambda: phases.append("stopped hook: " + server.phase.value))
        future = st.shutdown_async(timeout=0.5)
        data, _ = recv_all(busy, timeout=5)
        result = future.result(5)
    finally:
        close_all([*idle, busy])
    assert data == b"" and not result.clean
    assert phases[0] == "drain hook: draining"
    assert phases[1:3] == ["closed during draining"] * 2  # the idle ones, at the grace deadline
    assert "closed during forcing" in phases
    assert phases[-1] == "stopped hook: stopping"
    stats = server_stats(st)
    assert stats["phase"] == "stopped"
    assert stats["connections"] == {"new": 0, "active": 0, "idle": 0, "hijacked": 0}
    assert stats["connections_closed"] == 3 and stats["requests"] == 3


def test_connections_waiting_in_the_backlog_when_shutdown_starts_are_served(serve):
    """Connections the kernel completed but the server had not accepted yet (accepting
    paused) are accepted and answered with Connection: close, not reset."""
    st = serve(hello_app)
    st.call(st.server.stop_accepting)
    waiting = [st.connect() for _ in range(3)]
    try:
        for index, sock in enumerate(waiting):
            sock.sendall(request_bytes(f"/backlog-{index}"))
        assert server_stats(st)["connections"]["new"] == 0  # none accepted yet
        result = st.shutdown(5)
        responses = [read_raw(sock, until_closed=True) for sock in waiting]
    finally:
        close_all(waiting)
    for response in responses:
        assert response.status == 200 and response.closes and response.ending == EOF, response
    assert result.clean


def test_backlog_connections_beyond_max_connections_are_served_not_reset(serve):
    """max_connections=1 with its one connection busy: clients queued in the kernel's
    backlog when the shutdown starts are answered once the busy one ends, not reset."""
    release, started = GEvent(), threading.Event()
    seen: list[str] = []

    def app(environ, start_response):
        seen.append(environ["PATH_INFO"])
        return _gated_app(release, started)(environ, start_response)

    st = serve(app, max_connections=1)
    busy = st.connect()
    waiting: list[socket.socket] = []
    try:
        busy.sendall(request_bytes("/wait"))
        assert started.wait(5)
        for index in range(3):
            sock = st.connect()  # returns once the kernel completed the handshake
            waiting.append(sock)
            sock.sendall(request_bytes(f"/queued-{index}"))
        assert server_stats(st)["connections"] == {"new": 0, "active": 1, "idle": 0, "hijacked": 0}
        future = st.shutdown_async(timeout=10)
        wait_until(lambda: server_stats(st)["phase"] == "draining")
        st.call(release.set)
        assert read_raw(busy, until_closed=True).status == 200
        busy.close()
        outcomes = [read_raw(sock, timeout=5, until_closed=True) for sock in waiting]
        result = future.result(10)
    finally:
        close_all([busy, *waiting])
    observed = [(o.status, o.ending, len(o.received)) for o in outcomes]
    assert all(o.status == 200 and o.closes for o in outcomes), f"queued clients saw {observed}; app saw {seen}"
    assert result.clean
