"""Errors a request's reader sees: the client left, or its body broke HTTP framing; a hijack refused."""

from __future__ import annotations


class ClientDisconnected(ConnectionError):
    """The client went away before its request body was complete.

    Raised from ``wsgi.input`` reads; the server drops the request quietly.
    """


class BodyTimeout(ClientDisconnected):
    """The request body came too slowly (``read_body_timeout``, ``min_body_rate``) and was cut.

    Raised from ``wsgi.input`` reads. The server has already answered 408
    (unless the response had begun), and nothing more is sent on the
    connection, which closes once the application returns.
    """


class BadRequestBody(ValueError):
    """The request body broke HTTP framing (e.g. a bad chunk size).

    Raised from ``wsgi.input`` reads; unless a response has begun, the server
    answers 400 and closes the connection.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class HijackRefused(RuntimeError):
    """``Config.max_hijacked`` connections are hijacked already: this one stays the server's.

    Raised by ``environ['gshutdown.hijack']()``; unless the application
    answers itself, the server answers 503 and closes the connection.
    """
