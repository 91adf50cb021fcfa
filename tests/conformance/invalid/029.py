"""Lower-case method."""

status = 400
