"""A Host port that is not digits."""

status = 400
