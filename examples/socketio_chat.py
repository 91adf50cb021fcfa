"""A Flask-SocketIO chat (``async_mode="gevent"``), drained with Close 1001 on shutdown.

Run::

    gshutdown examples.socketio_chat:app

Observe, with python-socketio's client (``pip install 'python-socketio[client]'``)::

    python -c "import socketio; c = socketio.Client(); c.connect('http://localhost:8000', transports=['websocket']); \
c.on('said', print); c.emit('say', 'hello'); c.wait()"

Each message said is sent to everyone connected (``said``), and acknowledged
to its sender. Send SIGTERM: every client's WebSocket gets one Close frame,
1001 "going away"; the socket.io client sees the disconnect and reconnects (to
another instance, or to this one's replacement), with the jittered back-off
it uses by default. The log says how many WebSockets closed cleanly, and the
process exits 0.

Nothing here is gshutdown-specific: the same module runs under gunicorn's
gevent-websocket worker. engineio speaks WebSocket through
``environ['wsgi.websocket']`` when gevent-websocket is installed, otherwise
through simple-websocket on ``environ['gunicorn.socket']``: gshutdown provides
both.
"""

import logging

from flask import Flask
from flask_socketio import SocketIO, emit

log = logging.getLogger("examples.socketio_chat")

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent")


@app.route("/")
def index():
    return "socket.io chat: connect a socket.io client and emit 'say'\n"


@socketio.on("say")
def say(text):
    emit("said", text, broadcast=True)
    return {"ok": True}


@socketio.on("disconnect")
def disconnected(reason=None):
    log.info("client disconnected (%s)", reason)
