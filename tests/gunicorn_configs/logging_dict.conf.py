# gevent workers; patched here so that everything the app imports is cooperative from the start.
import gevent.monkey

gevent.monkey.patch_all()

import os  # noqa: E402

LOG_DIR = os.environ.get("LOG_DIR", "/var/log/app")

bind = "0.0.0.0:8000"
workers = 2
worker_class = "gevent"
loglevel = "info"

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"format": '{"time": "%(asctime)s", "level": "%(levelname)s", "msg": "%(message)s"}'},
    },
    "handlers": {
        "file": {
            "class": "logging.FileHandler",
            "filename": os.path.join(LOG_DIR, "server.log"),
            "formatter": "json",
        },
        "console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
    },
    "root": {"level": "INFO", "handlers": ["file", "console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["file"], "propagate": False, "qualname": "gunicorn.error"},
        "gunicorn.access": {"level": "INFO", "handlers": ["file"], "propagate": False, "qualname": "gunicorn.access"},
    },
}
