"""SIGTERM to a gunicorn arbiter under keep-alive load: gshutdown's worker class against ``-k gevent``.

The scenario of ``tests/test_gunicorn.py``'s load test, repeated and measured
rather than asserted: ``-w 2``, the probe app, six keep-alive client threads
(``tests.process_helpers.LoadClients``: one retry, only for a request on a
reused connection; a thread stops once connects are refused), SIGTERM once
300 requests have been answered. Per run: failed requests, requests the app
saw whose response never arrived whole, requests run twice, retries, how the
clients stopped, the arbiter's exit status and seconds from SIGTERM to its exit.

    python bench/gunicorn_sigterm.py [--runs 5] [--workers gshutdown.gunicorn.Worker,gevent]
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.process_helpers import PROBE, GProcess, LoadClients, free_port, wait_until


def one_run(worker_class: str, workdir: Path) -> dict[str, object]:
    port = free_port()
    seen = workdir / "seen"
    argv = [sys.executable, "-m", "gunicorn", "-k", worker_class, "-c", "python:tests.apps.gunicorn_conf"]
    argv += ["-b", f"127.0.0.1:{port}", "-w", "2", PROBE]
    with GProcess(argv, workdir / "gunicorn.log", env={"PROBE_SEEN": str(seen)}) as arbiter:
        wait_until(lambda: arbiter.log().count("Booting worker") >= 2, timeout=30)
        with LoadClients(port, count=6, until_refused=True, limit=120) as load:
            wait_until(lambda: load.ok > 300, timeout=60)
            sent = arbiter.send_signal(signal.SIGTERM)
            status = arbiter.wait(timeout=60)
            took = time.monotonic() - sent
            load.join(30)
    requests = Counter(seen.read_text().split())
    return {
        "failed": len(load.failures),
        "lost": len(set(requests) - load.completed),
        "twice": sum(1 for count in requests.values() if count > 1),
        "retried": load.retries,
        "ok": load.ok,
        "stops": dict(Counter(load.stops)),
        "exit": status,
        "seconds": round(took, 3),
        "first failures": load.failures[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", default="gshutdown.gunicorn.Worker,gevent")
    args = parser.parse_args()
    for worker_class in args.workers.split(","):
        for run in range(1, args.runs + 1):
            with tempfile.TemporaryDirectory() as workdir:
                print(f"-k {worker_class} run {run}: {one_run(worker_class, Path(workdir))}", flush=True)


if __name__ == "__main__":
    main()
