"""Races at the start of a shutdown.

First, a connect that the kernel completes between the shutdown's last accept
and the close of the listener: once in a blue moon under load, it is made
happen here, on purpose, from a hook in the server's shutdown. Such a
connection sat in the listen queue that the close throws away, and its client,
told it was connected, got a reset; the listener is now sealed before the last
accepts, so the connect is refused instead, and what was queued when it was
sealed is still served.

Then a request crossing the start of a shutdown on an idle connection, many times over.

Each round: a fresh server with five idle keep-alive connections, a shutdown,
and on each connection one request sent at a different small delay around the
idle grace period (the first one without waiting for the shutdown to begin).
Every outcome is classified; only two are allowed:

- served: a complete 200 response, carrying ``Connection: close`` whenever the
  application saw the request after the shutdown began, and the application
  saw it exactly once;
- closed unread: the connection ended (FIN or reset) before any response byte
  and the application never saw the request (a client may safely retry).

Forbidden: the application saw it but no complete response came (read then
drop), some bytes then an end (cut mid-response), or a hang.
"""

from __future__ import annotations

import concurrent.futures
import errno
import random
import select
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest

from gshutdown.server.http_server import HTTPServer
from tests.helpers import ServerThread, hello_app
from tests.shutdown_helpers import (
    EOF,
    OPEN,
    RESET,
    close_all,
    keep_alive_connections,
    on_drain,
    read_raw,
    request_bytes,
)

# -- a connect between the last accept and the close of the listener ------------------------


def _listener(kind: str, tmp_path: Path) -> Any:
    return ("127.0.0.1", 0) if kind == "tcp" else f"unix:{tmp_path / 'server.sock'}"


