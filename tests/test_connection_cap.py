"""At the connection cap, idle clients do not starve new ones (issue 20, item 3).

``max_connections`` counts connections (the registry's NEW, ACTIVE and IDLE
ones). When a new connection waits at the cap, the server reclaims a slot as
nginx does with its reusable connections: the oldest idle keep-alive
connection first, then the oldest connection that has not sent a complete
request head (answered 408). A request whose head is complete is never
touched; a closing connection lingering after its FIN holds no slot; hijacked
connections have a limit of their own (``max_hijacked``) and take no slot.

Only connections quiet for ``RECLAIM_MIN_AGE`` seconds are reclaimed; these
tests shorten it, and wait (bounded polls) until the connections are that old.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Iterator

import pytest
from gevent.event import Event as GEvent

from gshutdown import ConnState
from gshutdown.cli import parse_args
from gshutdown.server import http_server
from tests.helpers import ServerThread, hello_app, read_response, wait_until
from tests.shutdown_helpers import close_all, has_fin, keep_alive_connections, request_bytes

NEW, ACTIVE, IDLE, HIJACKED, CLOSED = (
    ConnState.NEW,
    ConnState.ACTIVE,
    ConnState.IDLE,
    ConnState.HIJACKED,
    ConnState.CLOSED,
)
Serve = Callable[..., ServerThread]
MIN_AGE = 0.3
PARTIAL_HEAD = b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Slow: "


@pytest.fixture(autouse=True)
def short_reclaim_age(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_server, "RECLAIM_MIN_AGE", MIN_AGE, raising=False)


class GatedApp:
    """``/wait`` blocks until ``release`` is set (in the hub).

    ``/keep`` hijacks the socket and holds it until the peer closes.
    """

    def __init__(self) -> None:
        self.release = GEvent()
        self.lock = threading.Lock()
        self.started: list[str] = []
        self.kept: list[socket.socket] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ["PATH_INFO"]
        with self.lock:
            self.started.append(path)
        if path == "/keep":
            sock, _ = environ["gshutdown.hijack"]()
            sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
            with self.lock:
                self.kept.append(sock)
            # A handler owns its hijacked socket while it runs (the server
            # closes it when the handler returns): hold it until the peer leaves.
            sock.recv(1)
            return []
        if path.startswith("/wait"):
            self.release.wait(30)
        return hello_app(environ, start_response)

    def count(self, prefix: str) -> int:
        with self.lock:
            return sum(1 for path in self.started if path.startswith(prefix))


@pytest.fixture
def app() -> Iterator[GatedApp]:
    gated = GatedApp()
    yield gated
    for sock in gated.kept:
        sock.close()


def conn_ids_by_port(st: ServerThread) -> dict[int, int]:
    """Connection id by the client's port, for the live connections."""
    return st.call(lambda: {c.peer[1]: c.id for c in st.server.registry.all()})


def wait_quiet_for(st: ServerThread, seconds: float) -> None:
    """Until every IDLE connection has been idle, and every unfinished head begun, ``seconds`` ago."""

    def quiet() -> bool:
        now = time.monotonic()
        conns = st.server.registry.all()
        return all(
            (c.state is not IDLE or now - getattr(c, "idle_since", 0.0) >= seconds)
            and (not getattr(c, "reading_head", False) or now - c.head_started >= seconds)
            for c in conns
        )

    wait_until(lambda: st.call(quiet))


def served_count(st: ServerThread) -> int:
    """Connections NEW, ACTIVE or IDLE: what max_connections counts."""
    counts = st.call(st.server.registry.counts)
    return int(counts["new"] + counts["active"] + counts["idle"])


def test_at_the_cap_a_new_client_is_served_and_the_oldest_idle_connection_reclaimed(serve: Serve) -> None:
    # Long timeouts: only reclaiming can make room in the time the test waits.
    st = serve(hello_app, max_connections=10, idle_timeout=60)
    idle = keep_alive_connections(st, 10)
    newcomer = None
    try:
        ids = conn_ids_by_port(st)
        wait_quiet_for(st, MIN_AGE)
        newcomer = st.connect()
        newcomer.sendall(request_bytes("/new"))
        status, _, body = read_response(newcomer, timeout=10)
        assert (status, body) == (200, b"Hello, World!")
        assert served_count(st) <= 10
        # The one idle longest made room, with a FIN; the other nine are served as before.
        assert has_fin(idle[0], timeout=5)
        assert st.states_of(ids[idle[0].getsockname()[1]]) == [NEW, ACTIVE, IDLE, CLOSED]
        for sock in idle[1:]:
            assert not has_fin(sock, timeout=0)
            sock.sendall(request_bytes("/again"))
            assert read_response(sock, timeout=10)[0] == 200
    finally:
        close_all([*idle, *([newcomer] if newcomer else [])])


