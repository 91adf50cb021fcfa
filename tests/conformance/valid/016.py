"""Content-Length: 0 means no body."""

requests = [
    {
        "method": "POST",
        "target": "/empty",
        "version": "1.1",
        "headers": [("Host", "example.test"), ("Content-Length", "0")],
        "keep_alive": True,
    }
]
