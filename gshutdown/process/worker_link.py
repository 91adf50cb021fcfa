"""What a worker and its master tell each other: two pipes and three signals.

- The status pipe (worker -> master, one per worker) carries short lines:
  ``ready`` once serving, ``beat N`` as a heartbeat with N live connections
  (``--timeout``), ``recycle`` when ``--max-requests`` is reached. Each line
  is far below ``PIPE_BUF``, so it is written whole or not at all.
- The liveness pipe (one for all workers): the master holds its only write
  end and never writes. When the master dies, however it dies (``kill -9``,
  the OOM killer), the kernel closes that end and every worker reads EOF at
  once: no polling of ``getppid()``, and no orphan keeps serving unsupervised.
- The stop pipe (one for all workers): when the master stops for good, with
  listeners that nobody else holds (it bound them itself, and hands them to no
  new master), it writes one token per serving worker before its drain order,
  the last one different. Each worker takes one as it gets to its last
  accepts; the one that takes the last knows that every other holder of the
  listeners took one before, so is at its last accepts or past them, and it
  seals the listeners before its own (``Server.last_holder``), so that the
  last close of a listener finds no connection the kernel completed after the
  last accept.
  Sealing acts on the socket, which every worker shares: done by the first
  worker to drain, it would turn away connections a sibling still accepts, and
  done on a retirement, it would turn them away for good.

The master orders a worker with signals of its own, which nobody else sends:
``DRAIN_SIGNAL`` (drain gracefully now), ``SIGQUIT`` (close everything now)
and ``STACK_DUMP_SIGNAL``. A worker never takes SIGTERM or SIGINT as an order,
because those also reach it from outside: systemd (``KillMode=control-group``),
``tini -g`` and Ctrl-C signal the whole process group, master included. On
SIGTERM a worker turns unready and waits (``MASTER_ORDER_WAIT``) for the
master's drain order, which the master sends only after closing its own copies
of the listeners: closed in that order, the last process to let go of a
listener is a worker that first accepts what is queued on it, so a connect is
either served or refused, never accepted by the kernel and then reset.
"""

from __future__ import annotations

import enum
import os
import signal
from dataclasses import dataclass
from typing import Optional

_RTMIN = getattr(signal, "SIGRTMIN", None)
#: The master's order to drain gracefully now (real-time: nothing else sends it).
DRAIN_SIGNAL = _RTMIN + 2 if _RTMIN is not None else signal.SIGPROF
#: The master's order to write every stack to the log (``logs.install_stack_dump``).
STACK_DUMP_SIGNAL = _RTMIN + 1 if _RTMIN is not None else signal.SIGVTALRM
#: Seconds a worker told SIGTERM from outside waits for the master's drain
#: order before it drains on its own (the master is then gone or not told:
#: someone signalled this worker alone).
MASTER_ORDER_WAIT = 1.0

#: The stop pipe's tokens: the master writes the last one after all the others.
STOP_TOKEN = b"\x01"
LAST_STOP_TOKEN = b"\x00"

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
        stop_fd: read end of the master's stop pipe (None: no tokens, never the last to drain).
    """

    def __init__(
        self, status_fd: int, liveness_fd: int, heartbeat: Optional[float] = None, stop_fd: Optional[int] = None
    ) -> None:
        self.status_fd = status_fd
        self.liveness_fd = liveness_fd
        self.heartbeat = heartbeat
        self.stop_fd = stop_fd
        self._last_to_drain: Optional[bool] = None
        os.set_blocking(status_fd, False)
        os.set_blocking(liveness_fd, False)
        if stop_fd is not None:
            os.set_blocking(stop_fd, False)

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

    def last_to_drain(self) -> bool:
        """Take this worker's stop token (on the first call); True if it was the last one.

        False when there is none: the master is not stopping for good (this
        worker retires while others go on serving), or it is gone. Later calls
        give the same answer (each of the worker's servers asks).
        """
        if self._last_to_drain is None:
            self._last_to_drain = self._take_stop_token()
        return self._last_to_drain

    def _take_stop_token(self) -> bool:
        if self.stop_fd is None:
            return False
        try:
            # One byte, read whole: no two workers can take the same token.
            return os.read(self.stop_fd, 1) == LAST_STOP_TOKEN  # b"": EOF, the master is gone
        except BlockingIOError:
            return False

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
