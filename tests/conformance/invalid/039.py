"""CONNECT needs an authority-form target (RFC 9112 section 3.2.3)."""

status = 400
