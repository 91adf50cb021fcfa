"""HTTP/1.0 with Transfer-Encoding: the connection closes after it (RFC 9112 section 6.1)."""

requests = [
    {
        "method": "POST",
        "target": "/old",
        "version": "1.0",
        "headers": [("Connection", "keep-alive"), ("Transfer-Encoding", "chunked")],
        "body": b"abc",
        "keep_alive": False,
    }
]
