"""Bare LF in a field value."""

status = 400
