"""granian (Rust I/O, hyper) serving the app through its WSGI interface.

It cannot host a monkey-patched gevent app (the app runs on granian's own
blocking threads), but it is what people compare against. One worker,
HTTP/1 only; the app runs on one blocking thread as it would under gevent.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Optional

NAME = "granian"


def unavailable() -> Optional[str]:
    if importlib.util.find_spec("granian") is None:
        return "granian is not installed (pip install granian)"
    return None


def command(opts) -> list[str]:
    from servers import BENCH_DIR

    return [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "wsgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(opts.port),
        "--workers",
        str(opts.workers),
        "--blocking-threads",
        # One thread, as under gevent: more only contend for the one pinned
        # CPU (keep-alive 50: 44k with the default, 52k with one).
        "1",
        "--http",
        "1",
        "--no-ws",
        "--backlog",
        "2048",
        "--log-level",
        "warning",
        "--working-dir",
        str(BENCH_DIR),
        "app:app",
    ]
