"""Two Host fields."""

status = 400
