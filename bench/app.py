"""The WSGI application every server in the benchmark runs.

Paths:
    ``/``     13-byte ``Hello, World!`` (any method); a request body, if any,
              is read to the end first, so a POST costs what reading it costs.
    ``/64k``  a 64 KiB body, Content-Length set.
    ``/pid``  ``Hello, World!`` with ``X-Worker: PID``, the process that
              answered (the workers phase counts requests per worker).

The bodies are built once at import: the benchmark measures servers, not the app.
"""

import os

HELLO = b"Hello, World!"
BIG = b"x" * (64 * 1024)

_HELLO_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))]
_BIG_HEADERS = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BIG)))]


def _drain(environ):
    length = environ.get("CONTENT_LENGTH")
    if length and length != "0":
        stream = environ["wsgi.input"]
        remaining = int(length)
        while remaining > 0:
            data = stream.read(min(remaining, 256 * 1024))
            if not data:
                break
            remaining -= len(data)


def app(environ, start_response):
    _drain(environ)
    path = environ["PATH_INFO"]
    if path == "/64k":
        start_response("200 OK", list(_BIG_HEADERS))
        return [BIG]
    if path == "/pid":
        # Looked up per request: a worker forked after import has its own pid.
        start_response("200 OK", [*_HELLO_HEADERS, ("X-Worker", str(os.getpid()))])
        return [HELLO]
    start_response("200 OK", list(_HELLO_HEADERS))
    return [HELLO]
