"""The HTTP/1.1 protocol layer: bytes in, events out; events in, bytes out.

Nothing in this package does I/O or imports ``socket`` or ``gevent``; the
connection (``gshutdown.server.connection``) owns the socket and drives these objects.
"""

from gshutdown.protocol.events import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    ProtocolError,
    Request,
)
from gshutdown.protocol.parser import RequestParser
from gshutdown.protocol.writer import (
    LAST_CHUNK,
    ResponseHead,
    chunk,
    encode_head,
    error_response,
)

__all__ = [
    "LAST_CHUNK",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "ProtocolError",
    "Request",
    "RequestParser",
    "ResponseHead",
    "chunk",
    "encode_head",
    "error_response",
]
