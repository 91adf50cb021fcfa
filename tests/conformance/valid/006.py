"""Three pipelined requests; the last asks to close."""

requests = [
    {"method": "GET", "target": "/1", "version": "1.1", "headers": [("Host", "example.test")], "keep_alive": True},
    {
        "method": "POST",
        "target": "/2",
        "version": "1.1",
        "headers": [("Host", "example.test"), ("Content-Length", "2")],
        "body": b"hi",
        "keep_alive": True,
    },
    {
        "method": "GET",
        "target": "/3",
        "version": "1.1",
        "headers": [("Host", "example.test"), ("Connection", "close")],
        "keep_alive": False,
    },
]
