"""Long polling that answers at once, normally, when the server shuts down.

Run::

    gshutdown examples.longpoll:app

Observe::

    curl 'localhost:8000/poll?timeout=60' &    # waits for news, up to 60 s
    curl -d hello localhost:8000/publish       # the poll answers {"news": "hello"}
    curl 'localhost:8000/poll?timeout=60' &
    kill -TERM <pid>                           # the poll answers {"news": null, ...} now

A poll waits on ``environ['gshutdown.shutting_down']`` as well as on the
news, so a shutdown does not have to wait out (or force-close) every poll:
each one gets a complete response telling the client to poll again, which
the load balancer sends to another instance.
"""

import json
import logging
from urllib.parse import parse_qs

import gevent
from gevent.event import Event

log = logging.getLogger("examples.longpoll")

#: Set (then replaced) when news is published; ``latest`` holds the news.
_news = {"event": Event(), "latest": None}


def publish(message):
    event, _news["event"] = _news["event"], Event()
    _news["latest"] = message
    event.set()


def _json(start_response, status, payload):
    body = json.dumps(payload).encode() + b"\n"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/publish" and environ["REQUEST_METHOD"] == "POST":
        publish(environ["wsgi.input"].read().decode("utf-8", "replace"))
        return _json(start_response, "200 OK", {"published": True})
    if path != "/poll":
        return _json(start_response, "404 Not Found", {"error": "try /poll or POST /publish"})
    timeout = min(float(parse_qs(environ["QUERY_STRING"]).get("timeout", ["30"])[0]), 300.0)
    news, shutting_down = _news["event"], environ["gshutdown.shutting_down"]
    log.info("poll: waiting up to %g s", timeout)
    gevent.wait([news, shutting_down], timeout=timeout, count=1)
    if news.is_set():
        return _json(start_response, "200 OK", {"news": _news["latest"]})
    reason = "shutting down" if shutting_down.is_set() else "timeout"
    return _json(start_response, "200 OK", {"news": None, "reason": reason, "poll_again": True})
