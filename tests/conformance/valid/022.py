"""Percent-encoded path and query pass through undecoded."""

requests = [
    {
        "method": "GET",
        "target": "/a%20b/%2E%2E/c?q=%26x%3D1&empty=&flag",
        "version": "1.1",
        "headers": [("Host", "example.test")],
        "keep_alive": True,
    }
]
