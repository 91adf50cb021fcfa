"""Two different Content-Length values."""

status = 400
