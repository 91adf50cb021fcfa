"""A Host value that is not host[:port] (RFC 9112 section 3.2)."""

status = 400
