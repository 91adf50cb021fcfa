# Development: restart on code changes; a single process is enough on a laptop.
import os

bind = "127.0.0.1:8000"
reload = True
reload_extra_files = [os.path.join(os.environ.get("LOG_DIR", "."), "settings.toml")]
reload_engine = "auto"
accesslog = "-"
loglevel = "debug"
wsgi_app = "tests.apps.corpus:app"
