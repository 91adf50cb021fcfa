"""Whitespace around a field value is not part of it (RFC 9112 section 5)."""

requests = [
    {
        "method": "GET",
        "target": "/",
        "version": "1.1",
        "headers": [("Host", "example.test"), ("X-Token", "abc def")],
        "keep_alive": True,
    }
]
