"""Host with an IPv6 literal and port."""

requests = [
    {"method": "GET", "target": "/v6", "version": "1.1", "headers": [("Host", "[::1]:8080")], "keep_alive": True}
]
