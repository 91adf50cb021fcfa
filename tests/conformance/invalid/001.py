"""Content-Length together with Transfer-Encoding (request smuggling)."""

status = 400