def test_a_request_in_progress_is_never_reclaimed(serve: Serve, app: GatedApp) -> None:
    st = serve(app, max_connections=2, idle_timeout=60)
    busy = st.connect()
    idle = keep_alive_connections(st, 1)[0]
    socks = [busy, idle]
    try:
        busy.sendall(request_bytes("/wait-1"))
        wait_until(lambda: app.count("/wait") == 1)
        wait_quiet_for(st, MIN_AGE)
        second = st.connect()
        socks.append(second)
        second.sendall(request_bytes("/wait-2"))
        wait_until(lambda: app.count("/wait") == 2)  # served: the idle one made room
        assert has_fin(idle, timeout=5)
        third = st.connect()
        socks.append(third)
        third.sendall(request_bytes("/third"))
        # The server looked for a slot to reclaim and found none: both requests run on.
        wait_until(lambda: st.call(lambda: st.server._cap_timer is not None))
        assert st.call(lambda: st.server.registry.counts()["active"]) == 2
        third.setblocking(False)
        with pytest.raises(BlockingIOError):
            third.recv(1)
        third.setblocking(True)
        st.call(app.release.set)
        for sock in (busy, second):
            status, _, body = read_response(sock, timeout=10)
            assert (status, body) == (200, b"Hello, World!")
        # Once one of them has been idle long enough, the third is served.
        assert read_response(third, timeout=10)[0] == 200
    finally:
        close_all(socks)


def test_unfinished_heads_are_reclaimed_after_idle_ones_oldest_first(serve: Serve, app: GatedApp) -> None:
    st = serve(app, max_connections=4, idle_timeout=60, read_header_timeout=60)
    slow = []
    for _ in range(2):
        sock = st.connect()
        sock.sendall(PARTIAL_HEAD)
        slow.append(sock)
    wait_until(lambda: st.call(lambda: st.server.registry.counts()["active"]) == 2)
    idle = keep_alive_connections(st, 2)
    newcomers: list[socket.socket] = []
    try:
        ids = conn_ids_by_port(st)
        order = [ids[sock.getsockname()[1]] for sock in (*idle, *slow)]
        wait_quiet_for(st, MIN_AGE)
        for index in range(4):
            sock = st.connect()
            newcomers.append(sock)
            sock.sendall(request_bytes(f"/wait-{index}"))
            wait_until(lambda index=index: app.count("/wait") == index + 1, timeout=10)
            assert served_count(st) <= 4
        closed = [cid for cid, state in st.transitions if state is CLOSED]
        assert closed == order  # idle ones first, then the unfinished heads, each oldest first
        # Nobody waits now: the server is not about to look for more to reclaim.
        assert st.call(lambda: st.server._cap_timer) is None
        for sock in idle:
            assert has_fin(sock, timeout=5)
        for sock in slow:
            status, headers, _ = read_response(sock, timeout=5)
            assert status == 408 and headers.get("connection") == "close"
        # The four requests in progress were never touched.
        assert st.call(lambda: st.server.registry.counts()["active"]) == 4
        st.call(app.release.set)
        for sock in newcomers:
            assert read_response(sock, timeout=10)[0] == 200
    finally:
        close_all([*slow, *idle, *newcomers])


def test_a_lingering_close_holds_no_slot(serve: Serve) -> None:
    # The closing client keeps its end open: the server lingers (up to 30 s) after its FIN.
    st = serve(hello_app, max_connections=1, linger_timeout=30)
    closing = st.connect()
    other = st.connect()
    try:
        closing.sendall(request_bytes("/bye", headers=(("Connection", "close"),)))
        status, headers, _ = read_response(closing)
        assert status == 200 and headers.get("connection") == "close"
        other.sendall(request_bytes("/next"))
        assert read_response(other, timeout=10)[0] == 200
        # All along, the first client kept its end open: the server was still lingering on it.
        assert st.call(lambda: len(st.server.pool)) >= 1
    finally:
        close_all([closing, other])


def test_hijacked_connections_take_no_slot_and_have_a_limit_of_their_own(serve: Serve, app: GatedApp) -> None:
    st = serve(app, max_connections=2, max_hijacked=2)
    hijacked = []
    plain: list[socket.socket] = []
    try:
        for _ in range(2):
            sock = st.connect()
            hijacked.append(sock)
            sock.sendall(request_bytes("/keep"))
            assert sock.recv(12) == b"HTTP/1.1 101"
        wait_until(lambda: st.call(lambda: st.server.registry.counts()["hijacked"]) == 2)
        # Both slots are still plain HTTP's.
        plain = keep_alive_connections(st, 2)
        assert st.call(lambda: st.server.registry.counts()) == {"new": 0, "active": 0, "idle": 2, "hijacked": 2}
        # A third hijack is refused with 503; the connection is closed.
        plain[0].sendall(request_bytes("/keep"))
        status, headers, _ = read_response(plain[0], timeout=10)
        assert status == 503 and headers.get("connection") == "close"
        assert st.call(lambda: st.server.registry.counts()["hijacked"]) == 2
        plain[1].sendall(request_bytes("/"))
        assert read_response(plain[1], timeout=10)[0] == 200
    finally:
        close_all([*hijacked, *plain])


def test_max_hijacked_is_a_setting() -> None:
    assert parse_args(["tests.apps.hello:app"]).max_hijacked == 1000
    assert parse_args(["--max-hijacked", "5", "tests.apps.hello:app"]).max_hijacked == 5
    assert parse_args(["--max-hijacked", "none", "tests.apps.hello:app"]).max_hijacked is None
