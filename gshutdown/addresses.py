"""Listen addresses in words, for log lines and one-line errors.

Shared by the CLI, the runner and the pre-fork master so that all three
name a listener the same way.
"""

from __future__ import annotations

import errno
from typing import Any


def describe_address(address: Any) -> str:
    """A bound address as a URL (``unix:PATH`` for unix sockets)."""
    if isinstance(address, tuple):
        host = address[0]
        return f"http://[{host}]:{address[1]}" if ":" in host else f"http://{host}:{address[1]}"
    return f"unix:{address}"


def describe_listener(listener: Any) -> str:
    """A ``--bind`` value as the user wrote it: ``HOST:PORT``, ``unix:PATH``, or an inherited socket."""
    if isinstance(listener, str):
        return listener
    if isinstance(listener, tuple):
        host = str(listener[0])
        return f"[{host}]:{listener[1]}" if ":" in host else f"{host}:{listener[1]}"
    return "inherited socket"


def bind_failure_reason(exc: OSError) -> str:
    """Why binding failed, in words for a one-line error."""
    return "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
