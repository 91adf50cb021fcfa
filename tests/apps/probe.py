"""A test application for the CLI, signal, master and gunicorn worker tests.

``GET /``               hello (13 bytes)
``GET /patched``        whether ``gevent.monkey`` patched ``socket``: ``True``/``False``
``GET /gc-frozen``      how many objects ``gc.freeze()`` put out of the collector's sight
``GET /slow?s=N``       logs "slow request started", sleeps N seconds, answers ``slept N``
``GET /pid?rid=ID``     the serving process's pid; with ``$PROBE_SEEN`` set, first appends
                        ``ID`` as a line to that file (so a test can tell which requests
                        reached an application, whichever process served them)
``GET /multiprocess``   ``wsgi.multiprocess``: ``True``/``False``
``GET /echo/ID``        logs "echo ID", answers ``ID``: a request the log shows reached the app
``POST /echo``          the request body, read to its end
``GET /chunked``        three pieces with no Content-Length (a chunked response)
``GET /stream?n=N&s=S`` logs "stream started", then N chunks ``chunk K\\n``, S seconds apart
``POST /upload``        logs "upload started" at the first body bytes, reads the rest, answers the byte count
``GET /spin?s=N``       logs "spin started", then keeps the CPU (and the event loop) busy for N seconds
``GET /client``         who the client is, as JSON: ``REMOTE_ADDR``, ``REMOTE_PORT``, ``wsgi.url_scheme``
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs

import gevent
import gevent.monkey

log = logging.getLogger("tests.apps.probe")

#: Not a WSGI application: the CLI must refuse ``tests.apps.probe:NOT_CALLABLE``.
NOT_CALLABLE = "a string"

CHUNKS = (b"first,", b"second,", b"third")


def _query(environ: dict[str, Any], name: str, default: str) -> str:
    return parse_qs(environ["QUERY_STRING"]).get(name, [default])[0]


def _pieces() -> Iterator[bytes]:
    for piece in CHUNKS:
        gevent.sleep(0)  # each piece its own write
        yield piece


def _stream(count: int, pause: float) -> Iterator[bytes]:
    log.info("stream started")
    for index in range(count):
        if index:
            gevent.sleep(pause)
        yield f"chunk {index}\n".encode()


def spin_the_cpu(seconds: float) -> None:
    """Busy for ``seconds`` without yielding: what a CPU-bound legacy handler does to the hub."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    path = environ["PATH_INFO"]
    headers = [("Content-Type", "text/plain")]
    if path == "/chunked":
        start_response("200 OK", headers)
        return _pieces()
    if path == "/stream":
        start_response("200 OK", headers)
        return _stream(int(_query(environ, "n", "5")), float(_query(environ, "s", "0.2")))
    if path == "/patched":
        body = str(gevent.monkey.is_module_patched("socket")).encode()
    elif path == "/gc-frozen":
        body = str(gc.get_freeze_count()).encode()
    elif path == "/slow":
        seconds = float(_query(environ, "s", "1"))
        log.info("slow request started (%g s)", seconds)
        gevent.sleep(seconds)
        body = f"slept {seconds:g}".encode()
    elif path == "/pid":
        seen = os.environ.get("PROBE_SEEN")
        if seen:
            with open(seen, "a") as fh:  # one short O_APPEND write: whole lines across processes
                fh.write(_query(environ, "rid", "-") + "\n")
        body = str(os.getpid()).encode()
    elif path == "/multiprocess":
        body = str(environ["wsgi.multiprocess"]).encode()
    elif path == "/echo":
        body = environ["wsgi.input"].read()
    elif path.startswith("/echo/"):
        log.info("echo %s", path[6:])
        body = path[6:].encode()
    elif path == "/upload":
        stream = environ["wsgi.input"]
        total = len(stream.read(65536))
        log.info("upload started")
        while True:
            data = stream.read(65536)
            if not data:
                break
            total += len(data)
        body = str(total).encode()
    elif path == "/client":
        headers = [("Content-Type", "application/json")]
        body = json.dumps({key: environ.get(key) for key in ("REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme")}).encode()
    elif path == "/spin":
        log.info("spin started")
        spin_the_cpu(float(_query(environ, "s", "1")))
        body = b"spun"
    else:
        body = b"Hello, World!"
    start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
    return [body]
