#!/usr/bin/env python3
"""Fair at the connection cap: a legitimate client against slowloris and idle keep-alive clients (issue 20, item 3).

    python bench/cap_fairness.py                 # both cases, default sizes
    python bench/cap_fairness.py --attackers 300 --requests 100

Case 1, default settings (``--max-connections 1000``): ``--attackers``
slowloris connections (a request line, then one header byte every 5 s) and as
many keep-alive clients (one request every 4 s, inside the 5 s idle timeout),
in a process of their own (``--reconnect``: a second run where they reopen
every connection the server closes).
A legitimate client meanwhile makes ``--requests`` requests, each on a new
connection; its latency (connect to the last byte of the response) is
compared with the same client's against the server alone. Goal: p99 < 50 ms.

Case 2, the starvation case: ``--max-connections 10`` and 10 keep-alive
clients sending one request every 4 s; a new client's time to be served.
Goal: < 100 ms.

Everything is on 127.0.0.1, bounded in count and time; the server is pinned
to CPU 0, the clients to CPU 1.
"""

from __future__ import annotations

import argparse
import json
import random
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import run
from servers import Options

BENCH = Path(__file__).resolve().parent
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
SLOW_LINE = b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
GOAL_P99_MS = 50.0
GOAL_NEW_CLIENT_MS = 100.0


# -- the attackers (run as ``cap_fairness.py attack ...`` in a process of their own) --------


