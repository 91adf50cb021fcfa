"""The pid file: written atomically, removed only by the process it names."""

from __future__ import annotations

import os
import tempfile
from typing import Optional

#: Pid files are readable by everyone (supervisors, ``kill $(cat FILE)``), whatever the umask.
PID_FILE_MODE = 0o644


def write(path: Optional[str]) -> None:
    """Write this process's pid to ``path`` (no-op for None).

    Written to a temporary file and renamed, so a supervisor never reads half
    a pid, even while an upgrade hands the file from one master to the next.
    The temporary file gets a random name and is created exclusively, never
    through a symlink: a pid file often lives in a directory others can write
    (``/tmp``, ``/run``), where a predictable name could be planted in advance
    to make this process (often root) overwrite another file, or hand over a
    pid file its planter can still write to.
    """
    if not path:
        return
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), PID_FILE_MODE)  # mkstemp creates it 0o600
            fh.write(f"{os.getpid()}\n")
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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
