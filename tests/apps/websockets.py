"""WebSocket applications for the tests, one per way apps speak WebSocket on gevent.

- ``raw_echo``: ``environ['wsgi.websocket']`` (gevent-websocket's interface);
  ``/push`` sends messages without reading, for the write-timeout case.
- ``flask_sock_app``: flask-sock (simple-websocket on ``gunicorn.socket``).
- ``socketio_app``: Flask-SocketIO, ``async_mode="gevent"``: an ``echo`` event
  answered by ack, a ``reply`` event answered by emitting ``echoed``, a
  ``record`` event appended (one line, ``id pid``) to the file named by
  ``$RECORD_FILE`` before it is acknowledged with the worker's pid.

Every handler logs ``handler done`` when it returns, so process tests can
count them.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import flask
import gevent
import gevent.event
from flask_sock import Sock
from flask_socketio import SocketIO, emit

log = logging.getLogger("tests.apps.websockets")


def raw_echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    ws = environ.get("wsgi.websocket")
    if ws is None:
        body = b"not a websocket\n"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if ws.path == "/push":
        chunk = b"x" * 65536
        while True:  # until the write timeout (or a close) raises
            ws.send(chunk)
    while True:
        message = ws.receive()
        if message is None:
            break
        ws.send(message)
    log.info("handler done (close code %s)", ws.close_code)
    return []


class GreenletThread(gevent.Greenlet):  # type: ignore[misc]
    """threading.Thread's interface on a greenlet: simple-websocket's reader, in an unpatched test process."""

    def __init__(self, target: Callable[[], Any]) -> None:
        super().__init__(target)
        self.name = "simple-websocket-reader"


flask_sock_app = flask.Flask("flask_sock_app")
# Under the gshutdown command (monkey-patched) threading would do; tests run the server unpatched.
flask_sock_app.config["SOCK_SERVER_OPTIONS"] = {"thread_class": GreenletThread, "event_class": gevent.event.Event}
sock = Sock(flask_sock_app)


@sock.route("/echo")
def flask_sock_echo(ws: Any) -> None:
    try:
        while True:
            ws.send(ws.receive())
    finally:
        log.info("handler done")


@flask_sock_app.route("/")
def flask_sock_index() -> str:
    return "flask-sock app\n"


socketio_flask = flask.Flask("socketio_app")
socketio = SocketIO(socketio_flask, async_mode="gevent")
socketio_app = socketio_flask


@socketio.on("echo")
def socketio_echo(data: Any) -> Any:
    return data


@socketio.on("reply")
def socketio_reply(data: Any) -> None:
    emit("echoed", data)


@socketio.on("record")
def socketio_record(message_id: int) -> int:
    # Written (and on disk for the test to read) before the ack leaves: an
    # acknowledged message is a recorded one.
    with open(os.environ["RECORD_FILE"], "a") as records:
        records.write(f"{int(message_id)} {os.getpid()}\n")
    return os.getpid()
