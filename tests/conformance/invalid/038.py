"""Userinfo in an absolute-form target is an error (RFC 9110 section 4.2.4)."""

status = 400
