"""Chunk size that is not hex."""

status = 400
head_accepted = True
