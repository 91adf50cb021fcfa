"""HTTP/1.0 needs no Host and closes by default."""

requests = [{"method": "GET", "target": "/", "version": "1.0", "headers": [], "keep_alive": False}]
