"""WebSocket upgrade; the first frame after the head is tunnel bytes."""

requests = [
    {
        "method": "GET",
        "target": "/chat",
        "version": "1.1",
        "headers": [
            ("Host", "example.test"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        "keep_alive": True,
        "upgrade": True,
    }
]
tunnel = b"\x81\x857\xfa!=\x7f\x9fMQX"
