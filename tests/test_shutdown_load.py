"""Shutdown under load: keep-alive clients hammering the server while it stops.

Twenty client threads loop over keep-alive requests with the retry policy of a
careful HTTP client (urllib3's, for idempotent requests): retry once, on a new
connection, only when a *reused* connection ended before any response byte.
When a new connection is refused the client stops. The application records
every request it sees, so a request it saw but whose response never arrived
whole is caught as lost, whatever the client saw.
"""

from __future__ import annotations

import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import gevent

from tests.shutdown_helpers import joined, on_drain, read_raw, request_bytes, run_in_thread

CLIENTS = 20
LOAD_BEFORE_SHUTDOWN = 1.0
HARD_STOP = 15.0  # a client still running this long after the start has hung


@dataclass
class Tally:
    """What one client thread saw."""

    ok: int = 0
    closing_responses: int = 0  # responses announcing Connection: close
    retried: int = 0
    #: How the client stopped: "refused", "closed fresh" (a new connection ended
    #: before any response byte: never accepted, or closed unread), or "hard stop".
    stopped: str = ""
    completed: set[str] = field(default_factory=set)
    failed: list[tuple] = field(default_factory=list)


def _client(tid: int, address: tuple, stop_by: float) -> Tally:
    tally = Tally()
    sock = None
    # Half the clients pause between requests, so some connections are idle (and
    # reused after the server closed them) when the shutdown comes.
    think = random.Random(tid) if tid % 2 else None
    try:
        for n in range(100_000):
            if think is not None:
                time.sleep(think.random() * 0.3)
            if time.monotonic() > stop_by:
                tally.stopped = "hard stop"
                return tally
            rid = f"{tid}-{n}"
            for attempt in (0, 1):
                fresh = sock is None
                if fresh:
                    try:
                        sock = socket.create_connection(address, timeout=5)
                    except ConnectionRefusedError:
                        tally.stopped = "refused"
                        return tally
                try:
                    sock.sendall(request_bytes(f"/{rid}"))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # what the server did shows in what we read
                response = read_raw(sock, timeout=5)
                if response.complete:
                    if response.status == 200 and response.body == rid.encode():
                        tally.ok += 1
                        tally.completed.add(rid)
                    else:
                        tally.failed.append((rid, "wrong response", response.received[:200]))
                    if response.closes:
                        tally.closing_responses += 1
                        sock.close()
                        sock = None
                    break
                sock.close()
                sock = None
                if response.received == b"" and not fresh and attempt == 0:
                    tally.retried += 1
                    continue  # a reused connection closed under us: safe to retry once
                if response.received == b"" and fresh:
                    tally.stopped = "closed fresh"
                    return tally
                tally.failed.append((rid, f"attempt {attempt}, {response.ending}", response.received[:200]))
                break
        tally.stopped = "too many requests"
        return tally
    finally:
        if sock is not None:
            sock.close()


def test_keep_alive_clients_under_load_lose_no_request_through_shutdown(serve):
    """20 keep-alive clients run through a shutdown: no request fails after getting bytes,
    none that reached the application is lost, none is run twice; afterwards new
    connections are refused and every client stops."""
    seen: Counter = Counter()
    rng = random.Random(7)

    def app(environ, start_response):
        rid = environ["PATH_INFO"][1:]
        seen[rid] += 1
        if rng.random() < 0.3:
            gevent.sleep(rng.random() * 0.02)  # some requests are in flight at any moment
        body = rid.encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    st = serve(app)
    began = on_drain(st)
    address = st.address[:2]
    start = time.monotonic()
    clients = [run_in_thread(lambda tid=tid: _client(tid, address, start + HARD_STOP)) for tid in range(CLIENTS)]
    time.sleep(LOAD_BEFORE_SHUTDOWN)  # the load phase before the shutdown, not a synchronisation
    before = sum(seen.values())
    future = st.shutdown_async(timeout=10)
    assert began.wait(5)
    tallies = [joined(thread, out, timeout=HARD_STOP + 10) for thread, out in clients]
    result = future.result(10)
    completed = set().union(*(t.completed for t in tallies))
    failed = [f for t in tallies for f in t.failed]
    stops = Counter(t.stopped for t in tallies)
    print(
        f"\nload: {sum(t.ok for t in tallies)} ok ({before} before the shutdown), "
        f"{sum(t.closing_responses for t in tallies)} with Connection: close, "
        f"{sum(t.retried for t in tallies)} retried (reused connection closed unread), stops {dict(stops)}, "
        f"shutdown {result.duration:.3f} s"
    )
    assert not failed, f"failed requests: {failed[:5]}"
    lost = set(seen) - completed
    assert not lost, f"requests the application saw whose response never arrived whole: {sorted(lost)[:10]}"
    assert [rid for rid, count in seen.items() if count > 1] == [], "a request ran twice"
    assert set(stops) <= {"refused", "closed fresh"}, stops
    assert stops["refused"] >= 1, "no client saw the listener refuse connections"
    assert before >= 100, f"only {before} requests before the shutdown: the load proved little"
    assert result.clean
    with socket.socket() as probe:
        probe.settimeout(2)
        try:
            probe.connect(address)
        except ConnectionRefusedError:
            pass
        else:
            raise AssertionError("the listener still accepts connections after shutdown")
