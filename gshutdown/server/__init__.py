"""The library core: connections, their states, the registry, shutdown.

Owns: the HTTP server on gevent's ``StreamServer`` (accept, connections,
TLS, the state machine and registry, shutdown, hooks, periodic jobs). It
serves a *handler* (``handler.Handler``, the role of Go's ``http.Handler``)
and knows nothing of WSGI.
May import: ``gshutdown.config``, ``gshutdown.protocol``; never ``wsgi`` or ``process``.
"""