def _connect_nonblocking(address: Any) -> tuple[socket.socket, int]:
    """A client socket connecting to ``address``, and what ``connect_ex`` said."""
    unix = isinstance(address, str)
    sock = socket.socket(socket.AF_UNIX if unix else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock, sock.connect_ex(address if unix else address[:2])


def _before_next(server: HTTPServer, step: str, action: Callable[[], Any]) -> list[Any]:
    """Run ``action()`` once, in the hub, right before the server's next call of its method ``step``.

    Returns a list that receives what ``action`` returned.
    """
    original = getattr(server, step)
    results: list[Any] = []

    def hooked() -> None:
        delattr(server, step)  # once: later calls go to the method itself
        results.append(action())
        original()

    setattr(server, step, hooked)
    return results


def _late_outcome(sock: socket.socket, connect_code: int) -> str:
    """How a connect made late ended: "refused", "served", or what went wrong."""
    with sock:
        if connect_code not in (0, errno.EINPROGRESS):
            return "refused" if connect_code == errno.ECONNREFUSED else errno.errorcode[connect_code]
        # A SYN the sealed listener dropped is sent again about 1 s later, and refused then.
        _, writable, _ = select.select([], [sock], [], 5)
        if not writable:
            return "connect hung"
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            return "refused" if code == errno.ECONNREFUSED else f"connected, then {errno.errorcode[code]}"
        sock.setblocking(True)
        try:
            sock.sendall(request_bytes("/"))
        except OSError as exc:
            return f"connected, then {exc!r}"
        response = read_raw(sock, timeout=5)
        if response.complete and response.status == 200:
            return "served"
        return f"connected, then {response.ending} after {len(response.received)} bytes"


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_a_connect_between_the_last_accept_and_the_close_of_the_listener_is_refused_not_reset(
    kind: str, tmp_path: Path
) -> None:
    with ServerThread(hello_app, _listener(kind, tmp_path)) as st:
        address = st.address

        def connect() -> tuple[socket.socket, int]:
            sock, code = _connect_nonblocking(address)
            if code == errno.EINPROGRESS:
                # Until the kernel completes it (an unsealed listener), at most
                # 0.2 s (a sealed one drops the SYN): the close waits meanwhile.
                select.select([], [sock], [], 0.2)
            return sock, code

        late = _before_next(st.server, "_close_listener", connect)
        assert st.shutdown(timeout=5).clean
        assert late, "the shutdown did not close the listener through _close_listener"
        assert _late_outcome(*late[0]) == "refused"


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_a_connection_queued_when_the_listener_is_sealed_is_served(kind: str, tmp_path: Path) -> None:
    with ServerThread(hello_app, _listener(kind, tmp_path)) as st:
        address = st.address

        def connect() -> socket.socket:
            # Complete before the seal, and not accepted yet: the hub is busy here.
            sock = st.connect()
            sock.sendall(request_bytes("/"))
            return sock

        queued = _before_next(st.server, "_seal_listener", connect)
        result = st.shutdown(timeout=5)
        assert queued, f"the shutdown did not seal the listener of {address!r}"
        with queued[0] as sock:
            response = read_raw(sock, timeout=5)
        assert result.clean
        assert (response.status, response.complete, response.closes) == (200, True, True), response


# -- a request racing the start of a shutdown on an idle connection -------------------------

ROUNDS = 40
PER_ROUND = 5
IDLE_GRACE = 0.05
BUDGET = 20.0  # seconds for all rounds; the loop stops early rather than run over

#: One example (request id, bytes received, ending) per outcome, for the failure message.
EXAMPLES: dict[str, tuple] = {}


def _recording_app(seen: dict[str, bool], lock: threading.Lock):
    def app(environ, start_response):
        rid = environ.get("HTTP_X_REQUEST_ID")
        if rid is not None:
            with lock:
                assert rid not in seen, f"request {rid} reached the application twice"
                seen[rid] = environ["gshutdown.shutting_down"].is_set()
        body = b"served " + (rid or "warm-up").encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def _classify(rid: str, response, seen: dict[str, bool]) -> str:
    in_app = rid in seen
    if response.received == b"":
        if in_app:
            return "read then dropped"
        return "closed unread (fin)" if response.ending == EOF else f"closed unread ({response.ending})"
    if not response.complete:
        return f"cut mid-response ({response.ending})"
    if response.status != 200 or response.body != b"served " + rid.encode() or not in_app:
        return "wrong response"
    if seen[rid] and not response.closes:
        return "served during shutdown without Connection: close"
    if response.ending not in (OPEN, EOF):
        return f"served, then {response.ending}"
    return "served"


def _send(sock, rid: str) -> None:
    try:
        sock.sendall(request_bytes("/", headers=(("X-Request-Id", rid),)))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server's close came first: classified from what the client then reads


def _one_round(st: ServerThread, seen: dict, rng: random.Random, round_no: int, outcomes: Counter) -> None:
    socks = keep_alive_connections(st, PER_ROUND)
    try:
        began = on_drain(st)
        # Delays after the shutdown began, spread over 0 .. 1.6 x grace.
        delays = sorted(IDLE_GRACE * 1.6 * (k + rng.random()) / (PER_ROUND - 1) for k in range(PER_ROUND - 1))
        rids = [f"{round_no}-{index}" for index in range(PER_ROUND)]
        future = st.shutdown_async(timeout=5)
        _send(socks[0], rids[0])  # no wait: while the shutdown is being scheduled
        assert began.wait(5), "shutdown did not start"
        zero = time.monotonic()
        for sock, rid, delay in zip(socks[1:], rids[1:], delays, strict=True):
            time.sleep(max(0.0, zero + delay - time.monotonic()))  # the variable under test
            _send(sock, rid)
        for sock, rid in zip(socks, rids, strict=True):
            response = read_raw(sock, timeout=5, until_closed=True)
            sock.close()
            outcome = _classify(rid, response, seen)
            outcomes[outcome] += 1
            EXAMPLES.setdefault(outcome, (rid, response.received[:200], response.ending))
        result = future.result(10)
        assert result.clean, result
    finally:
        close_all(socks)


def test_request_racing_the_shutdown_on_an_idle_connection_is_served_or_never_read():
    """200 requests sent at varied moments around the start of a shutdown: each is either
    served (with Connection: close) or its connection closed before any of it was read."""
    rng = random.Random(20240611)
    outcomes: Counter = Counter()
    EXAMPLES.clear()
    began = time.monotonic()
    rounds = 0
    servers: list[ServerThread] = []
    try:
        while rounds < ROUNDS and time.monotonic() - began < BUDGET:
            seen: dict[str, bool] = {}
            st = ServerThread(_recording_app(seen, threading.Lock()), idle_grace=IDLE_GRACE)
            servers.append(st.start())
            _one_round(st, seen, rng, rounds, outcomes)
            rounds += 1
    finally:
        # ServerThread.stop() takes up to 0.5 s (its thread polls for the stop flag):
        # stop the spent servers all at once rather than one per round.
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(servers) or 1) as pool:
            list(pool.map(ServerThread.stop, servers))
    print(f"\n{rounds} rounds in {time.monotonic() - began:.1f} s: {dict(outcomes)}")
    allowed = {"served", "closed unread (fin)", f"closed unread ({RESET})"}
    bad = {k: (v, EXAMPLES[k]) for k, v in outcomes.items() if k not in allowed}
    assert not bad, f"forbidden outcomes: {bad}"
    assert rounds >= ROUNDS // 2, f"only {rounds} rounds fit in {BUDGET} s"
    # Both sides of the race were exercised, or the loop proved nothing.
    assert outcomes["served"] > 0
    assert outcomes["closed unread (fin)"] + outcomes[f"closed unread ({RESET})"] > 0
