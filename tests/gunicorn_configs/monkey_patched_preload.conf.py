# Patch first: everything imported below (and the preloaded app) gets cooperative sockets.
from gevent import monkey

monkey.patch_all()

import multiprocessing  # noqa: E402
import os  # noqa: E402

CPU_CORES = multiprocessing.cpu_count()

bind = "0.0.0.0:8000"
workers = int(os.environ.get("GUNICORN_WORKERS", CPU_CORES))
worker_class = "gevent"
worker_connections = 500
preload_app = True
max_requests = 2000
max_requests_jitter = 200
wsgi_app = "tests.apps.corpus:application"
