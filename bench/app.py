"""The WSGI application every server in the benchmark runs.

Paths:
    ``/``     13-byte ``Hello, World!`` (any method); a request body, if any,
              is read to the end first, so a POST costs what reading it costs.
    ``/64k``  a 64 KiB body, Content-Length set.

The bodies are built once at import: the benchmark measures servers, not the app.
"""

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
    if environ["PATH_INFO"] == "/64k":
        start_response("200 OK", list(_BIG_HEADERS))
        return [BIG]
    start_response("200 OK", list(_HELLO_HEADERS))
    return [HELLO]
