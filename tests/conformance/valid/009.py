"""CONNECT with an authority-form target; what follows the head is tunnelled."""

requests = [
    {
        "method": "CONNECT",
        "target": "db.internal:5432",
        "version": "1.1",
        "headers": [("Host", "db.internal:5432")],
        "keep_alive": True,
        "upgrade": True,
    }
]
tunnel = b"\x00\x00\x00\x08\x04\xd2\x16/"
