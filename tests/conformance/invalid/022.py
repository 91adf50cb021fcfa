"""101 header fields, one over the default."""

status = 431
