#!/usr/bin/env python3
"""Benchmark gshutdown against its peers: ``python bench/run.py [--quick]``.

Phases (``--phases``, default ``load,idle``):

load     wrk against every server (``--servers``) for every workload
         (``--workloads``): the server pinned to CPU 0, wrk to CPU 1, one
         warm-up run and then ``--runs`` counted runs per pair, interleaved
         round by round so that a slow patch of machine hits every server.
workers  gshutdown one process, gshutdown ``--workers 2`` (plus
         ``--workers-args``, e.g. ``--reuse-port``) and ``gunicorn -k gevent
         -w 2``, on every CPU: req/s ratios and requests per worker process.
idle     10,000 idle keep-alive connections (``--idle-conns``): RSS per
         connection, then the time from SIGTERM to process exit.
profile  py-spy on gshutdown under keep-alive load: a flame graph and the
         top functions by own time.

It prints tables, the ratios gshutdown / peer measured in the same run, and
PASS/MISS for each of the project's targets; results go to bench/results/ as
JSON (with a description of the machine) and a PNG chart. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import select
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from servers import MODULES, Options, load

BENCH = Path(__file__).resolve().parent
LUA = BENCH / "lua"
RESULTS = BENCH / "results"
CPU_SERVER = 0
CPU_LOAD = 1
HELLO = b"Hello, World!"
#: Servers that take part in the idle phase, and the ones its targets compare.
IDLE_SERVERS = ("gshutdown", "pywsgi", "gunicorn-gevent")
#: ``--quick``: the peers of the README table, so that a run stays under 5 minutes.
QUICK_SERVERS = ("gshutdown", "gunicorn-gevent", "uwsgi-gevent", "granian", "raw-gevent")
QUICK_IDLE_SERVERS = ("gshutdown",)
#: Servers whose p99 gshutdown's must beat (the gevent peers).
GEVENT_PEERS = ("gunicorn-gevent", "uwsgi-gevent", "pywsgi", "pywsgi-nodelay")
PACKAGES = (
    "gshutdown",
    "gevent",
    "greenlet",
    "httptools",
    "gunicorn",
    "pyuwsgi",
    "granian",
    "waitress",
    "bjoern",
    "matplotlib",
)


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    connections: int
    path: str = "/"
    script: str = "get.lua"
    headers: tuple[str, ...] = ()
    script_args: tuple[str, ...] = ()
    #: What the response body must be (checked once before the runs).
    body_size: int = 13
    close: bool = False


WORKLOADS = {
    w.name: w
    for w in (
        Workload("keepalive-50", "keep-alive, 50 connections", 50),
        Workload("keepalive-1000", "keep-alive, 1,000 connections", 1000),
        Workload("close", "Connection: close, 50 connections", 50, headers=("Connection: close",), close=True),
        Workload("body-64k", "64 KiB response body, 50 connections", 50, path="/64k", body_size=65536),
        Workload("post-1m", "1 MiB POST body, 50 connections", 50, script="post.lua"),
        # The workers phase's: the same as keepalive-50 and close, but the
        # app names its process (X-Worker) and wrk counts per worker.
        Workload("workers-keepalive-50", "keep-alive, 50 connections, per worker", 50, "/pid", "workers.lua"),
        Workload(
            "workers-close",
            "Connection: close, 50 connections, per worker",
            50,
            "/pid",
            "workers.lua",
            headers=("Connection: close",),
            close=True,
        ),
        Workload(
            "pipeline-16",
            "16 pipelined requests per write, 50 connections",
            50,
            script="pipeline.lua",
            script_args=("16",),
        ),
    )
}


#: The load phase's workloads (the workers phase has its own).
LOAD_WORKLOADS = tuple(w for w in WORKLOADS if not w.startswith("workers-"))


class BenchError(Exception):
    """A server did not start or answer as it should."""


# -- processes ------------------------------------------------------------------


def pin(cpu: int | str) -> list[str]:
    """``taskset -c CPU`` (a CPU number or list such as ``"0,1"``) when pinning is possible here, else nothing."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > max(CPU_SERVER, CPU_LOAD):
        return ["taskset", "-c", str(cpu)]
    return []


def child_env() -> dict[str, str]:
    # GSHUTDOWN_* variables would change the gshutdown command line's defaults.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GSHUTDOWN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (gunicorn's worker under its arbiter)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def cpu_times(cpu: int) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU from /proc/stat (steal counts as busy)."""
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith(f"cpu{cpu} "):
                user, nice, system, idle, iowait, irq, softirq, steal = map(int, line.split()[1:9])
                busy = user + nice + system + irq + softirq + steal
                return busy, busy + idle + iowait
    return 0, 0


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


_STARTED = time.monotonic()


def elapsed() -> str:
    """Time since the script started, for the phase headers (``--quick`` must stay under 5 minutes)."""
    return f"{time.monotonic() - _STARTED:.0f} s"


def wait_quiet(pids: list[int], limit: float = 5.0) -> None:
    """Poll until ``pids`` use no CPU for 0.1 s (the last run's tail is done), at most ``limit`` s."""
    deadline = time.monotonic() + limit
    last = cpu_ticks(pids)
    still = 0
    while time.monotonic() < deadline and still < 2:
        time.sleep(0.05)
        now = cpu_ticks(pids)
        still = still + 1 if now == last else 0
        last = now


