"""Can a fast chunked upload of 1-byte chunks starve other clients? Another client's p99, with and without.

    python bench/body_fairness.py [--seconds 3] [--uploaders 2] [--wire-mib 6] [--pattern 1-byte]
    python bench/body_fairness.py --baseline-src /tmp/gshutdown-before   # the same figures for another tree

Starts gshutdown (one process, this module's ``app``) on 127.0.0.1 and, for
each source tree (this one, and ``--baseline-src`` if given, e.g. an older
commit unpacked with ``git archive``), measures:

1. What one upload costs the server, in CPU seconds (user + system, from
   /proc): a body of ``--wire-mib`` MiB sent as 1-byte chunks (``1\\r\\nx\\r\\n``,
   6 bytes on the wire per body byte), and the same body bytes with
   Content-Length. The ratio is the work per byte a chunk adds; the status
   says whether the server read the body (200) or refused it (400).
2. The probe: one keep-alive client sending ``GET /`` back to back for
   ``--seconds``, alone, then again while ``--uploaders`` processes send such
   uploads in a loop (reconnecting after each answer or refusal). Prints
   p50, p99 and max of the probe's latency in ms, and how many uploads were
   answered 200 or refused. The server's own view comes with it: how late
   a 1 ms sleep in the server wakes (p99 and max), which no client-side
   contention enters.

``--pattern big-first`` sends instead the worst body the minimum average
chunk size lets through: one chunk of ``--wire-mib`` MiB, then as many 1-byte
chunks as its bytes pay for (64 bytes each, gshutdown.protocol.parser) and
refused, so every upload parses the most small chunks the server allows.

The goal (issue 20, item 4): the uploads move the probe's p99 by less than
20 ms. Bounded: each phase lasts ``--seconds``; uploaders stop with it.

What is measured is the server's fairness, not the machine's: with two or
more CPUs the server is pinned to CPU 0 and this script's processes to CPU 1
(as ``bench/run.py`` pins the server and wrk), and the uploaders run at nice
19. Refused at once, they reconnect in a tight loop, and on a 2-core machine
that loop (and the kernel's loopback work it causes, done on the sender's
CPU) would otherwise take the CPU from the probe and the server, whatever
the server does.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PROBE_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
HELLO = b"Hello, World!"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVER_CPU, CLIENT_CPU = 0, 1
PINNED = len(os.sched_getaffinity(0)) >= 2 and {SERVER_CPU, CLIENT_CPU} <= os.sched_getaffinity(0)


#: Seconds the server's loop sampler asks to sleep between samples.
LAG_TICK = 0.001
# The server side's loop lag samples (seconds late), and whether the sampler runs.
_lags: list[float] = []
_sampler: list[Any] = []


def _sample_lag() -> None:
    """In the server: how late a 1 ms sleep wakes, again and again (how long the loop was kept)."""
    import gevent

    while True:
        began = time.monotonic()
        gevent.sleep(LAG_TICK)
        _lags.append(time.monotonic() - began - LAG_TICK)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The server side: read any body to the end, answer with its length (or ``Hello, World!``).

    ``GET /lag`` answers the p99 and the max of the loop lag sampled since the
    last ``/lag``, in ms (the sampler starts with the first request).
    """
    if not _sampler:
        import gevent

        _sampler.append(gevent.spawn(_sample_lag))
    if environ["PATH_INFO"] == "/lag":
        lags = sorted(_lags) or [0.0]
        _lags.clear()
        body = b"%.3f %.3f" % (lags[min(len(lags) - 1, int(0.99 * len(lags)))] * 1000, lags[-1] * 1000)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    stream = environ["wsgi.input"]
    received = 0
    while True:
        data = stream.read(64 * 1024)
        if not data:
            break
        received += len(data)
    body = str(received).encode() if environ["REQUEST_METHOD"] == "POST" else HELLO
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


