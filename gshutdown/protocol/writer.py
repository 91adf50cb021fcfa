"""Response framing: status line, header block, chunked body.

The keep-alive decision is made here, when the head is encoded, from what is
true at that moment (the server may have started shutting down while the
application ran): that is how a response that is still in flight when a
shutdown begins carries ``Connection: close``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

#: Ends a chunked body (no trailers).
LAST_CHUNK = b"0\r\n\r\n"

_NO_BODY_STATUSES = frozenset({204, 304})
# Hop-by-hop fields (RFC 9110 7.6.1; RFC 2616 13.5.1 lists them) that describe a connection the server
# owns, not the application: dropped from its headers. Connection itself is
# the writer's (only its "close" is honoured); Upgrade is kept on a 426,
# which must carry it (RFC 9110 15.5.22).
_HOP_BY_HOP = frozenset({"keep-alive", "proxy-connection", "te", "trailer", "upgrade"})


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


class _Prepared(NamedTuple):
    """What a head needs from the application's status and headers, worked out once."""

    #: The status line and the application's fields, minus Connection.
    block: bytes
    code: int
    content_length: Optional[int]
    has_date: bool
    #: The ``Server`` field to add (empty when the application set one).
    server_line: bytes
    #: The application sent ``Connection: close``.
    close: bool
    #: ``Connection`` must name ``upgrade`` (a 426 carrying Upgrade).
    upgrade: bool


# Builds a ResponseHead from a tuple of its fields without the named tuple's
# Python-level __new__ (a frame per response).
_new_head = tuple.__new__

# Most applications answer with a handful of distinct status + header lists:
# preparing each once saves the per-field work on every response. Bounded,
# and cleared when full, so per-response values (cookies, ETags) cannot grow it.
_PREPARED: dict[tuple[Any, ...], _Prepared] = {}
_MAX_PREPARED = 512
# (Date value, its encoded field): one tuple, so that a reader never pairs a
# new value with an old field (servers may run in several threads' hubs).
_date_cache: tuple[str, bytes] = ("", b"")


def _prepare(status: str, headers: Sequence[tuple[str, str]], server: str) -> _Prepared:
    code = int(status[:3])
    content_length: Optional[int] = None
    has_date = has_server = close = upgrade = False
    lines = ["HTTP/1.1 ", status, "\r\n"]
    for name, value in headers:
        lname = name.lower()
        if lname == "content-length":
            if code < 200 or code == 204:
                continue  # RFC 9110 8.6: never on 1xx and 204
            content_length = int(value)
        elif lname == "connection":
            close = close or "close" in value.lower()
            continue  # ours to write
        elif lname in _HOP_BY_HOP:
            if lname != "upgrade" or code != 426:
                continue
            upgrade = True
        elif lname == "date":
            has_date = True
        elif lname == "server":
            has_server = True
        lines += (name, ": ", value, "\r\n")
    server_line = f"Server: {server}\r\n".encode("latin-1") if server and not has_server else b""
    return _Prepared("".join(lines).encode("latin-1"), code, content_length, has_date, server_line, close, upgrade)


def _date_line(date: str) -> bytes:
    global _date_cache
    cached = _date_cache
    if cached[0] != date:  # a new second
        cached = _date_cache = (date, f"Date: {date}\r\n".encode("latin-1"))
    return cached[1]


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
    key = (status, tuple(headers), server)
    try:
        prepared = _PREPARED.get(key)
        cacheable = True
    except TypeError:  # an unhashable field: prepare it every time
        prepared = None
        cacheable = False
    if prepared is None:
        prepared = _prepare(status, headers, server)
        if cacheable:
            if len(_PREPARED) >= _MAX_PREPARED:
                _PREPARED.clear()
            _PREPARED[key] = prepared
    code = prepared.code
    send_body = not (method == "HEAD" or code < 200 or code in _NO_BODY_STATUSES)
    content_length = prepared.content_length
    keep_alive = keep_alive and not prepared.close
    parts = [prepared.block]
    chunked = False
    if content_length is None and send_body:
        if body_length_hint is not None:
            content_length = body_length_hint
            parts.append(b"Content-Length: %d\r\n" % body_length_hint)
        elif http_version == "1.1":
            chunked = True
            parts.append(b"Transfer-Encoding: chunked\r\n")
        else:
            keep_alive = False  # HTTP/1.0: the body ends when the connection does
    if not prepared.has_date:
        parts.append(_date_line(date))
    parts.append(prepared.server_line)
    if prepared.upgrade:
        if http_version == "1.1":
            parts.append(b"Connection: upgrade\r\n" if keep_alive else b"Connection: close, upgrade\r\n")
        else:
            parts.append(b"Connection: keep-alive, upgrade\r\n" if keep_alive else b"Connection: upgrade\r\n")
    elif http_version == "1.1":
        if not keep_alive:
            parts.append(b"Connection: close\r\n")
    elif keep_alive:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return _new_head(ResponseHead, (b"".join(parts), chunked, content_length, keep_alive, send_body))


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
