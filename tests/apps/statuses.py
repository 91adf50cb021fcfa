"""A test application answering with the status it is asked for.

``GET /status/NNN``  answers with status NNN (and its number as the body)
``GET /raise``       raises: the server answers 500
``GET /slow?s=N``    logs "slow request started", sleeps N seconds, answers 200
anything else        200 ``ok``
"""

from __future__ import annotations

import logging
from typing import Any, Callable
from urllib.parse import parse_qs

import gevent

log = logging.getLogger("tests.apps.statuses")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    path = environ["PATH_INFO"]
    body = b"ok"
    status = "200 OK"
    if path.startswith("/status/"):
        body = path[len("/status/") :].encode()
        status = f"{body.decode()} Asked For"
    elif path == "/raise":
        raise RuntimeError("asked to fail")
    elif path == "/slow":
        seconds = float(parse_qs(environ["QUERY_STRING"]).get("s", ["1"])[0])
        log.info("slow request started (%g s)", seconds)
        gevent.sleep(seconds)
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
