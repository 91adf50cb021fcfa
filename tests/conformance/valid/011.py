"""Expect: 100-continue on an HTTP/1.1 request with a body."""

requests = [
    {
        "method": "POST",
        "target": "/up",
        "version": "1.1",
        "headers": [("Host", "example.test"), ("Content-Length", "4"), ("Expect", "100-continue")],
        "body": b"data",
        "keep_alive": True,
        "expect_continue": True,
    }
]