class ServerProcess:
    """One server under test, in its own process group, pinned to ``cpus`` (CPU_SERVER)."""

    def __init__(self, name: str, opts: Options, log_dir: Path, cpus: int | str = CPU_SERVER) -> None:
        self.name = name
        self.opts = opts
        self.cpus = cpus
        self.argv = pin(cpus) + load(name).command(opts)
        self.log_path = log_dir / f"{name}-{opts.port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=BENCH,
                env=child_env(),
                start_new_session=True,  # its own group: gunicorn's worker goes with it
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        return [self.pid, *children_of(self.pid)]

    def serving_pid(self) -> int:
        """The process holding the connections (gunicorn: the worker)."""
        kids = children_of(self.pid)
        return kids[0] if kids else self.pid

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with status {self.proc.returncode}: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the process group this object started, and reap the leader."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def http_get(port: int, path: str = "/", timeout: float = 15.0) -> tuple[int, bytes]:
    """One GET on a fresh connection; (status, body), the body framed by Content-Length."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise BenchError(f"connection closed before a response head: {buf[:200]!r}")
            buf += data
        head, _, body = buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        length = int(match.group(1)) if match else 0
        while len(body) < length:
            data = sock.recv(65536)
            if not data:
                break
            body += data
        return status, body


def wait_ready(server: ServerProcess, path: str, body_size: int, timeout: float = 30.0) -> None:
    """Poll until the port accepts, then check one response is right."""
    deadline = time.monotonic() + timeout
    port = server.opts.port
    while True:
        server.check_alive()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"{server.name} did not listen on {port} in {timeout:g} s") from None
            time.sleep(0.02)
    try:
        status, body = http_get(port, path)
    except (OSError, BenchError, ValueError, IndexError) as exc:
        raise BenchError(f"{server.name}: GET {path} failed: {exc}; {server.log_tail()}") from None
    expected = HELLO if body_size == 13 else None
    if status != 200 or len(body) != body_size or (expected and body != expected):
        raise BenchError(f"{server.name}: GET {path} gave {status} with {len(body)} body bytes")


# -- wrk ------------------------------------------------------------------------


def wrk_script(workload: Workload, tmp: Path) -> Path:
    """The workload's Lua script with the reporting ``done()`` appended."""
    out = tmp / f"wrk-{workload.script}"
    if not out.exists():
        out.write_text((LUA / workload.script).read_text() + "\n" + (LUA / "report.lua").read_text())
    return out


