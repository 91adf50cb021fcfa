"""The pid file: written atomically, removed only by the process it names."""

from __future__ import annotations

import os
from typing import Optional


def write(path: Optional[str]) -> None:
    """Write this process's pid to ``path`` (no-op for None).

    Written to a temporary file and renamed, so a supervisor never reads half
    a pid, even while an upgrade hands the file from one master to the next.
    """
    if path:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        os.replace(tmp, path)


def remove(path: Optional[str]) -> None:
    """Remove ``path`` if it still names this process (a successor may own it now)."""
    if path:
        try:
            with open(path) as fh:
                if fh.read().strip() != str(os.getpid()):
                    return
            os.unlink(path)
        except OSError:
            pass
