"""HTTP/1.0 with Connection: keep-alive stays open."""

requests = [
    {"method": "GET", "target": "/a", "version": "1.0", "headers": [("Connection", "keep-alive")], "keep_alive": True}
]
