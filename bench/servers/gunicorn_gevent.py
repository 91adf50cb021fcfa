"""``gunicorn -k gevent -w 1`` (``-w N`` with ``opts.workers``; its gevent worker monkey-patches itself)."""

from __future__ import annotations

import importlib.util
import sys
from typing import Optional

NAME = "gunicorn-gevent"


def unavailable() -> Optional[str]:
    if importlib.util.find_spec("gunicorn") is None:
        return "gunicorn is not installed (pip install gunicorn)"
    return None


def command(opts) -> list[str]:
    from servers import BENCH_DIR

    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-k",
        "gevent",
        "-w",
        str(opts.workers),
        "-b",
        f"127.0.0.1:{opts.port}",
        "--log-level",
        "warning",
        "--pythonpath",
        str(BENCH_DIR),
    ]
    if opts.idle:
        # Room for 10,000 idle connections, kept alive as long as gshutdown's;
        # the graceful timeout stays at gunicorn's default (30 s).
        argv += ["--worker-connections", "12000", "--keep-alive", "600"]
    return [*argv, "app:app"]
