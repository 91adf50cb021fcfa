"""A test application for the CLI and signal tests.

``GET /``            hello (13 bytes)
``GET /patched``     whether ``gevent.monkey`` patched ``socket``: ``True``/``False``
``GET /slow?s=N``    logs "slow request started", sleeps N seconds, answers ``slept N``
``POST /echo``       reads the whole body and answers with it
"""

from __future__ import annotations

import logging
from typing import Any, Callable
from urllib.parse import parse_qs

import gevent
import gevent.monkey

log = logging.getLogger("tests.apps.probe")

#: Not a WSGI application: the CLI must refuse ``tests.apps.probe:NOT_CALLABLE``.
NOT_CALLABLE = "a string"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    path = environ["PATH_INFO"]
    if path == "/patched":
        body = str(gevent.monkey.is_module_patched("socket")).encode()
    elif path == "/slow":
        seconds = float(parse_qs(environ["QUERY_STRING"]).get("s", ["1"])[0])
        log.info("slow request started (%g s)", seconds)
        gevent.sleep(seconds)
        body = f"slept {seconds:g}".encode()
    elif path == "/echo":
        body = environ["wsgi.input"].read()
    else:
        body = b"Hello, World!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
