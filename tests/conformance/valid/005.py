"""Chunked body with chunk extensions and trailer fields; trailers are not headers."""

requests = [
    {
        "method": "PUT",
        "target": "/c",
        "version": "1.1",
        "headers": [("Host", "example.test"), ("Transfer-Encoding", "chunked")],
        "body": b"Wikipedia in\r\n\r\nchunks.",
        "keep_alive": True,
    }
]
