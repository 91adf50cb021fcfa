"""Soak: keep-alive load while other clients connect and reset, then count what is left.

``python bench/soak.py [--duration 60]`` starts ``gshutdown`` on ``bench/app.py``
(one process, no monkey-patching), measures its RSS and open descriptors,
then for ``--duration`` seconds runs

* ``--load-procs`` processes of ``--load-conns`` keep-alive connections each,
  every connection sending a request and reading its response in turn
  (``/``, ``/64k``, a small POST);
* ``--reset-procs`` processes that connect and abort with a reset
  (``SO_LINGER`` 0) in a loop, at a random point: right after connecting,
  in the middle of a head, after a whole request before reading the response,
  in the middle of a body, or after reading part of a 64 KiB response;

then stops the clients, waits up to ``--settle`` seconds for the server's
descriptors to come back down, and prints RSS and open descriptors before and
after, the server's sockets left in CLOSE_WAIT (from ``/proc/net/tcp*``), and
whether it still answers. Run on demand, not in the test suite; the load is
Python clients, so it measures leaks, not speed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
GET = b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n"
GET_BIG = b"GET /64k HTTP/1.1\r\nHost: soak\r\n\r\n"
POST = b"POST / HTTP/1.1\r\nHost: soak\r\nContent-Length: 1000\r\n\r\n" + b"p" * 1000
# The state column of /proc/net/tcp.
TCP_STATES = {
    "01": "ESTABLISHED",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
}


# -- the server's side: /proc -----------------------------------------------------------


def rss_kib(pid: int) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else -1


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def socket_states(port: int) -> dict[str, int]:
    """Server-side TCP sockets on ``port`` (local port), by state name."""
    counts: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port:
                name = TCP_STATES.get(fields[3], fields[3])
                counts[name] = counts.get(name, 0) + 1
    return counts


def snapshot(pid: int, port: int) -> dict[str, Any]:
    return {"rss_kib": rss_kib(pid), "open_fds": open_fds(pid), "sockets": socket_states(port)}


# -- clients ----------------------------------------------------------------------------


def read_response(sock: socket.socket, buf: bytearray) -> int:
    """Read one Content-Length response from ``sock``; its status."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before a response")
        buf += data
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end])
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(buf) < end + length:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed mid-body")
        buf += data
    del buf[: end + length]
    return int(head.split(b" ", 2)[1])


def keep_alive_load(port: int, conns: int, stop_at: float, out: Any) -> None:
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
    bufs = [bytearray() for _ in socks]
    requests = [GET, GET, GET, GET_BIG, POST]
    done = non_200 = reconnects = 0
    i = 0
    while time.monotonic() < stop_at:
        request = requests[i % len(requests)]
        i += 1
        for n, sock in enumerate(socks):
            try:
                sock.sendall(request)
                if read_response(sock, bufs[n]) != 200:
                    non_200 += 1
                done += 1
            except OSError:
                # The server closed it (e.g. idle timeout between rounds): a new one.
                sock.close()
                socks[n] = socket.create_connection(("127.0.0.1", port))
                bufs[n] = bytearray()
                reconnects += 1
    for sock in socks:
        sock.close()
    out.put({"requests": done, "non_200": non_200, "reconnects": reconnects})


