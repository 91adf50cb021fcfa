"""DEL in the request target."""

status = 400
