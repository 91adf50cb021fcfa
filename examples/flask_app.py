"""A Flask application served by gshutdown.

Run::

    gshutdown examples.flask_app:app

Observe::

    curl localhost:8000/                 # {"hello": "world"}
    curl -i 'localhost:8000/slow?s=5' &  # then, within 5 s: kill -TERM <pid>

The slow request still gets its answer, with ``Connection: close``, and only
then does the process exit (status 0). ``/-/ready`` is answered by gshutdown
itself: 200 while serving, 503 once draining. ``time.sleep`` does not block
the other requests because the CLI monkey-patches before importing this module.
"""

import time

from flask import Flask, request

app = Flask(__name__)


@app.get("/")
def index():
    return {"hello": "world"}


@app.get("/slow")
def slow():
    seconds = min(float(request.args.get("s", "1")), 60.0)
    app.logger.info("slow: sleeping %g s", seconds)
    time.sleep(seconds)
    return {"slept": seconds}
