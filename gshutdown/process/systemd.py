"""systemd integration: readiness notification and socket activation.

Both are small enough to speak directly (sd_notify is one datagram; socket
activation is two environment variables and descriptors from 3 up), so no
dependency is taken for them.
"""

from __future__ import annotations

import os
import socket

#: The first descriptor systemd passes (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START = 3


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``; False if unset."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False  # best effort, as sd_notify(3): a stale socket must not stop the server
    return True


def listen_fds() -> list[socket.socket]:
    """Listening sockets passed by systemd (``LISTEN_FDS``/``LISTEN_PID``).

    Only for this process (``LISTEN_PID`` must match); the variables are then
    removed so that child processes do not claim the same descriptors.
    """
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if pid != os.getpid() or count < 1:
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets
