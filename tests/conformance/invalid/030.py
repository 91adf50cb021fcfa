"""Bare LF line ends."""

status = 400
