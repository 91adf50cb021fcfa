"""uWSGI with its gevent loop engine, one worker, the app monkey-patched.

``uwsgi --http-socket ... --gevent 1000 --gevent-monkey-patch --http-keepalive``:
the classic home of monkey-patched legacy apps. The ``pyuwsgi`` wheel ships the
``uwsgi`` command with the gevent plugin built in (no compiler needed).
``--die-on-term`` makes SIGTERM stop it (uWSGI's default is to reload).

Keep-alive does not happen: with ``--http-socket`` under the gevent engine
uWSGI 2.0.30 closes (with a reset) every connection after its response,
``--http-keepalive`` notwithstanding, so wrk reconnects and counts a read
error per request; ``--http11-socket`` left the second request on a
connection unanswered. The command is the one users run (and the one issue
11's figures came from); its keep-alive figures are really per-connection ones.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Optional

NAME = "uwsgi-gevent"


def _binary() -> Optional[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "uwsgi")
    return beside if os.access(beside, os.X_OK) else shutil.which("uwsgi")


def unavailable() -> Optional[str]:
    if _binary() is None:
        return "uWSGI is not installed (pip install pyuwsgi)"
    return None


def command(opts) -> list[str]:
    from servers import BENCH_DIR

    return [
        _binary() or "uwsgi",
        "--http-socket",
        f"127.0.0.1:{opts.port}",
        "--gevent",
        # Async cores: 1,000 as uWSGI's docs use; the idle test needs more.
        "12000" if opts.idle else "1000",
        "--gevent-monkey-patch",
        "--http-keepalive",
        "--wsgi-file",
        str(BENCH_DIR / "app.py"),
        "--callable",
        "app",
        "--disable-logging",
        "--die-on-term",
        "--listen",
        "2048",
        "--workers",
        str(opts.workers),
    ]
