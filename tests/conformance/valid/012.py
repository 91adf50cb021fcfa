"""Expect: 100-continue is ignored on HTTP/1.0."""

requests = [
    {
        "method": "POST",
        "target": "/up",
        "version": "1.0",
        "headers": [("Content-Length", "4"), ("Expect", "100-continue")],
        "body": b"data",
        "keep_alive": False,
    }
]
