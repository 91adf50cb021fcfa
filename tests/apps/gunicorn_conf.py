"""gunicorn settings for ``tests/test_gunicorn.py`` (``-c python:tests.apps.gunicorn_conf``).

gunicorn configures only its own loggers: this sends the applications' log
lines (``tests.apps.probe``'s "slow request started") to stderr too, where the
tests read them. Imported by the arbiter, so every worker inherits it.
"""

import logging
import sys

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(process)d] [%(levelname)s] %(message)s")

#: gunicorn 24+ opens a control socket at one path per user: tests running
#: side by side would share it.
control_socket_disable = True
