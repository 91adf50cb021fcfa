"""Request target over a configured 256-byte limit."""

status = 414
limits = {"max_request_line": 256}
