"""Chunk data longer than its size."""

status = 400
head_accepted = True
