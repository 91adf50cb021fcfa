import os

proc_name = "corpus-shop"
bind = "0.0.0.0:8000"
worker_class = "gevent"
errorlog = os.path.join(os.environ.get("LOG_DIR", "/var/log/shop"), "error.log")
capture_output = True
loglevel = "warning"
