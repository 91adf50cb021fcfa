"""An empty line before the request line is ignored (RFC 9112 section 2.2)."""

requests = [
    {
        "method": "GET",
        "target": "/after-crlf",
        "version": "1.1",
        "headers": [("Host", "example.test")],
        "keep_alive": True,
    }
]
