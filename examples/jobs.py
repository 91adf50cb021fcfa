"""The seed's ticker jobs on gshutdown: a per-second and a per-minute job.

Run::

    gshutdown examples.jobs:app

Observe: every second ``second job #N start`` and, 0.5 s later, ``second job
#N done``; every minute the same for the minute job, which takes 2 s. Send
SIGTERM (or Ctrl-C) while a run is in progress: its ``done`` line still comes,
no new run starts, and the log ends with ``exit: clean ... 0 jobs killed``.
The Go original waited a fixed 10 s for its goroutines; here the shutdown ends
as soon as the running job does (or kills it at ``--graceful-timeout``).
``curl localhost:8000/`` shows how many runs each job has made.

``gshutdown.every`` never overlaps a job with itself, so a run should be
shorter than its interval (an overrun skips the missed ticks, with a warning).
``JOBS_TIME_SCALE=0.05`` multiplies every interval and duration: the tests'
fast variant.
"""

import logging
import os

import gevent

import gshutdown

log = logging.getLogger("examples.jobs")

SCALE = float(os.environ.get("JOBS_TIME_SCALE", "1"))
runs = {"second": 0, "minute": 0}


def _work(kind, seconds):
    runs[kind] += 1
    number = runs[kind]
    log.info("%s job #%d start", kind, number)
    gevent.sleep(seconds * SCALE)  # the job's actual work
    log.info("%s job #%d done", kind, number)


@gshutdown.every(1 * SCALE)
def second_job():
    _work("second", 0.5)


@gshutdown.every(60 * SCALE)
def minute_job():
    _work("minute", 2)


def app(environ, start_response):
    body = "".join(f"{kind} job: {count} runs\n" for kind, count in runs.items()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
