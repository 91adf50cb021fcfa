"""The ceiling: a gevent StreamServer that answers without parsing HTTP.

It reads whatever arrives and, for every request-head terminator (CRLF CRLF)
in the stream, writes one canned response: pipelined requests get one
response each, nothing is answered before its request has arrived. No WSGI,
no headers parsed, no app call: what is left is gevent's accept, read and
write, the floor under any gevent server. Bodies of requests are read and
ignored (the 1 MiB POST body never contains CRLF CRLF).

Run as ``python bench/servers/raw_gevent.py --port PORT [--body-size N] [--close]``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

NAME = "raw-gevent"

_TERMINATOR = b"\r\n\r\n"


def unavailable() -> Optional[str]:
    return None


def command(opts) -> list[str]:
    argv = [sys.executable, __file__, "--port", str(opts.port), "--body-size", str(opts.body_size)]
    if opts.close:
        argv.append("--close")
    return argv


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-size", type=int, default=13)
    parser.add_argument("--close", action="store_true", help="answer Connection: close, then close")
    args = parser.parse_args(argv)

    import socket
    import time
    from email.utils import formatdate

    from gevent.server import StreamServer

    body = b"Hello, World!" if args.body_size == 13 else b"x" * args.body_size
    extra = "Connection: close\r\n" if args.close else ""
    cache = {"second": -1, "response": b""}

    def response() -> bytes:
        now = int(time.time())
        if now != cache["second"]:
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nDate: {formatdate(now, usegmt=True)}\r\n"
                f"Server: raw\r\n{extra}\r\n"
            )
            cache["second"] = now
            cache["response"] = head.encode("latin-1") + body
        return cache["response"]

    def handle(sock, address):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tail = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                buf = tail + data if tail else data
                count = buf.count(_TERMINATOR)
                # Keep the last bytes: a terminator may be split across reads.
                tail = b"" if buf.endswith(_TERMINATOR) else buf[-3:]
                if count:
                    if args.close:
                        sock.sendall(response())
                        return
                    sock.sendall(response() * count)
        except OSError:
            return
        finally:
            sock.close()

    StreamServer(("127.0.0.1", args.port), handle, backlog=2048).serve_forever()


if __name__ == "__main__":
    main()
