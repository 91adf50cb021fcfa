"""waitress with its default thread count (4).

``connection_limit`` is raised from its default of 100, or the 1,000-connection
workload would measure connections waiting in the backlog, not the server.
Run as ``python bench/servers/waitress_threads.py --port PORT``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Optional

NAME = "waitress"


def unavailable() -> Optional[str]:
    if importlib.util.find_spec("waitress") is None:
        return "waitress is not installed (pip install waitress)"
    return None


def command(opts) -> list[str]:
    return [sys.executable, __file__, "--port", str(opts.port)]


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    import waitress

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from app import app

    waitress.serve(app, host="127.0.0.1", port=args.port, connection_limit=12000, backlog=2048, _quiet=True)


if __name__ == "__main__":
    main()
