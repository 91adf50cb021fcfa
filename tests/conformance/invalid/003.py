"""Content-Length with a comma-separated list."""

status = 400
