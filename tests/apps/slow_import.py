"""The probe app behind a 2 s import, for signals that reach a worker while it loads the app."""

import logging

import gevent

logging.getLogger("tests.apps.slow_import").info("slow import started")
gevent.sleep(2)

from tests.apps.probe import app  # noqa: E402

__all__ = ["app"]
