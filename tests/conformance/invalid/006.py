"""Chunk size with a 0x prefix."""

status = 400
head_accepted = True
