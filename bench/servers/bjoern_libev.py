"""bjoern: a C HTTP/1.1 server on libev (needs ``libev-dev`` to build).

Run as ``python bench/servers/bjoern_libev.py --port PORT``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Optional

NAME = "bjoern"


def unavailable() -> Optional[str]:
    if importlib.util.find_spec("bjoern") is None:
        return "bjoern is not installed: apt-get install -y libev-dev && pip install bjoern (if it builds)"
    return None


def command(opts) -> list[str]:
    return [sys.executable, __file__, "--port", str(opts.port)]


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    import bjoern

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from app import app

    bjoern.run(app, "127.0.0.1", args.port)


if __name__ == "__main__":
    main()
