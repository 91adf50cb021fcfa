"""A test application for the CLI, signal and gunicorn worker tests.

``GET /``            hello (13 bytes)
``GET /patched``     whether ``gevent.monkey`` patched ``socket``: ``True``/``False``
``GET /slow?s=N``    logs "slow request started", sleeps N seconds, answers ``slept N``
``GET /pid?rid=ID``  the serving process's pid; with ``$PROBE_SEEN`` set, first appends
                     ``ID`` as a line to that file (so a test can tell which requests
                     reached an application, whichever process served them)
``POST /echo``       the request body, read to its end
``GET /chunked``     three pieces with no Content-Length (a chunked response)
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs

import gevent
import gevent.monkey

log = logging.getLogger("tests.apps.probe")

#: Not a WSGI application: the CLI must refuse ``tests.apps.probe:NOT_CALLABLE``.
NOT_CALLABLE = "a string"

CHUNKS = (b"first,", b"second,", b"third")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    path = environ["PATH_INFO"]
    if path == "/chunked":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _pieces()
    if path == "/patched":
        body = str(gevent.monkey.is_module_patched("socket")).encode()
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
    elif path == "/echo":
        body = environ["wsgi.input"].read()
    else:
        body = b"Hello, World!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _query(environ: dict[str, Any], name: str, default: str) -> str:
    return parse_qs(environ["QUERY_STRING"]).get(name, [default])[0]


def _pieces() -> Iterator[bytes]:
    for piece in CHUNKS:
        gevent.sleep(0)  # each piece its own write
        yield piece
