"""``gevent.pywsgi.WSGIServer`` as shipped (``log=None``), no monkey-patching.

On SIGTERM it calls ``server.stop(timeout=...)``, gevent's own graceful stop;
with ``--idle`` its greenlets come from a ``Pool`` (what ``stop()`` joins).
Run as ``python bench/servers/pywsgi_plain.py --port PORT [--idle] [--nodelay]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

NAME = "pywsgi"


def unavailable() -> Optional[str]:
    return None  # gevent is a dependency of gshutdown


def command(opts, *, nodelay: bool = False) -> list[str]:
    argv = [sys.executable, __file__, "--port", str(opts.port), "--stop-timeout", str(opts.graceful_timeout)]
    if opts.idle:
        argv.append("--idle")
    if nodelay:
        argv.append("--nodelay")
    return argv


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle", action="store_true", help="use a Pool big enough for 20,000 connections")
    parser.add_argument("--nodelay", action="store_true", help="set TCP_NODELAY on accepted sockets")
    parser.add_argument("--stop-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)

    import signal
    import socket

    import gevent
    from gevent.event import Event
    from gevent.pool import Pool
    from gevent.pywsgi import WSGIServer

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from app import app

    class NoDelayWSGIServer(WSGIServer):
        def handle(self, sock, address):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle(sock, address)

    cls = NoDelayWSGIServer if args.nodelay else WSGIServer
    spawn = Pool(20000) if args.idle else "default"
    server = cls(("127.0.0.1", args.port), app, log=None, spawn=spawn, backlog=2048)
    stop = Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    server.start()
    stop.wait()
    server.stop(timeout=args.stop_timeout)


if __name__ == "__main__":
    main()