def attack(port: int, slowloris: int, keepalive: int, seconds: float, reconnect: bool) -> None:
    """Hold ``slowloris`` + ``keepalive`` connections for ``seconds``; ``reconnect``: reopen what the server closes."""
    sel = selectors.DefaultSelector()
    rng = random.Random(7)
    deadline = time.monotonic() + seconds
    reopened = 0
    # kind, next time to send
    state: dict[socket.socket, list[Any]] = {}

    def open_one(kind: str) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            return
        sock.setblocking(False)
        now = time.monotonic()
        try:
            sock.send(SLOW_LINE if kind == "slow" else REQUEST)
        except OSError:
            sock.close()
            return
        # Staggered: slowloris every 5 s, keep-alive every 4 s, from a random phase.
        period = 5.0 if kind == "slow" else 4.0
        state[sock] = [kind, now + rng.uniform(0, period)]
        sel.register(sock, selectors.EVENT_READ)

    for _ in range(slowloris):
        open_one("slow")
    for _ in range(keepalive):
        open_one("keep")
    print(json.dumps({"ready": len(state)}), flush=True)
    while time.monotonic() < deadline:
        now = time.monotonic()
        for sock, entry in list(state.items()):
            kind, due = entry
            if due <= now:
                try:
                    sock.send(b"a" if kind == "slow" else REQUEST)
                except OSError:
                    pass
                entry[1] = now + (5.0 if kind == "slow" else 4.0)
        for key, _ in sel.select(timeout=0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # closed (reclaimed, or timed out)
                kind = state.pop(sock)[0]
                sel.unregister(sock)
                sock.close()
                if reconnect:
                    reopened += 1
                    open_one(kind)
    print(json.dumps({"reopened": reopened, "open": len(state)}), flush=True)


# -- the legitimate client ----------------------------------------------------------------


def one_request(port: int, timeout: float) -> Optional[float]:
    """Seconds from connect to the whole response on a new connection; None if it failed or timed out."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                piece = sock.recv(65536)
                if not piece:
                    break
                data += piece
    except OSError:
        return None
    if not data.startswith(b"HTTP/1.1 200") or not data.endswith(run.HELLO):
        return None
    return time.monotonic() - started


def latencies(port: int, count: int, spacing: float, timeout: float) -> tuple[list[float], int]:
    got: list[float] = []
    failed = 0
    for _ in range(count):
        seconds = one_request(port, timeout)
        if seconds is None:
            failed += 1
        else:
            got.append(seconds)
        time.sleep(spacing)
    return got, failed


def summary(values: list[float], failed: int) -> dict[str, Any]:
    if not values:
        return {"count": 0, "failed": failed}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "count": len(values),
        "failed": failed,
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def show(label: str, s: dict[str, Any]) -> None:
    if not s["count"]:
        print(f"  {label:44s} all {s['failed']} failed", flush=True)
        return
    print(
        f"  {label:44s} p50 {s['p50_ms']:8.2f} ms  p99 {s['p99_ms']:8.2f} ms  max {s['max_ms']:8.2f} ms"
        f"  ({s['count']} served, {s['failed']} failed)",
        flush=True,
    )


def start_server(tmp: Path, extra: tuple[str, ...]) -> run.ServerProcess:
    server = run.ServerProcess("gshutdown", Options(port=run.free_port(), extra_args=extra), tmp)
    run.wait_ready(server, "/", 13)
    return server


def start_attackers(
    port: int, slowloris: int, keepalive: int, seconds: float, reconnect: bool = False
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            *run.pin(run.CPU_LOAD),
            sys.executable,
            __file__,
            "attack",
            str(port),
            str(slowloris),
            str(keepalive),
            str(seconds),
            "reconnect" if reconnect else "hold",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    ready = run.read_json_line(proc.stdout, timeout=120)
    if ready is None:
        proc.kill()
        raise run.BenchError("the attackers did not report")
    print(f"  attackers: {ready['ready']} connections open", flush=True)
    return proc


def main(argv: Optional[list[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["attack"]:
        port, slow, keep, seconds, reconnect = argv[1:6]
        attack(int(port), int(slow), int(keep), float(seconds), reconnect == "reconnect")
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attackers", type=int, default=1000, help="slowloris connections, and as many keep-alive")
    p.add_argument("--requests", type=int, default=200, help="the legitimate client's requests per measurement")
    p.add_argument("--spacing", type=float, default=0.01, help="seconds between its requests")
    p.add_argument("--new-clients", type=int, default=30, help="new clients tried in the starvation case")
    p.add_argument(
        "--reconnect",
        action="store_true",
        help="case 1 again with attackers that reopen every connection the server closes (harsher than issue 20's)",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    run.raise_nofile(2 * args.attackers + 4096)
    results: dict[str, Any] = {}
    timeout = 15.0
    with tempfile.TemporaryDirectory(prefix="cap-bench-") as tmp_name:
        tmp = Path(tmp_name)
        print("== case 1: default settings (max-connections 1000) ==", flush=True)
        server = start_server(tmp, ())
        try:
            results["alone"] = summary(*latencies(server.opts.port, args.requests, args.spacing, timeout))
            show("legitimate client, server alone", results["alone"])
            seconds = args.requests * (args.spacing + 0.06) + 20
            attackers = start_attackers(server.opts.port, args.attackers, args.attackers, seconds)
            try:
                time.sleep(6)  # every attacker has sent once, and the idle ones are old enough to reclaim
                results["attacked"] = summary(*latencies(server.opts.port, args.requests, args.spacing, timeout))
                show(f"with {args.attackers} slowloris + {args.attackers} keep-alive", results["attacked"])
            finally:
                attackers.kill()
                attackers.wait(timeout=10)
        finally:
            server.kill()
        if args.reconnect:
            server = start_server(tmp, ())
            try:
                seconds = args.requests * (args.spacing + 0.06) + 60
                attackers = start_attackers(server.opts.port, args.attackers, args.attackers, seconds, reconnect=True)
                try:
                    time.sleep(6)
                    results["attacked_reconnecting"] = summary(
                        *latencies(server.opts.port, args.requests, args.spacing, timeout)
                    )
                    show("the same, attackers reconnecting", results["attacked_reconnecting"])
                finally:
                    attackers.kill()
                    attackers.wait(timeout=10)
            finally:
                server.kill()

        print("== case 2: starvation (max-connections 10, 10 keep-alive clients every 4 s) ==", flush=True)
        server = start_server(tmp, ("--max-connections", "10"))
        try:
            seconds = args.new_clients * 0.3 + 20
            attackers = start_attackers(server.opts.port, 0, 10, seconds)
            try:
                time.sleep(5)
                results["new_client"] = summary(*latencies(server.opts.port, args.new_clients, 0.2, timeout))
                show("a new client, served", results["new_client"])
            finally:
                attackers.kill()
                attackers.wait(timeout=10)
        finally:
            server.kill()
    attacked = results.get("attacked", {})
    met = attacked.get("count") and not attacked["failed"] and attacked["p99_ms"] < GOAL_P99_MS
    print(f"goal: legitimate p99 < {GOAL_P99_MS:g} ms under attack: {'MET' if met else 'MISSED'}")
    new = results.get("new_client", {})
    met = new.get("count") and not new["failed"] and new["max_ms"] < GOAL_NEW_CLIENT_MS
    print(f"goal: a new client served within {GOAL_NEW_CLIENT_MS:g} ms at the cap (max): {'MET' if met else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
