"""A transfer coding before the final chunked is left to the application."""

requests = [
    {
        "method": "POST",
        "target": "/gz",
        "version": "1.1",
        "headers": [("Host", "example.test"), ("Transfer-Encoding", "gzip, chunked")],
        "body": b"\x1f\x8b",
        "keep_alive": True,
    }
]
