"""obs-text (latin-1) in a value and an empty value are kept."""

requests = [
    {
        "method": "GET",
        "target": "/",
        "version": "1.1",
        "headers": [("Host", "example.test"), ("X-Name", "José"), ("X-Empty", "")],
        "keep_alive": True,
    }
]
