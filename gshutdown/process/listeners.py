"""The master's listening sockets: inherited, activated by systemd, or bound now.

A new master (``SIGUSR2``) inherits its old master's sockets through
``LISTEN_FDS_ENV``; under systemd socket activation they come from systemd;
otherwise the master binds them, as root if started so, before it drops
privileges. With ``--reuse-port`` each worker gets a socket of its own on the
same address (``own_listener``).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Optional, Sequence

from gshutdown.config.addresses import bind_unix, cannot_listen
from gshutdown.process import admin, systemd

#: Environment variable naming inherited listening descriptors ("3,4").
LISTEN_FDS_ENV = "GSHUTDOWN_LISTEN_FDS"


def bind_listeners(
    binds: Sequence[Any], backlog: int, *, reuse_port: bool = False, unix_socket_mode: Optional[int] = None
) -> list[socket.socket]:
    """Listening sockets: inherited from an old master, from systemd, or bound now.

    With ``reuse_port``, TCP sockets are bound with ``SO_REUSEPORT`` but not
    listened on: each worker listens on one of its own (``own_listener``),
    and the master's only holds the address (and tells a busy port at once).
    """
    inherited = os.environ.pop(LISTEN_FDS_ENV, "")
    if inherited:
        return [socket.socket(fileno=int(fd)) for fd in inherited.split(",")]
    activated = systemd.listen_fds()
    if activated:
        return activated
    sockets = []
    try:
        for bind in binds:
            sockets.append(_bind(bind, backlog, reuse_port, unix_socket_mode))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bind_admin(address: Any, backlog: int, unix_socket_mode: Optional[int]) -> Optional[socket.socket]:
    """The admin listener (``--admin-bind``): inherited from an old master, or bound now (None: not set).

    Shared by the workers as the application's listeners are; see ``process.admin``.
    """
    inherited = os.environ.pop(admin.ADMIN_FD_ENV, "")
    if inherited:
        return socket.socket(fileno=int(inherited))
    if address is None:
        return None
    return _bind(address, backlog, False, unix_socket_mode)


def _bind(bind: Any, backlog: int, reuse_port: bool, unix_socket_mode: Optional[int]) -> socket.socket:
    try:
        if isinstance(bind, str):
            return bind_unix(bind[len("unix:") :], backlog, mode=unix_socket_mode)
        host, port = bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return _tcp_listener(family, (host, port), None if reuse_port else backlog, reuse_port)
    except OSError as exc:
        raise OSError(exc.errno, cannot_listen(bind, exc)) from None


def _tcp_listener(family: int, address: Any, backlog: Optional[int], reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if backlog is not None:
            sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def own_listener(shared: socket.socket) -> socket.socket:
    """A worker's own listener on ``shared``'s address (``--reuse-port``).

    The kernel spreads new connections over every ``SO_REUSEPORT`` listener of
    a port by a hash of the peer's address, instead of letting the workers
    race for one accept queue. Unix sockets cannot: they stay shared.

    It is bound, and listens only once the worker's server starts accepting
    (``Server.start``): from ``listen()`` on, the kernel queues connections on
    it, which a worker still importing the app would keep waiting, and which
    its close would reset if it were stopped before it serves.
    """
    if shared.family == socket.AF_UNIX:
        return shared
    own = _tcp_listener(shared.family, shared.getsockname(), None, reuse_port=True)
    shared.close()
    return own
