"""Listen addresses: binding unix sockets, and naming addresses in log lines and errors.

Shared by the CLI, the runner, the server and the pre-fork master so that all
of them bind and name a listener the same way.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
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


def cannot_listen(listener: Any, exc: OSError) -> str:
    """The one-line error for a listener that could not be bound."""
    return f"cannot listen on {describe_listener(listener)}: {bind_failure_reason(exc)}"


def bind_unix(path: str, backlog: int = 2048) -> socket.socket:
    """A listening unix socket at ``path`` (a stale socket file is replaced)."""
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise OSError(errno.EADDRINUSE, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: a leftover from a dead process
        else:
            raise OSError(f"{path} is in use by a running server")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
