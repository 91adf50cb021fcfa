"""Extension methods known to llhttp (WebDAV, PATCH)."""

requests = [
    {
        "method": "PROPFIND",
        "target": "/dav/",
        "version": "1.1",
        "headers": [("Host", "example.test"), ("Depth", "1")],
        "keep_alive": True,
    },
    {
        "method": "PATCH",
        "target": "/r",
        "version": "1.1",
        "headers": [("Host", "example.test"), ("Content-Length", "2")],
        "body": b"{}",
        "keep_alive": True,
    },
]