# -- the server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(src: Path, port: int) -> subprocess.Popen[bytes]:
    """gshutdown from ``src`` (its ``gshutdown`` package first on the path), serving ``app``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(BENCH)]))
    argv = [sys.executable, "-m", "gshutdown", "--no-monkey-patch", "--log-level", "warning"]
    argv += ["--readiness-path", "", "-b", f"127.0.0.1:{port}", "body_fairness:app"]
    proc = subprocess.Popen(argv, cwd=src, env=env)
    if PINNED:
        os.sched_setaffinity(proc.pid, {SERVER_CPU})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"the server from {src} exited with {proc.returncode}") from None
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the server from {src} did not listen within 15 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# -- the clients --------------------------------------------------------------------------


def read_status(sock: socket.socket) -> int:
    """The status of the response on ``sock`` (its body read); 0 if the connection ended first."""
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                return 0
            buf += data
        head, _, body = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            data = sock.recv(65536)
            if not data:
                break
            body += data
    except OSError:
        return int(buf[9:12]) if buf.startswith(b"HTTP/1.1 ") else 0
    return int(head[9:12])


def one_byte_chunks(body_bytes: int) -> bytes:
    return b"1\r\nx\r\n" * body_bytes + b"0\r\n\r\n"


def big_chunk_first(body_bytes: int, min_average: int = 64) -> bytes:
    """One big chunk, then 1-byte chunks: as many as ``min_average`` allows, and 1,024 more."""
    small = body_bytes // min_average + 1024
    return b"%x\r\n" % body_bytes + b"x" * body_bytes + b"\r\n" + b"1\r\nx\r\n" * small + b"0\r\n\r\n"


def upload(port: int, head: bytes, body: bytes) -> int:
    """Send one POST; its status (0: the connection ended before an answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(head + body)
        except OSError:
            pass  # refused mid-body: the answer, if any, is in the receive queue
        return read_status(sock)


def chunked_head() -> bytes:
    return b"POST /upload HTTP/1.1\r\nHost: bench\r\nTransfer-Encoding: chunked\r\n\r\n"


def uploader(port: int, wire: bytes, stop: Any, started: Any, counts: Any) -> None:
    """Upload ``wire`` again and again until ``stop`` is set; count the answers."""
    head = chunked_head()
    os.nice(19)  # its own CPU use is not what is measured (see the module docstring)
    started.set()
    while not stop.is_set():
        try:
            status = upload(port, head, wire)
        except OSError:
            status = 0
        with counts.get_lock():
            counts[0 if status == 200 else 1 if status == 400 else 2] += 1


def loop_lag(port: int) -> tuple[float, float]:
    """The server's loop lag since the last call: p99 and max, in ms."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /lag HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        reply = b""
        while data := sock.recv(65536):
            reply += data
    p99, worst = reply.partition(b"\r\n\r\n")[2].split()
    return float(p99), float(worst)


def probe(port: int, seconds: float) -> list[float]:
    """Latencies (seconds) of back-to-back keep-alive ``GET /`` for ``seconds``."""
    latencies = []
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            began = time.perf_counter()
            sock.sendall(PROBE_REQUEST)
            if read_status(sock) != 200:
                raise SystemExit("the probe's request failed")
            latencies.append(time.perf_counter() - began)
    finally:
        sock.close()
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def describe(latencies: list[float]) -> str:
    ms = [value * 1000 for value in latencies]
    return (
        f"{len(ms):6d} requests  p50 {statistics.median(ms):7.2f} ms  p99 {percentile(ms, 0.99):8.2f} ms"
        f"  max {max(ms):8.2f} ms"
    )


# -- one tree -----------------------------------------------------------------------------


def measure_tree(label: str, src: Path, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    server = start_server(src, port)
    figures: dict[str, float] = {}
    try:
        if args.pattern == "1-byte":
            body_bytes = args.wire_mib * 1024 * 1024 // 6
            wire = one_byte_chunks(body_bytes)
        else:
            body_bytes = args.wire_mib * 1024 * 1024
            wire = big_chunk_first(body_bytes)
        print(f"\n== {label}: {src}")
        length_head = b"POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Length: %d\r\n\r\n" % body_bytes
        costs = []
        chunked_name = args.pattern + " chunks"
        # Cheap uploads (Content-Length; a refused one) are repeated for a cost above the clock tick.
        for name, head, body in (
            ("Content-Length", length_head, b"x" * body_bytes),
            (chunked_name, chunked_head(), wire),
        ):
            repeat = 1
            before = cpu_seconds(server.pid)
            statuses = [upload(port, head, body)]
            if name == "Content-Length" or statuses[0] != 200:
                repeat = 20
                statuses += [upload(port, head, body) for _ in range(repeat - 1)]
            time.sleep(0.2)  # the server's lingering close of a refused upload, if any
            cost = (cpu_seconds(server.pid) - before) / repeat
            costs.append(cost)
            print(
                f"one upload of {body_bytes:,} body bytes, {name:17s}: status {sorted(set(statuses))},"
                f" server CPU {cost:6.4f} s (mean of {repeat})"
            )
        figures["cpu_chunked"] = costs[1]
        ratio = costs[1] / costs[0] if costs[0] else float("inf")
        print(f"{chunked_name} cost {ratio:.1f}x Content-Length (CPU clock tick: {1 / CLOCK_TICKS:.3f} s)")

        loop_lag(port)  # starts the sampler (and forgets what came before)
        alone = probe(port, args.seconds)
        lag_alone = loop_lag(port)
        print(f"probe alone                : {describe(alone)}")
        stop = multiprocessing.Event()
        counts = multiprocessing.Array("i", 3)
        startups = [multiprocessing.Event() for _ in range(args.uploaders)]
        uploaders = [
            multiprocessing.Process(target=uploader, args=(port, wire, stop, started, counts), daemon=True)
            for started in startups
        ]
        cpu_before = cpu_seconds(server.pid)
        for proc in uploaders:
            proc.start()
        for started in startups:
            started.wait(10)
        time.sleep(0.2)  # the uploads are under way
        loop_lag(port)
        loaded = probe(port, args.seconds)
        lag_loaded = loop_lag(port)
        stop.set()
        for proc in uploaders:
            proc.join(35)
            if proc.is_alive():
                proc.kill()
        cpu_used = cpu_seconds(server.pid) - cpu_before
        print(f"probe + {args.uploaders} uploaders       : {describe(loaded)}")
        print(
            f"server loop lag (1 ms sleeps, p99/max): {lag_alone[0]:.2f}/{lag_alone[1]:.2f} ms alone,"
            f" {lag_loaded[0]:.2f}/{lag_loaded[1]:.2f} ms with the uploaders"
        )
        figures["lag_p99_loaded"] = lag_loaded[0]
        print(
            f"uploads: {counts[0]} answered 200, {counts[1]} refused 400, {counts[2]} other;"
            f" server CPU {cpu_used:.2f} s in the phase"
        )
        figures["p99_alone"] = percentile(alone, 0.99) * 1000
        figures["p99_loaded"] = percentile(loaded, 0.99) * 1000
        moved = figures["p99_loaded"] - figures["p99_alone"]
        verdict = "meets" if moved < 20 else "misses"
        print(f"p99 moved by {moved:.2f} ms ({verdict} the < 20 ms goal)")
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    return figures


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each probe phase")
    parser.add_argument("--uploaders", type=int, default=2, help="processes uploading 1-byte chunks")
    parser.add_argument("--wire-mib", type=int, default=6, help="bytes on the wire per upload, in MiB")
    parser.add_argument("--pattern", choices=("1-byte", "big-first"), default="1-byte", help="the uploads' chunks")
    parser.add_argument("--baseline-src", type=Path, help="another source tree to measure the same way (before)")
    args = parser.parse_args(argv)
    if PINNED:
        os.sched_setaffinity(0, {CLIENT_CPU})  # the probe, and the uploaders it forks
    print(f"server on CPU {SERVER_CPU}, clients on CPU {CLIENT_CPU}" if PINNED else "not pinned: fewer than 2 CPUs")
    results = {}
    if args.baseline_src is not None:
        results["before"] = measure_tree("before", args.baseline_src.resolve(), args)
    results["this tree"] = measure_tree("this tree", ROOT, args)
    if len(results) > 1:
        print("\n== summary: probe p99 in ms (alone -> with uploaders), server CPU of one 1-byte-chunk upload")
        for label, figures in results.items():
            print(
                f"{label:10s}: {figures['p99_alone']:7.2f} -> {figures['p99_loaded']:8.2f}"
                f"   server loop lag p99 with uploaders {figures['lag_p99_loaded']:8.2f}"
                f"   one upload {figures['cpu_chunked']:.3f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
