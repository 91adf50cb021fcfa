"""A valid request, then a bad one: the first is complete before the error."""

status = 400
complete = 1
