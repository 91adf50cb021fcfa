"""chunked not the final coding."""

status = 400
