#!/usr/bin/env python3
"""Idle keep-alive connections: RSS per connection and SIGTERM to exit, against peers, in one run.

    python bench/idle_connections.py                    # 15,000 connections; gshutdown, its worker mode,
                                                        # raw gevent and nginx
    python bench/idle_connections.py --conns 2000 --servers gshutdown,nginx

For each server: start it (pinned to CPU 0), warm it up, open ``--conns``
keep-alive connections that each made one request (``idle_clients.py``, in
``--clients`` processes pinned to CPU 1, since one process may hold 20,000
descriptors at most), measure the serving process's RSS before and after,
then signal the server and time the exit with a pidfd. Every client reports
how its connections ended: a FIN, or a reset.

Servers:

- ``gshutdown``: ``--idle-timeout none``, one process.
- ``gshutdown-workers``: the same with ``--workers 1`` (a master and one
  worker; RSS is the worker's).
- ``raw-gevent``: a gevent ``StreamServer``, one greenlet per connection
  blocked in ``recv`` (``servers/raw_gevent.py``). It has no SIGTERM handler:
  the kernel kills it, and closes its sockets.
- ``nginx``: one worker, ``return 200``, ``keepalive_timeout 600s``; it is
  sent SIGQUIT, its graceful shutdown (SIGTERM is its fast one).

Issue 21's goals: <= 4 KiB RSS per idle connection at 15,000, and SIGTERM to
exit < 0.2 s with every connection seeing FIN.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import run
from servers import Options

BENCH = Path(__file__).resolve().parent
SERVERS = ("gshutdown", "gshutdown-workers", "raw-gevent", "nginx")
GOAL_KIB_PER_CONN = 4.0
GOAL_EXIT_SECONDS = 0.2

NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "Hello, World!"; }}
    }}
}}
"""


class Server:
    """One server under test: its process group, the pid holding the connections, its stop signal."""

    def __init__(self, name: str, port: int, conns: int, tmp: Path, idle_grace: float) -> None:
        self.name = name
        self.port = port
        self.stop_signal = signal.SIGTERM
        self.log_path = tmp / f"{name}-{port}.log"
        if name == "nginx":
            conf_dir = tmp / f"nginx-{port}"
            conf_dir.mkdir()
            conf = conf_dir / "nginx.conf"
            conf.write_text(NGINX_CONF.format(dir=conf_dir, port=port, connections=conns + 1000, nofile=conns + 2000))
            argv = ["nginx", "-p", str(conf_dir), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]
            self.stop_signal = signal.SIGQUIT
        else:
            extra: tuple[str, ...] = ()
            launcher = name
            if name.startswith("gshutdown"):
                launcher = "gshutdown"
                extra = (
                    "--idle-timeout",
                    "none",
                    "--max-connections",
                    str(conns + 1000),
                    "--idle-grace",
                    str(idle_grace),
                )
                if name == "gshutdown-workers":
                    extra += ("--workers", "1")
            opts = Options(port=port, idle=True, graceful_timeout=30.0, extra_args=extra)
            argv = run.load(launcher).command(opts)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                run.pin(run.CPU_SERVER) + argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=BENCH,
                env=run.child_env(),
                start_new_session=True,
            )

    def pids(self) -> list[int]:
        return [self.proc.pid, *run.children_of(self.proc.pid)]

    def serving_pid(self) -> int:
        kids = run.children_of(self.proc.pid)
        return kids[0] if kids else self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise run.BenchError(f"{self.name} exited: {self.log_path.read_text(errors='replace')[-400:]}")
            try:
                status, body = run.http_get(self.port, timeout=2)
                if status == 200 and body == run.HELLO:
                    return
            except (OSError, run.BenchError):
                pass
            if time.monotonic() > deadline:
                raise run.BenchError(f"{self.name} did not answer on {self.port} in {timeout:g} s")
            time.sleep(0.05)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def gshutdown_timeline(log_path: Path) -> dict[str, float]:
    """gshutdown's own account of its shutdown, from its info-level log."""
    text = log_path.read_text(errors="replace")
    out = {}
    match = re.search(r"shutdown: \w+ in ([\d.]+) s", text)
    if match:
        out["shutdown_seconds"] = float(match.group(1))
    match = re.search(r"exit: \w+ after ([\d.]+) s", text)
    if match:
        out["exit_log_seconds"] = float(match.group(1))
    return out


