"""NUL in a field name."""

status = 400
