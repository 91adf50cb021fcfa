"""Tiny WSGI applications the lifecycle tests serve with the real CLI."""
