"""HTTP/1.0 with Transfer-Encoding: the framing is faulty (RFC 9112 section 6.1): 400."""

status = 400
