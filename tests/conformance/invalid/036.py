"""Asterisk-form is only for OPTIONS (RFC 9112 section 3.2.4)."""

status = 400
