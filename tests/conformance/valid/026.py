"""Upgrade without Connection: upgrade is an ordinary request."""

requests = [
    {
        "method": "GET",
        "target": "/plain",
        "version": "1.1",
        "headers": [("Host", "example.test"), ("Upgrade", "websocket")],
        "keep_alive": True,
    }
]