def abort(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # with linger 0: a reset, not a FIN


def reset_loop(port: int, stop_at: float, seed: int, out: Any) -> None:
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    while time.monotonic() < stop_at:
        kind = rng.choice(["connect", "mid-head", "before-response", "mid-body", "mid-response"])
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            counts["connect-failed"] = counts.get("connect-failed", 0) + 1
            continue
        try:
            if kind == "mid-head":
                sock.sendall(GET[: rng.randrange(1, len(GET) - 1)])
            elif kind == "before-response":
                sock.sendall(GET_BIG)
            elif kind == "mid-body":
                sock.sendall(POST[: rng.randrange(POST.index(b"\r\n\r\n") + 4, len(POST) - 1)])
            elif kind == "mid-response":
                sock.sendall(GET_BIG)
                sock.recv(rng.randrange(1, 4096))
            if kind != "connect":
                time.sleep(rng.random() * 0.002)  # let the server get to it, sometimes
        except OSError:
            pass
        abort(sock)
        counts[kind] = counts.get(kind, 0) + 1
    out.put({"resets": counts})


# -- the run ----------------------------------------------------------------------------


def start_server(port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GSHUTDOWN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH", "")]))
    argv = [sys.executable, "-m", "gshutdown", "--no-monkey-patch", "--log-level", "warning"]
    argv += ["--readiness-path", "", "-b", f"127.0.0.1:{port}", "app:app"]
    proc = subprocess.Popen(argv, env=env, cwd=BENCH, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(GET)
                if read_response(sock, bytearray()) == 200:
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the server did not start")


def still_serves(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(GET)
            return read_response(sock, bytearray()) == 200
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--load-procs", type=int, default=1, help="keep-alive client processes (default 1)")
    parser.add_argument("--load-conns", type=int, default=50, help="connections per load process (default 50)")
    parser.add_argument("--reset-procs", type=int, default=1, help="connect-and-reset processes (default 1)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait for fds to come down (default 10)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    opts = parser.parse_args()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = start_server(port)
    try:
        for _ in range(200):  # warm up: caches, allocator arenas
            still_serves(port)
        before = snapshot(server.pid, port)
        print(f"before: RSS {before['rss_kib']} KiB, {before['open_fds']} open fds, sockets {before['sockets']}")
        out: Any = multiprocessing.Queue()
        stop_at = time.monotonic() + opts.duration
        workers = [
            multiprocessing.Process(target=keep_alive_load, args=(port, opts.load_conns, stop_at, out))
            for _ in range(opts.load_procs)
        ]
        workers += [
            multiprocessing.Process(target=reset_loop, args=(port, stop_at, seed, out))
            for seed in range(opts.reset_procs)
        ]
        for worker in workers:
            worker.start()
        peak_rss = peak_fds = 0
        while time.monotonic() < stop_at:
            time.sleep(1.0)
            peak_rss = max(peak_rss, rss_kib(server.pid))
            peak_fds = max(peak_fds, open_fds(server.pid))
        reports = [out.get(timeout=opts.duration + 60) for _ in workers]
        for worker in workers:
            worker.join(30)
        settle_deadline = time.monotonic() + opts.settle
        while open_fds(server.pid) > before["open_fds"] and time.monotonic() < settle_deadline:
            time.sleep(0.1)
        after = snapshot(server.pid, port)
        serving = still_serves(port)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait()

    requests = sum(r.get("requests", 0) for r in reports)
    non_200 = sum(r.get("non_200", 0) for r in reports)
    reconnects = sum(r.get("reconnects", 0) for r in reports)
    resets: dict[str, int] = {}
    for report in reports:
        for kind, n in report.get("resets", {}).items():
            resets[kind] = resets.get(kind, 0) + n
    result = {
        "duration_s": opts.duration,
        "before": before,
        "after": after,
        "peak_rss_kib": peak_rss,
        "peak_open_fds": peak_fds,
        "close_wait_left": after["sockets"].get("CLOSE_WAIT", 0),
        "keep_alive_requests": requests,
        "non_200": non_200,
        "reconnects": reconnects,
        "resets": resets,
        "still_serving": serving,
        "exit_status": code,
    }
    print(f"after:  RSS {after['rss_kib']} KiB, {after['open_fds']} open fds, sockets {after['sockets']}")
    print(f"peak during the run: RSS {peak_rss} KiB, {peak_fds} open fds")
    print(f"CLOSE_WAIT sockets left: {result['close_wait_left']}")
    print(
        f"{requests:,} keep-alive requests ({non_200} not 200, {reconnects} reconnects); "
        f"{sum(resets.values()):,} resets {resets}"
    )
    print(f"still serving: {serving}; exit status after SIGTERM: {code}")
    if opts.json:
        Path(opts.json).write_text(json.dumps(result, indent=2))
    leaked = after["open_fds"] > before["open_fds"] or result["close_wait_left"] or not serving or non_200
    return 1 if leaked else 0


if __name__ == "__main__":
    sys.exit(main())
