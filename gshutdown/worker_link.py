"""What a worker and its master tell each other, over two pipes.

- The status pipe (worker -> master, one per worker) carries short lines:
  ``ready`` once serving, ``beat N`` as a heartbeat with N live connections
  (``--timeout``), ``recycle`` when ``--max-requests`` is reached. Each line
  is far below ``PIPE_BUF``, so it is written whole or not at all.
- The liveness pipe (one for all workers): the master holds its only write
  end and never writes. When the master dies, however it dies (``kill -9``,
  the OOM killer), the kernel closes that end and every worker reads EOF at
  once: no polling of ``getppid()``, and no orphan keeps serving unsupervised.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Optional

READY = b"ready\n"
RECYCLE = b"recycle\n"


class MessageKind(enum.Enum):
    READY = "ready"
    BEAT = "beat"
    RECYCLE = "recycle"


@dataclass(frozen=True)
class Message:
    kind: MessageKind
    #: Live connections, for BEAT.
    connections: int = 0


class WorkerLink:
    """The worker's ends of its pipes to the master.

    Args:
        status_fd: write end of this worker's status pipe.
        liveness_fd: read end of the master's liveness pipe.
        heartbeat: seconds between heartbeats (None: send none).
    """

    def __init__(self, status_fd: int, liveness_fd: int, heartbeat: Optional[float] = None) -> None:
        self.status_fd = status_fd
        self.liveness_fd = liveness_fd
        self.heartbeat = heartbeat
        os.set_blocking(status_fd, False)
        os.set_blocking(liveness_fd, False)

    def _send(self, line: bytes) -> bool:
        try:
            return os.write(self.status_fd, line) == len(line)
        except (BlockingIOError, BrokenPipeError):
            # A full pipe (the master is behind) or no master: nothing to wait for.
            return False

    def report_ready(self) -> None:
        self._send(READY)

    def beat(self, connections: int) -> None:
        self._send(b"beat %d\n" % connections)

    def ask_recycle(self) -> None:
        self._send(RECYCLE)

    def wait_master_gone(self) -> None:
        """Block (cooperatively) until the master has exited."""
        from gevent.socket import wait_read

        while True:
            wait_read(self.liveness_fd)
            try:
                if not os.read(self.liveness_fd, 64):
                    return
            except BlockingIOError:
                continue


def parse(buffer: bytes) -> tuple[list[Message], bytes]:
    """Complete messages in ``buffer``, and the incomplete rest."""
    *lines, rest = buffer.split(b"\n")
    messages = []
    for line in lines:
        word, _, arg = line.partition(b" ")
        if word == b"beat":
            messages.append(Message(MessageKind.BEAT, int(arg) if arg.isdigit() else 0))
        elif word == b"ready":
            messages.append(Message(MessageKind.READY))
        elif word == b"recycle":
            messages.append(Message(MessageKind.RECYCLE))
    return messages, rest
