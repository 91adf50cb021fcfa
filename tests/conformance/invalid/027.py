"""Space inside the request target."""

status = 400
