"""Simple GET, HTTP/1.1 keeps the connection alive by default."""

requests = [
    {
        "method": "GET",
        "target": "/index.html",
        "version": "1.1",
        "headers": [("Host", "example.test"), ("User-Agent", "conformance"), ("Accept", "*/*")],
        "keep_alive": True,
    }
]
