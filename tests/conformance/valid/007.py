"""Absolute-form target is passed through as sent."""

requests = [
    {
        "method": "GET",
        "target": "http://example.test:8080/p/a?t=h#x",
        "version": "1.1",
        "headers": [("Host", "example.test:8080")],
        "keep_alive": True,
    }
]
