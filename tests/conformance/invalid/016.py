"""HTTP/0.9 version."""

status = 400
