"""Listen addresses: binding unix sockets, and naming addresses in log lines and errors.

Shared by the CLI, the runner, the server and the pre-fork master so that all
of them bind and name a listener the same way.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Any, Optional


def describe_address(address: Any, tls: bool = False) -> str:
    """A bound address as a URL, ``https://`` when ``tls`` (``unix:PATH`` for unix sockets)."""
    if isinstance(address, tuple):
        host, scheme = address[0], "https" if tls else "http"
        return f"{scheme}://[{host}]:{address[1]}" if ":" in host else f"{scheme}://{host}:{address[1]}"
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


def bind_unix(path: str, backlog: int = 2048, *, mode: Optional[int] = None) -> socket.socket:
    """A listening unix socket at ``path``.

    A socket file already there is replaced only when it is stale: connecting
    to it is refused (ECONNREFUSED), so nobody listens. Any other outcome
    (a server answers, its backlog is full, permission denied, ...) raises
    and leaves it alone.

    Args:
        path: the socket file's path.
        backlog: the listen backlog.
        mode: the socket file's permission bits (e.g. ``0o660``; connecting
            needs write permission); None leaves what the umask gives. The
            file is created with no permissions and then given ``mode``, so
            no one can connect under looser bits in between.
    """
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(errno.EADDRINUSE, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)  # a live server with a full backlog: EAGAIN, not a hang
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # nobody listens: a leftover from a dead process
        except FileNotFoundError:
            pass  # removed meanwhile
        except OSError as exc:
            raise OSError(exc.errno, f"{path}: cannot tell whether a server uses it: {exc.strerror}") from None
        else:
            raise OSError(f"{path} is in use by a running server")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if mode is None:
            sock.bind(path)
        else:
            old_umask = os.umask(0o777)
            try:
                sock.bind(path)
            finally:
                os.umask(old_umask)
            os.chmod(path, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
