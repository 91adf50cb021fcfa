"""An Upgrade request with a chunked body: the Upgrade is ignored (RFC 9110 section 7.8), the body
de-chunked, and the request after it parsed as usual."""

requests = [
    {
        "method": "POST",
        "target": "/up",
        "version": "1.1",
        "headers": [
            ("Host", "example.test"),
            ("Connection", "upgrade"),
            ("Upgrade", "websocket"),
            ("Transfer-Encoding", "chunked"),
        ],
        "body": b"abc",
        "keep_alive": True,
    },
    {"method": "GET", "target": "/next", "version": "1.1", "headers": [("Host", "example.test")], "keep_alive": True},
]
