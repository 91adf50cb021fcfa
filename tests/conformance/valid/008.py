"""Asterisk-form target for OPTIONS."""

requests = [
    {"method": "OPTIONS", "target": "*", "version": "1.1", "headers": [("Host", "example.test")], "keep_alive": True}
]