def start_clients(port: int, conns: int, clients: int) -> list[subprocess.Popen[str]]:
    procs = []
    share, extra = divmod(conns, clients)
    for index in range(clients):
        count = share + (1 if index < extra else 0)
        procs.append(
            subprocess.Popen(
                [
                    *run.pin(run.CPU_LOAD),
                    sys.executable,
                    str(BENCH / "idle_clients.py"),
                    "--port",
                    str(port),
                    "--count",
                    str(count),
                    "--max-seconds",
                    "300",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def measure(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    server = Server(name, run.free_port(), args.conns, tmp, args.idle_grace)
    clients: list[subprocess.Popen[str]] = []
    result: dict[str, Any] = {"server": name}
    try:
        server.wait_ready()
        for _ in range(100):  # lazy imports and first allocations before "before"
            run.http_get(server.port)
        run.wait_quiet(server.pids())
        pid = server.serving_pid()
        before = run.vm_rss_kib(pid)
        clients = start_clients(server.port, args.conns, args.clients)
        opened = failed = 0
        for proc in clients:
            line = run.read_json_line(proc.stdout, timeout=240)
            if line is None:
                raise run.BenchError("an idle client did not report")
            opened += line["opened"]
            failed += line["failed"]
        run.wait_quiet(server.pids())
        after = run.vm_rss_kib(pid)
        result.update(
            opened=opened,
            failed=failed,
            rss_before_kib=before,
            rss_after_kib=after,
            kib_per_conn=round((after - before) / opened, 2) if opened else None,
        )
        print(
            f"  {name:18s} {opened} open ({failed} failed); RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB"
            f" = {result['kib_per_conn']} KiB per connection",
            flush=True,
        )
        pidfd = os.pidfd_open(server.proc.pid)
        try:
            t0 = time.monotonic()
            wall0 = time.time()
            os.kill(server.proc.pid, server.stop_signal)
            ready, _, _ = select.select([pidfd], [], [], 60)
            exit_seconds = time.monotonic() - t0 if ready else None
        finally:
            os.close(pidfd)
        closed = reset = 0
        last_close = None
        for proc in clients:
            assert proc.stdin is not None
            proc.stdin.write("quit\n")
            proc.stdin.flush()
            final = run.read_json_line(proc.stdout, timeout=30) or {}
            closed += final.get("closed_by_server") or 0
            reset += final.get("reset_by_server") or 0
            if final.get("all_closed_at"):
                last_close = max(last_close or 0.0, final["all_closed_at"] - wall0)
        result.update(
            signal=signal.Signals(server.stop_signal).name,
            exit_seconds=None if exit_seconds is None else round(exit_seconds, 4),
            closed_by_server=closed,
            reset_by_server=reset,
            last_close_seconds=None if last_close is None else round(last_close, 4),
        )
        if name.startswith("gshutdown"):
            result.update(gshutdown_timeline(server.log_path))
        shown = "no exit in 60 s" if exit_seconds is None else f"{exit_seconds:.3f} s"
        print(
            f"  {name:18s} {result['signal']} -> exit {shown}; {closed - reset} FIN, {reset} reset,"
            f" {opened - closed} not closed; last close seen at"
            f" {'-' if last_close is None else f'{last_close:.3f} s'}",
            flush=True,
        )
        if "shutdown_seconds" in result:
            print(
                f"  {'':18s} its log: shutdown() took {result['shutdown_seconds']:.3f} s"
                f" (idle_grace {args.idle_grace:g} s of it), exit line at {result.get('exit_log_seconds', '-')} s",
                flush=True,
            )
    except (run.BenchError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"  {name}: FAILED: {exc}", flush=True)
        result["error"] = str(exc)
    finally:
        for proc in clients:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        server.kill()
    return result


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conns", type=int, default=15000, help="idle connections per server (default 15000)")
    p.add_argument("--clients", type=int, default=3, help="client processes sharing them (default 3)")
    p.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated from {','.join(SERVERS)}")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--idle-grace",
        type=float,
        default=0.1,
        help="gshutdown's --idle-grace (default 0.1, its default): part of its SIGTERM-to-exit time",
    )
    args = p.parse_args(argv)
    names = [n for n in args.servers.split(",") if n]
    for name in names:
        if name not in SERVERS:
            p.error(f"unknown server {name!r}")
    if "nginx" in names and not shutil.which("nginx"):
        print("nginx not found (apt-get install nginx-light): skipped", file=sys.stderr)
        names.remove("nginx")
    nofile = run.raise_nofile(args.conns // max(1, args.clients) + 2048)
    if nofile < args.conns + 1024:
        # The server holds every connection: it needs the descriptors itself.
        print(f"warning: RLIMIT_NOFILE is {nofile}, under {args.conns} connections + 1024", file=sys.stderr)
    print(f"== {args.conns} idle keep-alive connections from {args.clients} client processes ==", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="idle-bench-") as tmp:
        for name in names:
            results.append(measure(name, args, Path(tmp)))
    print(f"\n{'server':18s} {'KiB/conn':>9s} {'exit s':>8s} {'FIN':>6s} {'reset':>6s}")
    for r in results:
        if "error" in r:
            print(f"{r['server']:18s} failed: {r['error']}")
            continue
        exit_s = "-" if r.get("exit_seconds") is None else f"{r['exit_seconds']:.3f}"
        fins = r["closed_by_server"] - r["reset_by_server"]
        print(f"{r['server']:18s} {r['kib_per_conn']:>9} {exit_s:>8s} {fins:>6d} {r['reset_by_server']:>6d}")
    ours = next((r for r in results if r["server"] == "gshutdown" and "error" not in r), None)
    if ours:
        met = ours["kib_per_conn"] <= GOAL_KIB_PER_CONN
        print(f"goal <= {GOAL_KIB_PER_CONN:g} KiB per idle connection: {'MET' if met else 'MISSED'}")
        exit_s = ours.get("exit_seconds")
        met = exit_s is not None and exit_s < GOAL_EXIT_SECONDS and ours["reset_by_server"] == 0
        met = met and ours["closed_by_server"] == ours["opened"]
        print(f"goal SIGTERM -> exit < {GOAL_EXIT_SECONDS:g} s, every connection FIN: {'MET' if met else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
