"""What a server serves: a ``Handler`` (the role of Go's ``http.Handler``).

The server owns connections, their states and their shutdown; a handler
owns what a request means. ``gshutdown.wsgi`` implements one that runs a
PEP 3333 application, so nothing here knows WSGI, and other protocols on
top of a request (WebSockets) plug in the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from gshutdown.protocol.events import Request
    from gshutdown.server.connection import Connection
    from gshutdown.server.http_server import HTTPServer


class Handler(Protocol):
    """Serves the requests a server's connections read."""

    def bind(self, server: HTTPServer) -> None:
        """Called once the server's listener is bound, before the first connection."""

    def handle(self, conn: Connection, request: Request) -> bool:
        """Serve ``request`` on ``conn``: read its body, write its response.

        Called in the connection's greenlet, the connection ACTIVE. Returns
        True when the connection may carry another request; the handler may
        also hijack the connection (``Connection.hijack``).
        """
