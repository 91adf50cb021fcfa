"""Repeated fields keep their order and spelling."""

requests = [
    {
        "method": "GET",
        "target": "/",
        "version": "1.1",
        "headers": [
            ("Host", "example.test"),
            ("Cookie", "a=1"),
            ("ACCEPT", "text/html"),
            ("cookie", "b=2"),
            ("Accept", "*/*"),
        ],
        "keep_alive": True,
    }
]
