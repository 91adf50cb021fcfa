"""What ``--metrics-path`` costs a request: req/s with and without it, on a keep-alive loop.

    python bench/metrics_overhead.py [--runs 5] [--duration 5] [--connections 50]
    python bench/metrics_overhead.py --callgrind [--requests 2000,12000]

Runs ``bench/app.py`` under gshutdown four ways: one process and one worker
behind a master (prometheus-client's multiprocess mode), each without and
with metrics. The server is pinned to CPU 0 and ``wrk`` (``apt-get install -y
wrk``) to CPU 1; runs go round by round so a slow patch of a shared machine
hits every variant. Prints, for each, the median req/s and the median CPU
time the serving process spent per request (user + system, from /proc: less
disturbed than req/s by other load on the machine), and the ratios.

On a shared machine both still move by more than the cost measured, so
``--callgrind`` counts instructions instead (``apt-get install -y valgrind``):
each variant runs under callgrind twice, serving the two ``--requests``
counts of sequential keep-alive requests from one client, and the difference
between the two totals, over the difference in requests, is what one request
costs (start-up and exit cancel out). It takes some minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
LAUNCHER = """
import sys
from gshutdown import cli
from gshutdown.process import master, serve
metrics = ["--metrics-path", sys.argv[1]] if sys.argv[1] else []
settings = cli.parse_args([*metrics, *sys.argv[2:]])
sys.exit(master.main(settings) if settings.workers else serve.serve(settings))
"""
VARIANTS = {
    "single": (),
    "single + metrics": (),
    "1 worker": ("-w", "1"),
    "1 worker + metrics": ("-w", "1"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def start(name: str, port: int) -> subprocess.Popen[bytes]:
    metrics = "/-/metrics" if name.endswith("+ metrics") else ""
    argv = [sys.executable, "-c", LAUNCHER, metrics]
    argv += ["--no-monkey-patch", "--log-level", "warning", "--readiness-path", "", "-b", f"127.0.0.1:{port}"]
    argv += [*VARIANTS[name], "app:app"]
    proc = subprocess.Popen([*pin(0), *argv], cwd=BENCH, start_new_session=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit(f"{name} did not start") from None
            time.sleep(0.05)


def serving_pid(proc: subprocess.Popen[bytes]) -> int:
    """The process that serves: the one started, or its only worker."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return int(children[0]) if children else proc.pid


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, seconds: int, connections: int, pid: int) -> tuple[float, float]:
    """req/s, and the CPU microseconds ``pid`` spent per request."""
    cpu_before = cpu_seconds(pid)
    out = subprocess.run(
        [*pin(1), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    cpu = cpu_seconds(pid) - cpu_before
    match = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match or not rate:
        raise SystemExit(f"wrk printed no rate:\n{out}")
    return float(rate.group(1)), cpu / int(match.group(1)) * 1e6


def keep_alive_client(port: int, count: int) -> None:
    """``count`` GETs one after the other on one connection, waiting for the server to listen first."""
    deadline = time.monotonic() + 300
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=120)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with sock:
        for _ in range(count):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            reply = b""
            while not reply.endswith(b"Hello, World!"):
                data = sock.recv(65536)
                if not data:
                    raise SystemExit("the server closed the connection")
                reply += data


def instructions(name: str, count: int, out: Path) -> int:
    """Instructions every process of variant ``name`` ran to serve ``count`` requests, start to exit."""
    port = free_port()
    argv = [sys.executable, "-c", LAUNCHER, "/-/metrics" if name.endswith("+ metrics") else ""]
    argv += ["--no-monkey-patch", "--log-level", "warning", "--readiness-path", "", "-b", f"127.0.0.1:{port}"]
    argv += [*VARIANTS[name], "app:app"]
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p"]
    proc = subprocess.Popen([*valgrind, *argv], cwd=BENCH, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        keep_alive_client(port, count)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(300)
    total = 0
    for path in out.glob("cg.*"):
        match = re.search(r"^summary: (\d+)", path.read_text(errors="replace"), re.MULTILINE)
        total += int(match.group(1)) if match else 0
        path.unlink()
    return total


def count_instructions(counts: list[int]) -> None:
    import tempfile

    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed: apt-get install -y valgrind")
    small, large = counts
    per_request = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in VARIANTS:
            totals = [instructions(name, count, Path(tmp)) for count in (small, large)]
            per_request[name] = (totals[1] - totals[0]) / (large - small)
            print(f"{name:20s} {per_request[name]:9,.0f} instructions/request", flush=True)
    for base in ("single", "1 worker"):
        metered = per_request[f"{base} + metrics"]
        print(
            f"  {base:9s} metrics add {metered - per_request[base]:+,.0f} instructions/request"
            f" ({(metered / per_request[base] - 1) * 100:+.1f}%)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--callgrind", action="store_true", help="count instructions per request instead")
    parser.add_argument("--requests", default="2000,12000", help="with --callgrind: the two request counts")
    opts = parser.parse_args()
    if opts.callgrind:
        count_instructions(sorted(int(n) for n in opts.requests.split(",")))
        return
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    ports = {name: free_port() for name in VARIANTS}
    procs = {name: start(name, ports[name]) for name in VARIANTS}
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    costs: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        time.sleep(1)  # the workers are up
        pids = {name: serving_pid(proc) for name, proc in procs.items()}
        for name in VARIANTS:
            wrk(ports[name], 2, opts.connections, pids[name])  # warm-up
        for round_ in range(opts.runs):
            order = list(VARIANTS)[round_ % len(VARIANTS) :] + list(VARIANTS)[: round_ % len(VARIANTS)]
            for name in order:
                rate, cost = wrk(ports[name], opts.duration, opts.connections, pids[name])
                rates[name].append(rate)
                costs[name].append(cost)
            done = ", ".join(f"{n} {rates[n][-1]:,.0f}/s {costs[n][-1]:.1f} us" for n in VARIANTS)
            print(f"round {round_ + 1}: {done}", flush=True)
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    rate = {name: statistics.median(values) for name, values in rates.items()}
    cost = {name: statistics.median(values) for name, values in costs.items()}
    print(f"\nmedians of {opts.runs} runs of {opts.duration} s, keep-alive, {opts.connections} connections:")
    for base in ("single", "1 worker"):
        metered = f"{base} + metrics"
        print(
            f"  {base:9s} {rate[base]:8,.0f} req/s {cost[base]:5.1f} us CPU/request;"
            f" with metrics {rate[metered]:8,.0f} req/s {cost[metered]:5.1f} us;"
            f" req/s ratio {rate[metered] / rate[base]:.3f}, CPU/request {cost[metered] - cost[base]:+.1f} us"
            f" ({(cost[metered] / cost[base] - 1) * 100:+.1f}%)"
        )


if __name__ == "__main__":
    main()
