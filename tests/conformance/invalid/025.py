"""Transfer-Encoding whose final coding is not chunked (RFC 9112 section 6.3)."""

status = 400
