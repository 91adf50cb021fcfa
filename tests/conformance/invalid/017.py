"""HTTP/1.2 version."""

status = 400
