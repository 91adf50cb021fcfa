"""Chunk sizes in upper case hex with leading zeros."""

requests = [
    {
        "method": "POST",
        "target": "/hex",
        "version": "1.1",
        "headers": [("Host", "example.test"), ("Transfer-Encoding", "chunked")],
        "body": b"0123456789abcdefghijklmnopqrstuvwxyz!",
        "keep_alive": True,
    }
]
