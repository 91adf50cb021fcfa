"""Instructions one ``Connection: close`` request costs the server, and one keep-alive request, under callgrind.

    python bench/close_path_instructions.py [--connections 300,1300] [--requests 2000,12000]

On a shared machine req/s moves by more than the costs compared here, so this
counts instructions instead (``apt-get install -y valgrind``). The server
(``bench/app.py``, one process) runs under callgrind twice per workload, once
for each count; one client sends that many requests one after the other:
for ``close`` each on a new connection with ``Connection: close``, for
``keep-alive`` all on one connection. The difference between the two totals,
over the difference in counts, is what one request (or connection) costs:
start-up and exit cancel out.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import metrics_overhead

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 300
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=120).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def close_client(port: int, count: int) -> None:
    """``count`` GETs, each on its own connection with ``Connection: close``, read to the server's FIN."""
    wait_listening(port)
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
            sock.sendall(REQUEST)
            reply = b""
            while data := sock.recv(65536):
                reply += data
            if not reply.endswith(b"Hello, World!"):
                raise SystemExit(f"unexpected reply: {reply!r}")


def per_unit(client: object, counts: list[int]) -> float:
    original = metrics_overhead.keep_alive_client
    metrics_overhead.keep_alive_client = client  # type: ignore[assignment]
    try:
        small, large = counts
        with tempfile.TemporaryDirectory() as tmp:
            totals = [metrics_overhead.instructions("single", count, Path(tmp)) for count in (small, large)]
    finally:
        metrics_overhead.keep_alive_client = original
    return (totals[1] - totals[0]) / (large - small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", default="300,1300", help="the two Connection: close counts")
    parser.add_argument("--requests", default="2000,12000", help="the two keep-alive request counts")
    parser.add_argument("--only", choices=("close", "keep-alive"), help="measure one workload")
    opts = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed: apt-get install -y valgrind")
    if opts.only != "keep-alive":
        counts = sorted(int(n) for n in opts.connections.split(","))
        print(f"close       {per_unit(close_client, counts):9,.0f} instructions/connection", flush=True)
    if opts.only != "close":
        counts = sorted(int(n) for n in opts.requests.split(","))
        cost = per_unit(metrics_overhead.keep_alive_client, counts)
        print(f"keep-alive  {cost:9,.0f} instructions/request", flush=True)


if __name__ == "__main__":
    main()
