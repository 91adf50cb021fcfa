"""Response framing: status line, header block, chunked body.

The keep-alive decision is made here, when the head is encoded, from what is
true at that moment (the server may have started shutting down while the
application ran): that is how a response that is still in flight when a
shutdown begins carries ``Connection: close``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

#: Ends a chunked body (no trailers).
LAST_CHUNK = b"0\r\n\r\n"

_NO_BODY_STATUSES = frozenset({204, 304})


class ResponseHead(NamedTuple):
    """An encoded response head and how the body after it is framed."""

    data: bytes
    #: Body bytes must be sent through ``chunk()`` and end with ``LAST_CHUNK``.
    chunked: bool
    #: The declared body length, when there is one.
    content_length: Optional[int]
    #: The connection may carry another request after this response.
    keep_alive: bool
    #: False for HEAD, 1xx, 204 and 304: whatever the application yields is dropped.
    send_body: bool


def encode_head(
    status: str,
    headers: Sequence[tuple[str, str]],
    *,
    http_version: str,
    method: str,
    keep_alive: bool,
    body_length_hint: Optional[int],
    date: str,
    server: str,
) -> ResponseHead:
    """Encode a response head and decide its framing.

    Args:
        status: the WSGI status, e.g. ``"200 OK"`` (already validated).
        headers: the application's headers (already validated).
        http_version: the request's version, ``"1.0"`` or ``"1.1"``.
        method: the request method (HEAD responses carry no body).
        keep_alive: whether the connection may persist, as far as the client
            and the server are concerned; the response may still rule it out.
        body_length_hint: the whole body's length when the server knows it
            in advance (a one-item body list), used when no Content-Length is set.
        date: the ``Date`` value to add unless the application set one.
        server: the ``Server`` value to add unless the application set one
            (empty: none).
    """
    code = int(status[:3])
    send_body = not (method == "HEAD" or code < 200 or code in _NO_BODY_STATUSES)
    content_length: Optional[int] = None
    has_date = has_server = False
    lines = ["HTTP/1.1 ", status, "\r\n"]
    for name, value in headers:
        lname = name.lower()
        if lname == "content-length":
            content_length = int(value)
        elif lname == "connection":
            if "close" in value.lower():
                keep_alive = False
            continue  # ours to write, below
        elif lname == "date":
            has_date = True
        elif lname == "server":
            has_server = True
        lines += (name, ": ", value, "\r\n")
    chunked = False
    if content_length is None and send_body:
        if body_length_hint is not None:
            content_length = body_length_hint
            lines += ("Content-Length: ", str(body_length_hint), "\r\n")
        elif http_version == "1.1":
            chunked = True
            lines.append("Transfer-Encoding: chunked\r\n")
        else:
            keep_alive = False  # HTTP/1.0: the body ends when the connection does
    if not has_date:
        lines += ("Date: ", date, "\r\n")
    if server and not has_server:
        lines += ("Server: ", server, "\r\n")
    if http_version == "1.1":
        if not keep_alive:
            lines.append("Connection: close\r\n")
    elif keep_alive:
        lines.append("Connection: keep-alive\r\n")
    lines.append("\r\n")
    return ResponseHead("".join(lines).encode("latin-1"), chunked, content_length, keep_alive, send_body)


def chunk(data: bytes) -> bytes:
    """Frame one non-empty piece of body as an HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def error_response(status: int, reason: str, *, date: str, server: str) -> bytes:
    """A complete, self-contained error response that closes the connection."""
    body = f"{status} {reason}\n".encode("latin-1", "replace")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Date: {date}\r\n" + (f"Server: {server}\r\n" if server else "") + "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
