"""``python -m tests.apps.metrics_cli ARGS``: the ``gshutdown`` CLI, with ``GSHUTDOWN_METRICS_PATH`` honoured.

``runner.serve`` and ``master.main`` read ``args.metrics_path`` when it is
there; until ``gshutdown.cli`` has a ``--metrics-path`` option, this sets it
from the environment variable that option will read. Once the option exists,
this is the plain CLI.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from gshutdown import cli

_parse_args = cli.parse_args


def _parse_args_with_metrics_path(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = _parse_args(argv)
    if not hasattr(args, "metrics_path"):
        args.metrics_path = os.environ.get("GSHUTDOWN_METRICS_PATH")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    cli.parse_args = _parse_args_with_metrics_path
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
