"""Host values RFC 3986 allows: empty (RFC 9112 section 3.2), IPv4 with a port, reg-name characters."""

requests = [
    {"method": "GET", "target": "/", "version": "1.1", "headers": [("Host", "")], "keep_alive": True},
    {"method": "GET", "target": "/", "version": "1.1", "headers": [("Host", "192.0.2.1:8080")], "keep_alive": True},
    {
        "method": "GET",
        "target": "/",
        "version": "1.1",
        "headers": [("Host", "xn--bcher-kva.example_1~!$&'()*+,;=%41")],
        "keep_alive": True,
    },
]
