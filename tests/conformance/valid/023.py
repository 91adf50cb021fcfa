"""A long target still under the 8190-byte limit."""

requests = [
    {
        "method": "GET",
        "target": "/" + "x" * 8000,
        "version": "1.1",
        "headers": [("Host", "example.test")],
        "keep_alive": True,
    }
]
