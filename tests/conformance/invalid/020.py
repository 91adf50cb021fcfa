"""Request target over the 8190-byte default."""

status = 414
