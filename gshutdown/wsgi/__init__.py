"""The WSGI layer: a handler that runs a PEP 3333 application.

Owns: environ, ``wsgi.input``, ``start_response`` and body framing, the
public ``Server`` (the core server with the WSGI handler), the access-log
format and the WSGI wrappers the runner adds (readiness, access log).
May import: ``gshutdown.server``, ``gshutdown.config``, ``gshutdown.protocol``.
"""
