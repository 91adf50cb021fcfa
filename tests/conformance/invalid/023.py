"""Head over a configured 512-byte limit."""

status = 431
limits = {"max_header_bytes": 512}
