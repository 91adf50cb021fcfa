"""gshutdown through its own command line, one process, no monkey-patching."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional

NAME = "gshutdown"


def unavailable() -> Optional[str]:
    if importlib.util.find_spec("gshutdown") is None:
        return "gshutdown is not installed (pip install -e .)"
    return None


def command(opts) -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "gshutdown")
    argv = [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "gshutdown"]
    argv += [
        "--no-monkey-patch",
        "--log-level",
        # Idle tests read the shutdown timeline from the info-level log.
        "info" if opts.idle else "warning",
        "--readiness-path",
        "",
        "-b",
        f"127.0.0.1:{opts.port}",
        "--graceful-timeout",
        str(opts.graceful_timeout),
    ]
    if opts.idle:
        # Room for 10,000 idle connections (the default is 1,000), as gunicorn's.
        argv += ["--idle-timeout", "600", "--max-connections", "12000"]
    return [*argv, "app:app"]
