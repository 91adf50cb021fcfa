"""A transfer coding before the final chunked is not implemented (RFC 9112 section 6.1): 501."""

status = 501
