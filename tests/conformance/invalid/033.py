"""A field line starting with whitespace right after the request line."""

status = 400
