"""WebSocket echo on a hijacked connection, closed with a Close frame on shutdown.

Run::

    gshutdown examples.websocket_echo:app

Observe, with any WebSocket client (``python -m websockets ws://localhost:8000/``
if you have it): each message comes back. Send SIGTERM: the client receives
a Close frame, 1001 "going away", answers it, the log says ``WebSocket closed
cleanly``, and the process exits 0.

A hijacked connection belongs to the application: the server's graceful
shutdown does not wait for it (as in Go) and closes it when the shutdown
ends. So each session starts the close handshake itself (a second greenlet
waits on ``environ['gshutdown.shutting_down']`` and sends Close, while the
echo loop reads on until the client's Close arrives), and a "drain" shutdown
hook holds the shutdown until the sessions are over, at most 5 s. The
hijacked socket is a gevent socket (reading it is cooperative) with no
timeout: an idle session stays open until the client or a shutdown ends it;
an application that wants an idle limit sets one (``sock.settimeout``).
"""

import logging

import gevent
from gevent.lock import Semaphore
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import generate_accept_token

import gshutdown

log = logging.getLogger("examples.websocket_echo")

#: The greenlets of the open sessions.
sessions = set()


@gshutdown.on_shutdown(phase="drain", timeout=5)
def wait_for_sessions():
    gevent.joinall(list(sessions))


def app(environ, start_response):
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "")
    if environ.get("HTTP_UPGRADE", "").lower() != "websocket" or not key:
        body = b"a WebSocket echo: connect with a WebSocket client\n"
        start_response(
            "426 Upgrade Required",
            [("Upgrade", "websocket"), ("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
        )
        return [body]
    sock, received = environ["gshutdown.hijack"]()
    sock.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + generate_accept_token(key.encode()) + b"\r\n\r\n"
    )
    sessions.add(gevent.getcurrent())
    try:
        echo(sock, received, environ["gshutdown.shutting_down"])
    finally:
        sessions.discard(gevent.getcurrent())
    return []


def echo(sock, received, shutting_down):
    ws = Connection(ConnectionType.SERVER)
    sending = Semaphore()  # two greenlets write: keep frames whole

    def send(event):
        with sending:
            if ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                sock.sendall(ws.send(event))

    def close_on_shutdown():
        shutting_down.wait()
        send(CloseConnection(code=CloseReason.GOING_AWAY, reason="server shutting down"))

    closer = gevent.spawn(close_on_shutdown)
    try:
        if received:
            ws.receive_data(received)
        while True:
            for event in ws.events():
                if isinstance(event, (TextMessage, BytesMessage)) and ws.state is ConnectionState.OPEN:
                    send(Message(data=event.data, message_finished=event.message_finished))
                elif isinstance(event, Ping):
                    send(event.response())
                elif isinstance(event, CloseConnection):
                    send(event.response())  # a no-op when we sent Close first
                    log.info("WebSocket closed cleanly (code %d)", event.code)
            if ws.state is ConnectionState.CLOSED:
                return
            ws.receive_data(sock.recv(65536) or None)  # None: the TCP connection ended
    except OSError:
        log.info("WebSocket connection lost before the close handshake")
    finally:
        closer.kill()
        sock.close()
