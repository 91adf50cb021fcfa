"""``gshutdown.Server``: the core HTTP server serving a WSGI application."""

from __future__ import annotations

from typing import Any, Optional

from gshutdown.config.server_config import Config
from gshutdown.server.http_server import HTTPServer, Listener
from gshutdown.server.registry import ConnStateHook
from gshutdown.wsgi.adapter import WSGIAdapter, WSGIApp


class Server(HTTPServer):
    """An HTTP/1.1 WSGI server on a gevent ``StreamServer``, built to stop well.

    Args:
        listener: ``(host, port)`` (IPv4 or IPv6; port 0 picks one),
            ``"unix:/path"``, or an already-bound listening socket.
        application: any PEP 3333 application.
        conn_state: called as ``conn_state(connection, new_state)`` on every
            connection state change, synchronously; must not block. An
            exception in it is logged and otherwise ignored.
        config: a ``Config``; keyword ``options`` override its fields.
        multiprocess: other processes serve the same listeners (a master's
            workers): PEP 3333's ``wsgi.multiprocess``.

    Raises:
        ValueError: an option is invalid; ``gshutdown.server.tls.TLSConfigError``
            (a ValueError) when a TLS file cannot be used.
    """

    def __init__(
        self,
        listener: Listener,
        application: WSGIApp,
        *,
        conn_state: Optional[ConnStateHook] = None,
        config: Optional[Config] = None,
        multiprocess: bool = False,
        **options: Any,
    ) -> None:
        self.application = application
        self.multiprocess = multiprocess
        self._adapter = WSGIAdapter(application, multiprocess=multiprocess)
        super().__init__(listener, self._adapter, conn_state=conn_state, config=config, **options)

    def set_application(self, application: WSGIApp) -> None:
        """Serve ``application`` from now on.

        The CLI binds (as root) before it imports the application (as the
        ``--user`` it switches to in between).
        """
        self.application = application
        self._adapter.app = application
