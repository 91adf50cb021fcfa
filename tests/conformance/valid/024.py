"""Exactly 100 header fields (the default limit) are accepted."""

requests = [
    {
        "method": "GET",
        "target": "/many",
        "version": "1.1",
        "headers": [("Host", "example.test")] + [(f"X-Field-{i}", str(i)) for i in range(99)],
        "keep_alive": True,
    }
]
