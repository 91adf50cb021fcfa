"""A flask-sock echo, drained with Close 1001 on shutdown.

Run::

    gshutdown examples.flask_sock_echo:app

Observe, with any WebSocket client (``python -m websockets ws://localhost:8000/echo``
if you have it): each message comes back. Send SIGTERM: the client receives a
Close frame, 1001 "going away", answers it, and the process exits 0.

flask-sock (simple-websocket) speaks the protocol itself, on the socket it
finds at ``environ['gunicorn.socket']``. The server writes its Close frame
through that same socket, under the lock the library's own writes take, so the
frame never lands inside one of the app's; after it, the library's writes are
dropped. ``ws.receive()`` then raises ``ConnectionClosed``, which flask-sock
takes as the end of the handler.
"""

from flask import Flask
from flask_sock import Sock

app = Flask(__name__)
sock = Sock(app)


@app.route("/")
def index():
    return "a WebSocket echo at /echo\n"


@sock.route("/echo")
def echo(ws):
    while True:
        ws.send(ws.receive())
