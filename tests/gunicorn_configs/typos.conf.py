# Hand-edited on a server, typos and all.
import os


def env(name, default):
    return os.environ.get(name, default)


bind = env("BIND", "0.0.0.0:8000")
worker = 2
graceful_timout = 10
worker_class = "gevent"
loglevel = env("LOG_LEVEL", "info")
wsgi_app = env("WSGI_APP", "tests.apps.corpus:app")
DEBUG = env("DEBUG", "0") == "1"
ENVIRONMENT = env("ENVIRONMENT", "staging")
