"""The process exit statuses, and the one way fatal errors are reported.

The single process, a worker and the master all end with one of these, so a
supervisor (systemd, Kubernetes, a shell) reads the same meaning from each.
"""

from __future__ import annotations

import enum
import sys


class ExitStatus(enum.IntEnum):
    """What a ``gshutdown`` process's exit status means."""

    #: Every connection and job finished on its own.
    OK = 0
    #: The server could not start: a listener could not be bound.
    START_FAILED = 1
    #: Bad usage: an unknown or invalid option, an application that does not import.
    USAGE = 2
    #: Connections or jobs were still running at the deadline (or a signal
    #: said "now") and were closed or killed.
    FORCED = 3


def fail(message: str, status: ExitStatus) -> ExitStatus:
    """Report a fatal error as one line on stderr and return ``status``."""
    print(f"gshutdown: error: {message}", file=sys.stderr)
    return status
