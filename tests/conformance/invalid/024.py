"""A TLS ClientHello sent to the plain-text port."""

status = 400
