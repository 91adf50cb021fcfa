"""Gunicorn settings for mysite (deployed from a checkout; the project is not installed)."""

import os

BASE_DIR = os.path.dirname(os.path.abspath(__file__))

pythonpath = os.path.join(BASE_DIR, "site")
wsgi_app = "mysite.wsgi:application"
raw_env = [
    "DJANGO_SETTINGS_MODULE=mysite.settings.production",
    "APP_MODE=production",
]
bind = "127.0.0.1:8001"
workers = 2
worker_class = "gevent"
timeout = 60
debug = False
daemon = False
capture_output = False
