"""The application of ``tests/test_gunicorn_hooks.py``.

``GET /wait-callback``  the pid, then psycopg2's wait callback: ``module.name``, or ``None`` (blocking)
``GET /spin?s=N``       keeps the CPU (and the event loop) busy for N seconds
``GET /pieces``         three pieces, no Content-Length
anything else           JSON: the pid, ``SCRIPT_NAME``, ``PATH_INFO``, ``HTTP_X_HOOKED_BY``
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs

from tests.apps.probe import spin_the_cpu


def _pieces() -> Iterator[bytes]:
    yield from (b"one,", b"two,", b"three")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    path = environ["PATH_INFO"]
    if path == "/pieces":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _pieces()
    if path == "/wait-callback":
        import psycopg2.extensions

        callback = psycopg2.extensions.get_wait_callback()
        body = f"{os.getpid()} {callback.__module__}.{callback.__name__}" if callback else f"{os.getpid()} None"
    elif path == "/spin":
        spin_the_cpu(float(parse_qs(environ["QUERY_STRING"])["s"][0]))
        body = "spun"
    else:
        keys = ("SCRIPT_NAME", "PATH_INFO", "HTTP_X_HOOKED_BY")
        body = json.dumps({"pid": os.getpid(), **{key: environ.get(key) for key in keys}})
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