def run_wrk(
    port: int,
    workload: Workload,
    seconds: int,
    tmp: Path,
    server_pids: Optional[list[int]] = None,
    spread_server: bool = False,
) -> dict[str, Any]:
    argv = [
        *pin(CPU_LOAD),
        "wrk",
        "-t1",
        f"-c{workload.connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(wrk_script(workload, tmp)),
    ]
    for header in workload.headers:
        argv += ["-H", header]
    argv.append(f"http://127.0.0.1:{port}{workload.path}")
    if workload.script_args:
        argv += ["--", *workload.script_args]
    pids = server_pids or []
    hz = os.sysconf("SC_CLK_TCK")
    ticks0, cpu0_0, cpu1_0 = cpu_ticks(pids), cpu_times(CPU_SERVER), cpu_times(CPU_LOAD)
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks1, cpu0_1, cpu1_1 = cpu_ticks(pids), cpu_times(CPU_SERVER), cpu_times(CPU_LOAD)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result = json.loads(line[len("BENCH_JSON ") :])
            break
    else:
        raise BenchError(f"wrk printed no result (status {proc.returncode}): {proc.stderr.strip()[:300]}")
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6) if result["duration_us"] else 0.0
    result["socket_errors"] = sum(result[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    span0, span1 = cpu0_1[1] - cpu0_0[1], cpu1_1[1] - cpu1_0[1]
    if pids and span0 > 0 and span1 > 0:
        # How much of each CPU its own process used, and how much went to
        # anything else (other jobs on a shared machine; on a quiet one a few
        # percent of kernel work): a run where "others" is high was disturbed.
        server_ticks = ticks1 - ticks0
        wrk_ticks = hz * (usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime)
        busy0, busy1 = cpu0_1[0] - cpu0_0[0], cpu1_1[0] - cpu1_0[0]
        result["server_cpu_pct"] = round(100 * server_ticks / span0, 1)
        result["wrk_cpu_pct"] = round(100 * wrk_ticks / span1, 1)
        if spread_server:
            # Server processes on both CPUs, wrk on one of them: only the
            # total of both CPUs says what went to other jobs.
            others = max(0.0, busy0 + busy1 - server_ticks - wrk_ticks) / (span0 + span1)
            result["others_cpu_pct"] = result["others_cpu1_pct"] = round(100 * others, 1)
        else:
            result["others_cpu_pct"] = round(100 * max(0, busy0 - server_ticks) / span0, 1)
            result["others_cpu1_pct"] = round(100 * max(0.0, busy1 - wrk_ticks) / span1, 1)
        # Requests per second of server CPU: steadier than req/s when other
        # jobs take CPU 0 from the server (misleading for a server that is
        # not CPU-bound, e.g. one waiting on Nagle's algorithm).
        if server_ticks > 0:
            result["rps_per_cpu"] = round(result["requests"] / (server_ticks / hz), 1)
    return result


def disturbance(result: dict[str, Any]) -> float:
    """The larger share of either CPU that went to other processes during a run, in percent."""
    return max(result.get("others_cpu_pct", 0.0), result.get("others_cpu1_pct", 0.0))


def run_measured(
    args: argparse.Namespace, server: ServerProcess, workload: Workload, tmp: Path, all_pids: list[int]
) -> dict[str, Any]:
    """One counted run; repeated (at most ``--retries`` times) while other jobs disturb it.

    Keeps the least disturbed attempt.
    """
    attempts = []
    for _ in range(1 + args.retries):
        wait_quiet(all_pids)
        spread = server.cpus != CPU_SERVER
        result = run_wrk(server.opts.port, workload, args.duration, tmp, server.pids(), spread)
        server.check_alive()
        attempts.append(result)
        if disturbance(result) <= args.max_disturbed:
            break
    best = min(attempts, key=disturbance)
    best["attempts"] = len(attempts)
    return best


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rps = [r["rps"] for r in runs]
    p99 = [r["latency_us"]["p99"] / 1000 for r in runs]
    return {
        "median_rps": round(statistics.median(rps), 1),
        "min_rps": round(min(rps), 1),
        "max_rps": round(max(rps), 1),
        "p99_ms": round(statistics.median(p99), 3),
        "p99_ms_max": round(max(p99), 3),
        "p50_ms": round(statistics.median(r["latency_us"]["p50"] / 1000 for r in runs), 3),
        "socket_errors": sum(r["socket_errors"] for r in runs),
        "non2xx": sum(r["non2xx"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
        "rps_per_cpu": round(statistics.median(r.get("rps_per_cpu", 0.0) for r in runs), 1),
        "disturbed_pct_max": max(disturbance(r) for r in runs),
        "workers": worker_split(runs),
        "runs": runs,
    }


def worker_split(runs: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """Requests per worker process over the runs (the /pid workloads), and the busiest one's share."""
    counts: list[int] = []
    for r in runs:
        per_pid = sorted(r.get("workers", {}).values(), reverse=True)
        counts += [0] * (len(per_pid) - len(counts))
        for i, n in enumerate(per_pid):
            counts[i] += n
    total = sum(counts)
    if not total:
        return None
    # Per run, the busiest process first: a worker's pid changes between
    # servers, not between runs, but the order by load is what compares.
    return {"requests_by_rank": counts, "busiest_share": round(counts[0] / total, 3)}


@dataclass(frozen=True)
class Variant:
    """One server configuration in a measurement: a label, a launcher and its options."""

    label: str
    server: str
    opts: dict[str, Any]
    #: CPUs the server is pinned to (a number or a taskset list).
    cpus: int | str = CPU_SERVER


def measure(args: argparse.Namespace, variants: list[Variant], workload: Workload, tmp: Path) -> dict[str, Any]:
    """Start every variant, warm each up, then run the counted runs round by round; results by label."""
    started: dict[str, ServerProcess] = {}
    results: dict[str, Any] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        for v in variants:
            opts = Options(port=free_port(), body_size=workload.body_size, close=workload.close, **v.opts)
            server = ServerProcess(v.server, opts, tmp, v.cpus)
            started[v.label] = server
            try:
                wait_ready(server, workload.path, workload.body_size)
            except BenchError as exc:
                print(f"  {v.label}: FAILED to start: {exc}", flush=True)
                results[v.label] = {"error": str(exc)}
                server.kill()
        live = [v.label for v in variants if v.label not in results]
        all_pids = [pid for n in live for pid in started[n].pids()]
        for name in live:
            runs[name] = []
            if not args.warmup:
                continue
            wait_quiet(all_pids)
            try:
                warm = run_wrk(started[name].opts.port, workload, args.warmup, tmp)
                started[name].check_alive()
            except (BenchError, subprocess.TimeoutExpired) as exc:
                print(f"  {name}: warm-up FAILED: {exc}", flush=True)
                results[name] = {"error": str(exc)}
                del runs[name]
                continue
            print(f"  {name:22s} warm-up  {warm['rps']:10.0f} req/s", flush=True)
        for round_no in range(args.runs):
            order = [n for n in live if n in runs]
            order = order[round_no % len(order) :] + order[: round_no % len(order)] if order else []
            for name in order:
                if name in results:
                    continue
                try:
                    result = run_measured(args, started[name], workload, tmp, all_pids)
                except (BenchError, subprocess.TimeoutExpired) as exc:
                    print(f"  {name}: run FAILED: {exc}", flush=True)
                    results[name] = {"error": str(exc)}
                    continue
                runs[name].append(result)
                split = sorted(result.get("workers", {}).values(), reverse=True)
                print(
                    f"  {name:22s} run {round_no + 1}/{args.runs} {result['rps']:10.0f} req/s"
                    f"  p99 {result['latency_us']['p99'] / 1000:8.2f} ms"
                    f"  errors {result['socket_errors']}  non-2xx {result['non2xx']}"
                    f"  cpu0 server {result.get('server_cpu_pct', '?')}%"
                    f" others {result.get('others_cpu_pct', '?')}%"
                    f"  cpu1 wrk {result.get('wrk_cpu_pct', '?')}% others {result.get('others_cpu1_pct', '?')}%"
                    + (f"  per worker {split}" if len(split) > 1 else "")
                    + (f"  (attempts {result['attempts']})" if result["attempts"] > 1 else ""),
                    flush=True,
                )
    finally:
        for server in started.values():
            server.kill()
    for name, name_runs in runs.items():
        if name not in results and name_runs:
            results[name] = summarise(name_runs)
    return results


def load_phase(args: argparse.Namespace, servers: list[str], tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for wname in args.workloads:
        workload = WORKLOADS[wname]
        print(f"\n== {wname}: {workload.title} == [{elapsed()}]", flush=True)
        out[wname] = measure(args, [Variant(name, name, {}) for name in servers], workload, tmp)
    return out


def workers_variants(args: argparse.Namespace) -> list[Variant]:
    """gshutdown one process (pinned as in the load phase), gshutdown and gunicorn with 2 workers on every CPU."""
    every_cpu = ",".join(str(c) for c in range(os.cpu_count() or 1))
    extra = tuple(args.workers_args.split())
    label = " ".join(["gshutdown -w 2", *extra])
    return [
        Variant("gshutdown", "gshutdown", {}),
        Variant(label, "gshutdown", {"workers": 2, "extra_args": extra}, every_cpu),
        Variant("gunicorn-gevent -w 2", "gunicorn-gevent", {"workers": 2}, every_cpu),
    ]


def workers_phase(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    variants = workers_variants(args)
    for wname in args.workers_workloads:
        workload = WORKLOADS[wname]
        print(f"\n== workers, {wname}: {workload.title} == [{elapsed()}]", flush=True)
        out[wname] = measure(args, variants, workload, tmp)
    return out


# -- idle connections: memory and shutdown ----------------------------------------


def read_json_line(stream: Any, timeout: float) -> Optional[dict[str, Any]]:
    """One JSON line from a child's stdout, or None if none came within ``timeout`` s."""
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            return None
    line = stream.readline()
    return json.loads(line) if line.strip() else None


def idle_test(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    opts = Options(port=free_port(), idle=True, graceful_timeout=args.graceful_timeout)
    server = ServerProcess(name, opts, tmp)
    client: Optional[subprocess.Popen[str]] = None
    result: dict[str, Any] = {}
    try:
        wait_ready(server, "/", 13)
        for _ in range(100):  # let lazy imports and first allocations happen before "before"
            http_get(opts.port)
        wait_quiet(server.pids())
        rss_pid = server.serving_pid()
        before = vm_rss_kib(rss_pid)
        fds_before = open_fds(rss_pid)
        client = subprocess.Popen(
            [
                *pin(CPU_LOAD),
                sys.executable,
                str(BENCH / "idle_clients.py"),
                "--port",
                str(opts.port),
                "--count",
                str(args.idle_conns),
                "--max-seconds",
                "600",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        opened = read_json_line(client.stdout, timeout=300)
        if opened is None:
            raise BenchError("the idle client did not report")
        server.check_alive()
        wait_quiet(server.pids())
        after = vm_rss_kib(rss_pid)
        count = opened["opened"]
        result.update(
            opened=count,
            failed=opened["failed"],
            first_error=opened["first_error"],
            open_seconds=opened["seconds"],
            server_fds_before=fds_before,
            server_fds_after=open_fds(rss_pid),
            rss_before_kib=before,
            rss_after_kib=after,
            rss_per_conn_kib=round((after - before) / count, 2) if count else None,
        )
        print(
            f"  {name:16s} {count} connections open ({opened['failed']} failed) in {opened['seconds']:.1f} s;"
            f" RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB"
            f" = {result['rss_per_conn_kib']} KiB per connection",
            flush=True,
        )
        # Shutdown: SIGTERM, then wait for the exit on a pidfd (no polling delay).
        limit = max(args.graceful_timeout, 30.0) + 20.0
        pidfd = os.pidfd_open(server.pid)
        try:
            wall0 = time.time()
            t0 = time.monotonic()
            os.kill(server.pid, signal.SIGTERM)
            ready, _, _ = select.select([pidfd], [], [], limit)
            elapsed = time.monotonic() - t0
        finally:
            os.close(pidfd)
        if ready:
            result["shutdown_seconds"] = round(elapsed, 4)
            result["exit_status"] = server.proc.wait(timeout=10)
        else:
            result["shutdown_seconds"] = None
            result["shutdown_error"] = f"still running {limit:g} s after SIGTERM"
        assert client.stdin is not None
        client.stdin.write("quit\n")
        client.stdin.flush()
        final = read_json_line(client.stdout, timeout=30) or {}
        result["closed_by_server"] = final.get("closed_by_server")
        if final.get("all_closed_at"):
            result["all_closed_seconds"] = round(final["all_closed_at"] - wall0, 4)
        result.update(server_log_timeline(server))
        shown = "timeout" if result["shutdown_seconds"] is None else f"{result['shutdown_seconds']:.3f} s"
        print(
            f"  {name:16s} SIGTERM -> exit {shown} (status {result.get('exit_status')});"
            f" {result['closed_by_server']} connections closed by the server",
            flush=True,
        )
        timeline = [
            f"{label} {result[key]:.3f} s"
            for key, label in (
                ("all_closed_seconds", "client saw the last close at"),
                ("server_shutdown_seconds", "server's shutdown() took"),
                ("server_exit_log_seconds", "server's exit log line at"),
            )
            if result.get(key) is not None
        ]
        if timeline:
            print(f"  {'':16s} " + "; ".join(timeline), flush=True)
    except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"  {name}: FAILED: {exc}", flush=True)
        result["error"] = str(exc)
    finally:
        if client is not None:
            try:
                client.kill()
            except ProcessLookupError:
                pass
            client.wait(timeout=10)
        server.kill()
    return result


def server_log_timeline(server: ServerProcess) -> dict[str, float]:
    """gshutdown's own account of its shutdown, from its info-level log."""
    if server.name != "gshutdown":
        return {}
    try:
        text = server.log_path.read_text(errors="replace")
    except OSError:
        return {}
    out = {}
    match = re.search(r"shutdown: \w+ in ([\d.]+) s", text)
    if match:
        out["server_shutdown_seconds"] = float(match.group(1))
    match = re.search(r"exit: \w+ after ([\d.]+) s", text)
    if match:
        out["server_exit_log_seconds"] = float(match.group(1))
    return out


def idle_phase(args: argparse.Namespace, servers: list[str], tmp: Path) -> dict[str, Any]:
    print(
        f"\n== idle: {args.idle_conns} idle keep-alive connections, RSS and SIGTERM -> exit"
        f" ({args.idle_runs} run(s) each) == [{elapsed()}]",
        flush=True,
    )
    out = {}
    for name in servers:
        runs = [idle_test(name, args, tmp) for _ in range(args.idle_runs)]
        good = [r for r in runs if "opened" in r]
        if not good:
            out[name] = {**runs[-1], "runs": runs}
            continue
        # The run with the median shutdown time stands for the server (a
        # timeout counts as the longest); RSS is the median over the runs.
        ranked = sorted(good, key=lambda r: math.inf if r.get("shutdown_seconds") is None else r["shutdown_seconds"])
        summary = dict(ranked[(len(ranked) - 1) // 2])
        summary["rss_per_conn_kib"] = statistics.median(r["rss_per_conn_kib"] for r in good)
        summary["shutdown_seconds_all"] = [r.get("shutdown_seconds") for r in runs]
        summary["runs"] = runs
        out[name] = summary
    return out


# -- profile --------------------------------------------------------------------


def _frame_key(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame.strip())


def analyse_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """Own and inclusive shares per function from py-spy's raw (folded) output."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_key(f) for f in stack.split(";")[1:]]  # [0] is the process
        if not frames:
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + count

    def table(counts: dict[str, int]) -> list[dict[str, Any]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [{"function": f, "percent": round(100 * c / total, 1)} for f, c in ranked]

    return {"samples": total, "own": table(own), "inclusive": table(incl)}


def profile_one(args: argparse.Namespace, pyspy: str, workload: Workload, stamp: str, tmp: Path) -> dict[str, Any]:
    """py-spy on gshutdown under one workload: folded stacks (analysed) and a flame graph."""
    opts = Options(port=free_port())
    server = ServerProcess("gshutdown", opts, tmp)
    base = args.results_dir / f"profile-{stamp}-{workload.name}"
    outputs = {"raw": base.with_suffix(".txt"), "flamegraph": base.with_suffix(".svg")}
    result: dict[str, Any] = {}
    try:
        wait_ready(server, workload.path, workload.body_size)
        result["rps_without_sampling"] = round(run_wrk(opts.port, workload, args.warmup or 2, tmp)["rps"], 1)
        for fmt, path in outputs.items():
            # Blocking sampling (py-spy pauses the process for each sample):
            # it costs some throughput, but non-blocking sampling of a
            # greenlet switching this fast records torn stacks.
            spy = subprocess.Popen(
                [
                    *pin(CPU_LOAD),
                    pyspy,
                    "record",
                    "--pid",
                    str(server.pid),
                    "--duration",
                    str(args.profile_seconds),
                    "--rate",
                    "200",
                    "--format",
                    fmt,
                    "-o",
                    str(path),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                load_result = run_wrk(opts.port, workload, args.profile_seconds + 1, tmp)
                _, err = spy.communicate(timeout=args.profile_seconds + 60)
            finally:
                if spy.poll() is None:
                    spy.kill()
                    spy.wait()
            if spy.returncode != 0 or not path.exists():
                raise BenchError(f"py-spy failed: {err.strip()[-300:]}")
            result[f"rps_while_sampling_{fmt}"] = round(load_result["rps"], 1)
        result.update(analyse_profile(outputs["raw"]))
        result["files"] = {k: str(v) for k, v in outputs.items()}
        print(
            f"  {workload.name}: {result['samples']} samples ({result['rps_without_sampling']:.0f} req/s"
            f" unsampled, {result['rps_while_sampling_raw']:.0f} while sampled); {outputs['flamegraph']}",
            flush=True,
        )
        own, incl = result["own"], result["inclusive"]
        print(f"    {'own %':>6s}  {'function (own time)':55s} {'incl %':>6s}  function (inclusive)", flush=True)
        for i in range(max(len(own), len(incl))):
            left = f"{own[i]['percent']:6.1f}  {own[i]['function'][:55]:55s}" if i < len(own) else " " * 63
            right = f"{incl[i]['percent']:6.1f}  {incl[i]['function']}" if i < len(incl) else ""
            print(f"    {left} {right}", flush=True)
    except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"  {workload.name}: FAILED: {exc}", flush=True)
        result["error"] = str(exc)
    finally:
        server.kill()
    return result


def profile_phase(args: argparse.Namespace, stamp: str, tmp: Path) -> dict[str, Any]:
    print(f"\n== profile: py-spy on gshutdown ({', '.join(args.profile_workloads)}) ==", flush=True)
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        print("  skipped: py-spy is not installed (pip install py-spy)", flush=True)
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    return {name: profile_one(args, pyspy, WORKLOADS[name], stamp, tmp) for name in args.profile_workloads}


# -- reporting ------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            mem = fh.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": packages,
        "wrk": wrk[0].strip() if wrk else None,
        "pinning": {"server_cpu": CPU_SERVER, "wrk_cpu": CPU_LOAD} if pin(0) else None,
        "loadavg_start": os.getloadavg(),
    }


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def print_load(
    load_results: dict[str, Any], servers: list[str], args: argparse.Namespace, absent: dict[str, str]
) -> None:
    print(
        f"\nRESULTS: req/s median of {args.runs} runs of {args.duration} s"
        + (f" (after one {args.warmup} s warm-up)" if args.warmup else " (no warm-up run)")
        + "; spread = min-max; p99 = median of the runs' p99; errors = wrk socket errors"
        " (connect/read/write/timeout); 'gshutdown /' = gshutdown's median over this server's."
    )
    for wname, results in load_results.items():
        print(f"\n{wname} ({WORKLOADS[wname].title})")
        print(
            f"  {'server':16s} {'req/s':>10s} {'spread':>19s} {'p99 ms':>9s} {'errors':>7s}"
            f" {'non-2xx':>8s} {'gshutdown /':>12s}"
        )
        ours = results.get("gshutdown", {}).get("median_rps")
        for name in servers:
            row = results.get(name)
            if row is None:
                continue
            if "error" in row:
                print(f"  {name:16s} FAILED: {row['error'][:90]}")
                continue
            ratio = f"{ours / row['median_rps']:.2f}x" if ours and row["median_rps"] else "-"
            spread = f"{fmt_rate(row['min_rps'])}-{fmt_rate(row['max_rps'])}"
            print(
                f"  {name:16s} {fmt_rate(row['median_rps']):>10s} {spread:>19s} {row['p99_ms']:9.2f}"
                f" {row['socket_errors']:7d} {row['non2xx']:8d} {ratio:>12s}"
            )
        for name, reason in absent.items():
            print(f"  {name:16s} absent: {reason}")
    names = [n for n in servers if any(n in r and "median_rps" in r[n] for r in load_results.values())]
    if names:
        print("\nreq/s (median) per server and workload")
        print(f"  {'server':16s}" + "".join(f" {w:>15s}" for w in load_results))
        for name in names:
            cells = []
            for results in load_results.values():
                row = results.get(name, {})
                cells.append(fmt_rate(row["median_rps"]) if "median_rps" in row else "-")
            print(f"  {name:16s}" + "".join(f" {c:>15s}" for c in cells))
        for name in absent:
            print(f"  {name:16s}" + "".join(f" {'absent':>15s}" for _ in load_results))


def print_workers(workers: dict[str, Any], variants: list[Variant]) -> None:
    print("\nworkers (req/s median; the busiest worker's share of the requests, over all runs)")
    one = variants[0].label
    for wname, results in workers.items():
        print(f"\n{wname} ({WORKLOADS[wname].title})")
        print(f"  {'server':30s} {'req/s':>10s} {'p99 ms':>9s} {'errors':>7s} {'vs 1 process':>13s}  per worker")
        base = results.get(one, {}).get("median_rps")
        for v in variants:
            row = results.get(v.label)
            if row is None:
                continue
            if "error" in row:
                print(f"  {v.label:30s} FAILED: {row['error'][:90]}")
                continue
            ratio = f"{row['median_rps'] / base:.2f}x" if base else "-"
            split = row.get("workers") or {}
            shares = ""
            if split:
                total = sum(split["requests_by_rank"])
                shares = " / ".join(f"{100 * n / total:.0f}%" for n in split["requests_by_rank"])
            print(
                f"  {v.label:30s} {fmt_rate(row['median_rps']):>10s} {row['p99_ms']:9.2f}"
                f" {row['socket_errors'] + row['non2xx']:7d} {ratio:>13s}  {shares}"
            )


def print_idle(idle: dict[str, Any], count: int) -> None:
    print(f"\nidle keep-alive connections ({count} requested)")
    print(
        f"  {'server':16s} {'open':>6s} {'RSS before':>11s} {'RSS after':>10s} {'KiB/conn':>9s}"
        f" {'SIGTERM->exit':>14s} {'status':>7s} {'closed by server':>17s}"
    )
    for name, row in idle.items():
        if "error" in row and "opened" not in row:
            print(f"  {name:16s} FAILED: {row['error'][:90]}")
            continue
        shut = row.get("shutdown_seconds")
        print(
            f"  {name:16s} {row['opened']:6d} {row['rss_before_kib'] / 1024:9.1f}Mi"
            f" {row['rss_after_kib'] / 1024:8.1f}Mi {row['rss_per_conn_kib']:9.2f}"
            f" {f'{shut:.3f} s' if shut is not None else 'timeout':>14s} {row.get('exit_status', '-')!s:>7s}"
            f" {row.get('closed_by_server')!s:>17s}"
        )
        every = row.get("shutdown_seconds_all") or []
        if len(every) > 1:
            shown = ", ".join("timeout" if v is None else f"{v:.3f}" for v in every)
            print(f"  {'':16s} SIGTERM->exit in each run (median shown above): {shown} s")


def evaluate_targets(
    load_results: dict[str, Any], idle: dict[str, Any], workers: dict[str, Any], variants: list[Variant]
) -> list[dict[str, str]]:
    """The project's targets, each with the measured value and PASS/MISS (N/A: not measured)."""

    def row(workload: str, server: str, results: Optional[dict[str, Any]] = None) -> Optional[dict[str, Any]]:
        found = (load_results if results is None else results).get(workload, {}).get(server)
        return found if found and "median_rps" in found else None

    def rows_ratio(
        ours: Optional[dict[str, Any]], theirs: Optional[dict[str, Any]], need: float, text: str
    ) -> dict[str, str]:
        if not ours or not theirs:
            return {"target": text, "value": "not measured", "status": "N/A"}
        value = ours["median_rps"] / theirs["median_rps"]
        return {"target": text, "value": f"{value:.2f}x", "status": "PASS" if value >= need else "MISS"}

    def ratio_check(workload: str, peer: str, need: float, text: str) -> dict[str, str]:
        return rows_ratio(row(workload, "gshutdown"), row(workload, peer), need, text)

    def p99_check(workload: str, text: str) -> dict[str, str]:
        ours = row(workload, "gshutdown")
        peers = {p: row(workload, p) for p in GEVENT_PEERS}
        peers = {p: r for p, r in peers.items() if r}
        if not ours or not peers:
            return {"target": text, "value": "not measured", "status": "N/A"}
        value = f"{ours['p99_ms']:.2f} ms vs " + ", ".join(f"{p} {r['p99_ms']:.2f}" for p, r in peers.items())
        ok = all(ours["p99_ms"] < r["p99_ms"] for r in peers.values())
        return {"target": text, "value": value, "status": "PASS" if ok else "MISS"}

    out = [
        ratio_check("keepalive-50", "gunicorn-gevent", 3.0, "keep-alive 50: >= 3x gunicorn-gevent req/s"),
        ratio_check("keepalive-50", "raw-gevent", 0.7, "keep-alive 50: >= 0.7x raw-gevent ceiling"),
        p99_check("keepalive-50", "keep-alive 50: p99 below every gevent peer's"),
    ]
    check = ratio_check("keepalive-1000", "raw-gevent", 0.75, "keep-alive 1,000: >= 0.75x raw-gevent, no errors")
    ours = row("keepalive-1000", "gshutdown")
    if ours:
        errors = ours["socket_errors"] + ours["non2xx"]
        check["value"] += f", {errors} errors"
        if errors and check["status"] == "PASS":
            check["status"] = "MISS"
    out.append(check)
    out.append(p99_check("keepalive-1000", "keep-alive 1,000: p99 below every gevent peer's"))
    out.append(ratio_check("close", "raw-gevent", 0.7, "Connection: close: >= 0.7x raw-gevent ceiling"))
    out.append(ratio_check("post-1m", "gunicorn-gevent", 1.5, "1 MiB POST: >= 1.5x gunicorn-gevent"))
    out.append(ratio_check("post-1m", "uwsgi-gevent", 1.0, "1 MiB POST: >= uwsgi-gevent"))
    # The last README refresh before round 2 measured 0.63x (19,963 vs 31,871).
    out.append(ratio_check("body-64k", "raw-gevent", 0.63, "64 KiB response: not below 0.63x raw-gevent"))
    g = idle.get("gshutdown", {})
    text = "<= 16 KiB RSS per idle keep-alive connection (10,000)"
    per = g.get("rss_per_conn_kib")
    if per is None:
        out.append({"target": text, "value": "not measured", "status": "N/A"})
    else:
        value = f"{per:.2f} KiB at {g['opened']}"
        out.append({"target": text, "value": value, "status": "PASS" if per <= 16 and g["opened"] >= 10000 else "MISS"})
    text = "10,000 idle connections: SIGTERM -> exit < 0.5 s"
    shut = g.get("shutdown_seconds")
    if "opened" not in g:
        out.append({"target": text, "value": "not measured", "status": "N/A"})
    else:
        value = "timeout" if shut is None else f"{shut:.3f} s at {g['opened']}"
        ok = shut is not None and shut < 0.5 and g["opened"] >= 10000
        if g.get("closed_by_server") is not None and g["closed_by_server"] < g["opened"]:
            value += f", only {g['closed_by_server']} closed by the server"
            ok = False
        out.append({"target": text, "value": value, "status": "PASS" if ok else "MISS"})
    one, multi, gunicorn = (v.label for v in variants)
    for wname in ("workers-keepalive-50", "workers-close"):
        short = wname.removeprefix("workers-")
        a, b, c = (row(wname, label, workers) for label in (one, multi, gunicorn))
        out.append(rows_ratio(b, a, 1.7, f"{multi}, {short}: >= 1.7x one process"))
        out.append(rows_ratio(b, c, 4.0, f"{multi}, {short}: >= 4x gunicorn-gevent -w 2"))
        text = f"{multi}, {short}: busiest worker <= 60% of requests"
        split = (b or {}).get("workers")
        if split and len(split["requests_by_rank"]) >= 2:
            share = split["busiest_share"]
            out.append({"target": text, "value": f"{100 * share:.0f}%", "status": "PASS" if share <= 0.6 else "MISS"})
        elif b:
            out.append({"target": text, "value": "one worker served everything", "status": "MISS"})
        else:
            out.append({"target": text, "value": "not measured", "status": "N/A"})
    return out


def print_targets(targets: list[dict[str, str]]) -> None:
    print("\ntargets (gshutdown, measured in this run)")
    for t in targets:
        print(f"  {t['status']:4s}  {t['target']:62s} {t['value']}")


def write_chart(load_results: dict[str, Any], servers: list[str], info: dict[str, Any], runs: int, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no chart: matplotlib is not installed (pip install matplotlib)")
        return False
    workloads = [w for w, r in load_results.items() if any("median_rps" in v for v in r.values())]
    if not workloads:
        return False
    cols = min(3, len(workloads))
    rows = math.ceil(len(workloads) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    palette = plt.get_cmap("tab10")
    colour = {name: palette(i % 10) for i, name in enumerate(servers)}
    for ax, wname in zip(axes.flat, workloads, strict=False):
        names = [n for n in servers if "median_rps" in load_results[wname].get(n, {})]
        rows_ = [load_results[wname][n] for n in names]
        med = [r["median_rps"] for r in rows_]
        err = [
            [m - r["min_rps"] for m, r in zip(med, rows_, strict=True)],
            [r["max_rps"] - m for m, r in zip(med, rows_, strict=True)],
        ]
        bars = ax.bar(range(len(names)), med, yerr=err, capsize=3, color=[colour[n] for n in names])
        for bar, value, row in zip(bars, med, rows_, strict=True):
            ax.annotate(
                f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}",
                (bar.get_x() + bar.get_width() / 2, row["max_rps"]),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        positive = [m for m in med if m > 0]
        log = bool(positive) and max(positive) / min(positive) > 30
        if log:  # one bar (the ceiling, or a stalled server) would flatten the rest
            ax.set_yscale("log")
        ax.set_title(WORKLOADS[wname].title + (" (log scale)" if log else ""), fontsize=9)
        ax.set_ylabel("req/s", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.15)
    for ax in list(axes.flat)[len(workloads) :]:
        ax.axis("off")
    fig.suptitle(
        f"req/s, median of {runs} runs (bars: min-max) - {info['cpu_model']}, {info['cores']} cores,"
        f" server on CPU {CPU_SERVER}, wrk on CPU {CPU_LOAD} - {info['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- main -----------------------------------------------------------------------


def raise_nofile(need: int) -> int:
    """Raise RLIMIT_NOFILE (inherited by servers and clients); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, need)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            want = hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        return soft
    return want


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run under 5 minutes: 3 runs of 2 s, no warm-up, no redos; servers {','.join(QUICK_SERVERS)};"
        f" idle: {','.join(QUICK_IDLE_SERVERS)}",
    )
    p.add_argument("--servers", help="comma-separated (default: all; quick: the README table's)")
    p.add_argument("--workloads", default=",".join(LOAD_WORKLOADS), help="comma-separated (default: all)")
    p.add_argument("--phases", default="load,workers,idle", help="comma-separated from load,workers,idle,profile")
    p.add_argument("--runs", type=int, help="counted runs per server and workload (default 5; quick 3)")
    p.add_argument("--duration", type=int, help="seconds per counted run (default 10; quick 2)")
    p.add_argument("--warmup", type=int, help="seconds of the warm-up run (default 5; quick 0: none)")
    p.add_argument(
        "--workers-args",
        default="",
        help="more gshutdown options for the workers phase's '-w 2' server, e.g. '--reuse-port'",
    )
    p.add_argument(
        "--workers-workloads",
        default="workers-keepalive-50,workers-close",
        help="workloads of the workers phase (default workers-keepalive-50,workers-close)",
    )
    p.add_argument(
        "--max-disturbed",
        type=float,
        default=15.0,
        help="redo a run when other processes took more than this %% of CPU 0 or CPU 1 (default 15)",
    )
    p.add_argument("--retries", type=int, help="redos per disturbed run (default 2; quick 0: never)")
    p.add_argument("--idle-conns", type=int, default=10000, help="idle connections (default 10000)")
    p.add_argument(
        "--idle-servers",
        help=f"idle phase servers (default {','.join(IDLE_SERVERS)}; quick {','.join(QUICK_IDLE_SERVERS)})",
    )
    p.add_argument(
        "--graceful-timeout", type=float, default=10.0, help="gshutdown's and pywsgi's stop timeout (default 10)"
    )
    p.add_argument("--idle-runs", type=int, help="idle tests per server (default 3; quick 1)")
    p.add_argument("--profile-seconds", type=int, help="py-spy sampling seconds (default 15; quick 5)")
    p.add_argument(
        "--profile-workloads",
        help="workloads to profile gshutdown under (default: keepalive-50,pipeline-16,post-1m,close; quick:"
        " keepalive-50)",
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--list", action="store_true", help="list servers and workloads, then exit")
    args = p.parse_args(argv)
    quick = args.quick
    args.runs = args.runs or (3 if quick else 5)
    args.duration = args.duration or (2 if quick else 10)
    # Quick: no warm-up run (the median of three drops a slow first run) and
    # no redos, or a busy machine would double the time.
    args.warmup = args.warmup if args.warmup is not None else (0 if quick else 5)
    args.retries = args.retries if args.retries is not None else (0 if quick else 2)
    args.servers = args.servers or ",".join(QUICK_SERVERS if quick else MODULES)
    args.idle_servers = args.idle_servers or ",".join(QUICK_IDLE_SERVERS if quick else IDLE_SERVERS)
    args.profile_seconds = args.profile_seconds or (5 if quick else 15)
    args.idle_runs = args.idle_runs or (1 if quick else 3)
    args.profile_workloads = (
        args.profile_workloads or ("keepalive-50" if quick else "keepalive-50,pipeline-16,post-1m,close")
    ).split(",")
    args.servers = [s for s in args.servers.split(",") if s]
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.phases = [s for s in args.phases.split(",") if s]
    args.idle_servers = [s for s in args.idle_servers.split(",") if s]
    args.workers_workloads = [w for w in args.workers_workloads.split(",") if w]
    for name in args.servers + args.idle_servers:
        if name not in MODULES:
            p.error(f"unknown server {name!r} (have: {', '.join(MODULES)})")
    for name in args.workloads + args.profile_workloads + args.workers_workloads:
        if name not in WORKLOADS:
            p.error(f"unknown workload {name!r} (have: {', '.join(WORKLOADS)})")
    for name in args.phases:
        if name not in ("load", "workers", "idle", "profile"):
            p.error(f"unknown phase {name!r} (have: load, workers, idle, profile)")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name in MODULES:
            reason = load(name).unavailable()
            print(f"server   {name:16s} {'unavailable: ' + reason if reason else ''}")
        for w in WORKLOADS.values():
            print(f"workload {w.name:16s} {w.title}")
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    if not pin(0):
        print("warning: no taskset or fewer than 2 CPUs: server and wrk are not pinned", file=sys.stderr)
    nofile = raise_nofile(args.idle_conns + 2048)
    if "idle" in args.phases and nofile < args.idle_conns + 256:
        args.idle_conns = max(100, nofile - 256)
        print(f"warning: RLIMIT_NOFILE is {nofile}: idle test with {args.idle_conns} connections", file=sys.stderr)

    skipped = {}
    for name in dict.fromkeys(args.servers + args.idle_servers):
        reason = load(name).unavailable()
        if reason:
            skipped[name] = reason
            print(f"skipping {name}: {reason}", flush=True)
    servers = [s for s in args.servers if s not in skipped]
    idle_servers = [s for s in args.idle_servers if s not in skipped]
    variants = workers_variants(args)

    info = machine()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"{info['cpu_model']}, {info['cores']} cores, kernel {info['kernel']}, Python {info['python']};"
        f" load average {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}",
        flush=True,
    )
    report: dict[str, Any] = {
        "machine": info,
        "config": {
            "runs": args.runs,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "idle_conns": args.idle_conns,
            "idle_runs": args.idle_runs,
            "profile_seconds": args.profile_seconds,
            "profile_workloads": args.profile_workloads,
            "graceful_timeout_s": args.graceful_timeout,
            "workloads": {w: asdict(WORKLOADS[w]) for w in args.workloads},
            "servers": servers,
            "commands": {name: load(name).command(Options(port=0)) for name in servers},
            "workers_commands": {
                v.label: pin(v.cpus) + load(v.server).command(Options(port=0, **v.opts)) for v in variants
            },
        },
        "skipped": skipped,
    }
    load_results: dict[str, Any] = {}
    idle: dict[str, Any] = {}
    workers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gshutdown-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if "load" in args.phases and servers:
            load_results = load_phase(args, servers, tmp)
            report["load"] = load_results
        if "workers" in args.phases:
            workers = workers_phase(args, tmp)
            report["workers"] = workers
        if "idle" in args.phases and idle_servers:
            idle = idle_phase(args, idle_servers, tmp)
            report["idle"] = idle
        if "profile" in args.phases:
            report["profile"] = profile_phase(args, stamp, tmp)
    info["loadavg_end"] = os.getloadavg()

    if load_results:
        print_load(load_results, servers, args, {n: skipped[n] for n in args.servers if n in skipped})
    if workers:
        print_workers(workers, variants)
    if idle:
        print_idle(idle, args.idle_conns)
    targets = evaluate_targets(load_results, idle, workers, variants)
    report["targets"] = targets
    print_targets(targets)
    print(f"\ntotal time: {elapsed()}")
    json_path = args.results_dir / f"bench-{stamp}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {json_path}")
    if load_results:
        png_path = args.results_dir / f"bench-{stamp}.png"
        if write_chart(load_results, servers, info, args.runs, png_path):
            print(f"chart:   {png_path}")
    for name, prof in report.get("profile", {}).items():
        if isinstance(prof, dict) and "files" in prof:
            print(f"profile: {prof['files']['flamegraph']} ({name})")
    print(
        "note: load average was "
        f"{' '.join(f'{x:.2f}' for x in info['loadavg_start'])} at the start and "
        f"{' '.join(f'{x:.2f}' for x in info['loadavg_end'])} at the end; compare ratios, not absolutes."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
