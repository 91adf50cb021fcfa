"""Events the request parser emits, in wire order.

A request is ``Request``, then zero or more ``Data``, then ``EndOfMessage``.
``ProtocolError`` and ``ConnectionClosed`` end the stream of events for good.
They are named tuples rather than dataclasses because one of each is built per
request on the hot path.
"""

from __future__ import annotations

from typing import NamedTuple, Union


class Request(NamedTuple):
    """A request head, complete and validated."""

    method: str
    #: The request target exactly as sent (origin-form or absolute-form), latin-1.
    target: str
    #: ``"1.0"`` or ``"1.1"``; nothing else gets this far.
    http_version: str
    #: Header fields in the order received, names and values as sent (latin-1).
    headers: list[tuple[str, str]]
    #: What the client asked for (HTTP/1.1 default on, HTTP/1.0 needs ``keep-alive``).
    keep_alive: bool
    #: ``Expect: 100-continue`` on an HTTP/1.1 request that has a body.
    expect_continue: bool
    #: The client asked to switch protocols (``Connection: upgrade`` + ``Upgrade``),
    #: or sent CONNECT; False when the Upgrade is ignored (a chunked body).
    upgrade: bool
    #: The request has a body (Content-Length > 0 or chunked).
    has_body: bool


class Data(NamedTuple):
    """A piece of request body, de-chunked."""

    data: bytes


class EndOfMessage(NamedTuple):
    """The request body (possibly empty) is complete."""


class ProtocolError(NamedTuple):
    """The bytes received are not acceptable HTTP/1.1; answer ``status`` and close."""

    status: int
    reason: str


class ConnectionClosed(NamedTuple):
    """The peer closed its sending side. ``mid_message``: inside a request."""

    mid_message: bool


Event = Union[Request, Data, EndOfMessage, ProtocolError, ConnectionClosed]
