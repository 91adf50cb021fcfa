"""POST with a Content-Length body."""

requests = [
    {
        "method": "POST",
        "target": "/form",
        "version": "1.1",
        "headers": [
            ("Host", "example.test"),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Content-Length", "13"),
        ],
        "body": b"name=value&x=",
        "keep_alive": True,
    }
]
