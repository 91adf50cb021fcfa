"""Open N keep-alive connections, one request each, then hold them idle.

Used by run.py for the memory and shutdown tests, in a process of its own
(pinned to the load generator's CPU). Each connection sends ``GET /``, reads
the whole response, and then stays open and silent. When all are open it
prints one JSON line (``{"opened": ..., "failed": ..., "seconds": ...}``)
and then waits, closing every socket the server closes (as a browser or a
load balancer would), until its standard input closes or ``--max-seconds``
pass; then it prints ``{"closed_by_server": ..., "reset_by_server": ...}``
(closes seen as a reset rather than a FIN are counted in both) and exits.

Run as ``python bench/idle_clients.py --port PORT --count 10000``.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _read_response(sock: socket.socket) -> bool:
    """Read one response with a Content-Length body; False if it did not come whole."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return False
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return False
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            return False
        body += data
    return True


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per connect and response")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="exit by itself after this long")
    parser.add_argument("--host", default="127.0.0.1", help="the server's loopback address")
    args = parser.parse_args(argv)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.count + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.count + 1024), hard))

    began = time.monotonic()
    selector = selectors.DefaultSelector()
    open_socks = 0
    failed = 0
    first_error = ""
    for _ in range(args.count):
        if time.monotonic() - began > args.max_seconds:
            break
        sock = None
        try:
            sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(REQUEST)
            if not _read_response(sock):
                raise ConnectionError("no complete 200 response")
        except OSError as exc:
            failed += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
            if sock is not None:
                sock.close()
            continue
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        open_socks += 1
    _emit(
        {
            "opened": open_socks,
            "failed": failed,
            "first_error": first_error,
            "seconds": round(time.monotonic() - began, 3),
        }
    )

    # Hold them idle; close what the server closes; stop when stdin closes.
    selector.register(sys.stdin, selectors.EVENT_READ)
    closed_by_server = 0
    reset_by_server = 0
    all_closed_at = None
    deadline = began + args.max_seconds
    running = True
    while running and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
            if key.fileobj is sys.stdin:
                sys.stdin.readline()  # any line, or EOF: stop holding
                running = False
                continue
            sock = key.fileobj
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                reset_by_server += 1
                data = b""
            if not data:
                selector.unregister(sock)
                sock.close()
                closed_by_server += 1
                if closed_by_server == open_socks:
                    all_closed_at = time.time()
    _emit({"closed_by_server": closed_by_server, "reset_by_server": reset_by_server, "all_closed_at": all_closed_at})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
