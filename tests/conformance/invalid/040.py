"""Transfer-Encoding in two fields is one list: gzip, chunked is not implemented (501)."""

status = 501
