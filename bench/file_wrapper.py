"""A 100 MiB download through ``wsgi.file_wrapper``: throughput and server CPU, against gunicorn -k gevent.

One app (``tests.apps.files``: the file through ``environ['wsgi.file_wrapper']``
with its Content-Length), served by:

- ``gshutdown sendfile``: a regular file, so ``os.sendfile`` (``GET /file``);
- ``gshutdown read loop``: the same bytes through a file-like without
  ``fileno()``, read 64 KiB at a time (``GET /file?loop=1``);
- ``gunicorn -k gevent sendfile``: gunicorn's own ``sendfile`` path, one worker
  (and its read loop, ``gunicorn read loop``, for reference). Under
  ``-k gevent`` that path calls gevent's ``socket.sendfile``, which never uses
  ``os.sendfile`` (it would block the loop): it reads and sends 8 KiB at a time.

Downloads alternate between the servers (round-robin, so a busy moment of the
shared box hits all alike), on loopback, one at a time, each on a new
connection; the client reads with ``recv_into`` into one buffer (little CPU of
its own). Per server: the median MiB/s and the mean server CPU seconds
(user + system, from ``/proc``, of the server's processes) per download.
Bounded: ``--runs`` downloads of ``--mib`` MiB per server.

    python bench/file_wrapper.py [--runs 5] [--mib 100]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.process_helpers import GProcess, free_port, gshutdown_argv, wait_until

APP = "tests.apps.files:app"


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of ``pid``'s threads and its children's, alive now.

    From ``/proc/PID/task/TID/schedstat`` (nanoseconds): ``/proc/PID/stat``
    counts in clock ticks (10 ms), as coarse as a whole sendfile download.
    """
    total = 0
    for each in [pid, *children(pid)]:
        try:
            tasks = list(Path(f"/proc/{each}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def download(port: int, target: str, size: int, buffer: bytearray) -> float:
    """Seconds to GET ``target`` and read its ``size``-byte body to the end."""
    view = memoryview(buffer)
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError(f"closed before the head: {head!r}")
            head += data
        status_line = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status_line:
            raise RuntimeError(f"{target}: {status_line!r}")
        got = len(head.partition(b"\r\n\r\n")[2])
        while True:
            n = sock.recv_into(view)
            if not n:
                break
            got += n
    took = time.perf_counter() - started
    if got != size:
        raise RuntimeError(f"{target}: {got} of {size} bytes")
    return took


class Served:
    def __init__(self, name: str, proc: GProcess, port: int, target: str) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.target = target
        self.seconds: list[float] = []
        self.cpu: list[float] = []


def start_gshutdown(workdir: Path, env: dict[str, str]) -> tuple[GProcess, int]:
    port = free_port()
    argv = gshutdown_argv("--bind", f"127.0.0.1:{port}", APP)
    proc = GProcess(argv, workdir / "gshutdown.log", env=env)
    return proc.listening(), port


def start_gunicorn(workdir: Path, env: dict[str, str]) -> tuple[GProcess, int]:
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1", "-b", f"127.0.0.1:{port}", APP]
    proc = GProcess(argv, workdir / "gunicorn.log", env=env)
    try:
        wait_until(lambda: "Booting worker" in proc.log(), timeout=30)
        wait_until(lambda: _accepts(port), timeout=30)
    except BaseException:
        proc.stop()
        raise
    return proc, port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="downloads per server (default 5)")
    parser.add_argument("--mib", type=int, default=100, help="file size in MiB (default 100)")
    args = parser.parse_args()
    size = args.mib * 1024 * 1024
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        path = workdir / "file.bin"
        with open(path, "wb") as f:
            block = os.urandom(1024 * 1024)
            for _ in range(args.mib):
                f.write(block)
        env = {"SERVE_FILE": str(path)}
        starters: list[tuple[str, Callable[[Path, dict[str, str]], tuple[GProcess, int]]]] = [
            ("gshutdown", start_gshutdown),
            ("gunicorn -k gevent", start_gunicorn),
        ]
        procs: list[GProcess] = []
        served: list[Served] = []
        try:
            for name, start in starters:
                proc, port = start(workdir, env)
                procs.append(proc)
                served.append(Served(f"{name} sendfile", proc, port, "/file"))
                served.append(Served(f"{name} read loop", proc, port, "/file?loop=1"))
            buffer = bytearray(1024 * 1024)
            for each in served:  # one unmeasured download each: page cache, first imports
                download(each.port, each.target, size, buffer)
            for _ in range(args.runs):
                for each in served:
                    before = cpu_seconds(each.proc.pid)
                    each.seconds.append(download(each.port, each.target, size, buffer))
                    each.cpu.append(cpu_seconds(each.proc.pid) - before)
        finally:
            for proc in procs:
                proc.stop()
    print(f"{args.mib} MiB over loopback, {args.runs} downloads per server (time: median; server CPU: mean)")
    print(f"{'server':34} {'MiB/s':>8} {'seconds':>8} {'server CPU s':>13} {'CPU s / GiB':>12}")
    for each in served:
        seconds = statistics.median(each.seconds)
        cpu = statistics.mean(each.cpu)
        print(f"{each.name:34} {args.mib / seconds:8.0f} {seconds:8.3f} {cpu:13.3f} {cpu * 1024 / args.mib:12.3f}")


if __name__ == "__main__":
    main()
