"""A Django-style project's wsgi module: importable only through the config file's pythonpath."""

import os

from tests.apps.corpus import app as application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

__all__ = ["application"]
