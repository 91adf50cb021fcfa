"""WebSockets for WSGI applications, drained gracefully at shutdown.

(Over 500 lines: the handshake, the ``wsgi.websocket`` object and the
simple-websocket socket share one per-socket write lock and the drain's 1001;
split, each half would need the other's internals.)

A valid WebSocket upgrade request (RFC 6455 4.2.1) gets two environ entries,
one for each way applications on gevent speak WebSocket:

- ``environ['wsgi.websocket']``: a ``WebSocket``, the interface of
  gevent-websocket (used by its apps, Flask-Sockets and python-engineio's
  gevent driver). The server speaks the protocol, on ``wsproto``:
  permessage-deflate when offered, pings answered, fragments joined, text
  checked as UTF-8 (1007), unmasked client frames refused (1002), messages
  bounded by ``Config.max_websocket_message`` (1009).
- ``environ['gunicorn.socket']``: a ``TakenSocket``, the key simple-websocket
  (flask-sock, python-engineio without gevent-websocket) looks for. The
  application's library speaks the protocol on it.

Both start lazily, because one environ must serve both kinds of application:
the handshake (101) goes out when the application first uses its
``wsgi.websocket`` (before it reads or sends anything), and the connection is
hijacked the moment the application first uses the socket. An application
that uses neither answers with a plain HTTP response.

A malformed handshake gets 400 (426 for a version other than 13) before the
application runs; one past ``Config.websocket_limit`` open WebSockets, or
once the shutdown has started, gets 503.

Shutdown: every open WebSocket is a hijacked connection that promises to go
away (``gshutdown.server.going_away``). When the drain starts, each gets one
Close frame 1001 "going away", written under the same per-socket lock as the
application's frames, so it never lands inside one; after it, frames the
application's library still writes are dropped (RFC 6455 5.5.1: nothing
follows a Close). The handler sees the close and returns; the server waits
for the closing handshakes until its deadline and counts what it had to cut.

Writes are bounded by ``Config.write_timeout``: a client that stops reading
has its connection closed. Reads have no timeout: an idle WebSocket stays
open until either side closes it or the server shuts down, and holds no
timer meanwhile.

Counted (``WebSockets``; ``gshutdown.process.metrics`` publishes them): open
WebSockets, messages in and out, and how each ended (its close code). For
simple-websocket apps the server reads the frame heads the app's library
sends and receives, skipping payloads.
"""

from __future__ import annotations

import base64
import binascii
import logging
import struct
import time
import zlib
from typing import TYPE_CHECKING, Any, Optional, Union

import gevent
from gevent import socket as gsocket
from gevent.lock import Semaphore
from gevent.socket import wait as _wait_readable
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import LOCAL_ONLY_CLOSE_REASONS, CloseReason, Opcode
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import generate_accept_token

from gshutdown.protocol.events import Request
from gshutdown.protocol.writer import error_response
from gshutdown.server.going_away import GoingAway

if TYPE_CHECKING:  # pragma: no cover
    from gshutdown.server.connection import Connection
    from gshutdown.server.http_server import HTTPServer

log = logging.getLogger("gshutdown")

#: Bytes asked of the kernel per read. Small enough that one read of a
#: compressed message cannot inflate past a few MiB before the size check.
RECV_SIZE = 16 * 1024
#: Seconds between log lines about upgrades refused for the limit.
REFUSAL_LOG_INTERVAL = 10.0
#: The reason sent with Close 1001 at shutdown.
GOING_AWAY_REASON = "server shutting down"
_ABNORMAL = int(CloseReason.ABNORMAL_CLOSURE)
_QUIET_END = (StopIteration, OSError)
_PLAIN_GEVENT_SOCKET = gsocket.socket
#: What ``WebSocket._pump`` returns once the WebSocket is closed.
_CLOSED = object()


class WebSocketClosed(ConnectionError):
    """Sending on a WebSocket whose Close was sent or received (or whose connection is gone)."""


def _header_tokens(request: Request, name: str) -> list[str]:
    """Comma-separated tokens of every ``name`` field, lower-cased."""
    tokens: list[str] = []
    for field, value in request.headers:
        if field.lower() == name:
            tokens.extend(part.strip().lower() for part in value.split(","))
    return tokens


def _header(request: Request, name: str) -> Optional[str]:
    for field, value in request.headers:
        if field.lower() == name:
            return value.strip()
    return None


def is_websocket_upgrade(request: Request) -> bool:
    """Whether ``request`` asks to switch to WebSocket (valid or not)."""
    return request.upgrade and "websocket" in _header_tokens(request, "upgrade")


def handshake_problem(request: Request) -> Optional[tuple[int, str]]:
    """(status, reason) when a WebSocket upgrade request is malformed (RFC 6455 4.2.1), else None."""
    if request.method != "GET":
        return 400, "Bad Request (a WebSocket handshake is a GET)"
    if request.http_version != "1.1":
        return 400, "Bad Request (a WebSocket handshake needs HTTP/1.1)"
    if request.has_body:
        return 400, "Bad Request (a WebSocket handshake has no body)"
    if "upgrade" not in _header_tokens(request, "connection"):
        return 400, "Bad Request (Connection: Upgrade missing)"
    key = _header(request, "sec-websocket-key")
    if key is None:
        return 400, "Bad Request (Sec-WebSocket-Key missing)"
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return 400, "Bad Request (Sec-WebSocket-Key is not 16 bytes)"
    except (binascii.Error, ValueError):
        return 400, "Bad Request (Sec-WebSocket-Key is not base64)"
    if _header(request, "sec-websocket-version") != "13":
        return 426, "Upgrade Required"
    return None


def _data_frame(opcode: int, payload: bytes) -> bytes:
    """A whole, uncompressed server message frame (wsproto's, without its per-frame objects)."""
    length = len(payload)
    if length < 126:
        return bytes((0x80 | opcode, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, length) + payload


def _send_all(sock: Any, data: bytes) -> None:
    """``sock.sendall(data)``, trying the plain socket first: most frames fit in one send."""
    if type(sock) is not _PLAIN_GEVENT_SOCKET:  # TLS: only its own send encrypts
        sock.sendall(data)
        return
    try:
        sent = sock._sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def _recv_untimed(sock: Any, size: int, wait_first: bool) -> bytes:
    """``sock.recv(size)`` on a plain gevent socket, with no timeout; OSError as recv raises it.

    The socket's timeout is for writes: waiting on its read watcher directly
    keeps an idle WebSocket free of any timer (a gevent Timeout each, which
    would also wake it every write_timeout). ``wait_first``: the last read
    emptied the socket (it took less than it could), so the next bytes are
    most likely not there yet (a client waiting for its answer sends nothing
    more): wait before reading, sparing a read that fails.
    A close by another greenlet meanwhile raises OSError (EBADF).
    """
    raw = sock._sock
    wait = wait_first
    while True:
        if wait:
            _wait_readable(sock._read_event)
        try:
            return raw.recv(size)
        except BlockingIOError:
            wait = True


def _write_now_or_soon(sock: Any, data: bytes, lock: Semaphore) -> None:
    """Write ``data`` without blocking if the kernel takes it all, else in a greenlet; then release ``lock``.

    ``lock`` is held by the caller, and stays held until the last byte is
    written, so no other frame can start inside this one.
    """
    try:
        # TLS: only its own send encrypts, and it may block: leave it to the greenlet.
        sent = sock._sock.send(data) if type(sock) is _PLAIN_GEVENT_SOCKET else 0
    except BlockingIOError:
        sent = 0
    except OSError:
        lock.release()
        return
    if sent == len(data):
        lock.release()
        return

    def finish() -> None:
        try:
            sock.sendall(memoryview(data)[sent:])
        except OSError:
            pass
        finally:
            lock.release()

    gevent.spawn(finish)


def _close_frame(code: int, reason: str) -> bytes:
    """A server's (unmasked) Close frame; empty for 1005 (no code); the reason cut to fit 125 bytes."""
    if code == CloseReason.NO_STATUS_RCVD:
        return b"\x88\x00"
    encoded = reason.encode()
    if len(encoded) > 123:
        encoded = encoded[:123].decode(errors="ignore").encode()  # not inside a UTF-8 sequence
    payload = struct.pack("!H", code) + encoded
    return bytes((0x88, len(payload))) + payload


def _unmask(buffer: bytearray, offset: int, length: int) -> bytes:
    """The ``length`` bytes of payload at ``offset`` in ``buffer``, unmasked by the 4 bytes before them."""
    if not length:
        return b""
    mask = buffer[offset - 4 : offset]
    repeated = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(buffer[offset : offset + length], "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        length, "big"
    )


_GOING_AWAY = int(CloseReason.GOING_AWAY)
_GOING_AWAY_FRAME = _close_frame(_GOING_AWAY, GOING_AWAY_REASON)
#: Close codes a client may send (RFC 6455 7.4): the defined ones but those
#: never sent (1005, 1006, 1015); 3000-4999 are checked apart.
_VALID_CLOSE_CODES = frozenset(int(code) for code in CloseReason) - frozenset(
    int(code) for code in LOCAL_ONLY_CLOSE_REASONS
)


#: zlib's memory level and the largest window (bits) for the server's own
#: compression. A WebSocket that has sent one compressed message keeps its
#: compressor for good (context takeover), and browsers always offer
#: permessage-deflate. wsproto's compressor is zlib's default (level 8, 32 KiB
#: window): 256 KiB allocated, 111 KiB resident per idle WebSocket after one
#: echo, against 39 KiB with these (16 KiB allocated). A window smaller than
#: the negotiated one is always valid: the client inflates with any up to its
#: own. 200 chat-sized JSON messages compress to 19.8% of their size with
#: these, 17.0% with zlib's defaults.
COMPRESS_MEM_LEVEL = 4
COMPRESS_WINDOW_BITS = 11


class _LeanDeflate(PerMessageDeflate):
    """wsproto's permessage-deflate, its compressor sized by ``COMPRESS_MEM_LEVEL`` and ``COMPRESS_WINDOW_BITS``."""

    def frame_outbound(self, proto: Any, opcode: Opcode, rsv: Any, data: bytes, fin: bool) -> Any:
        # wsproto makes its compressor on a message's first frame when it has
        # none: make it first, smaller; wsproto then uses it (and drops it when
        # server_no_context_takeover was agreed, to be made again here).
        if self._compressor is None and (opcode is Opcode.TEXT or opcode is Opcode.BINARY):
            bits = min(int(self.server_max_window_bits), COMPRESS_WINDOW_BITS)
            self._compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits, COMPRESS_MEM_LEVEL)
        return super().frame_outbound(proto, opcode, rsv, data, fin)


class _Upgrade:
    """One admitted WebSocket upgrade request: its slot, and who took the connection."""

    # Slots here and on TakenSocket: no dict each, for as long as a WebSocket lives.
    __slots__ = ("_released", "conn", "request", "session", "taken_by", "websockets")

    def __init__(self, websockets: WebSockets, conn: Connection, request: Request) -> None:
        self.websockets = websockets
        self.conn = conn
        self.request = request
        #: "server" (``wsgi.websocket``), "app" (``gunicorn.socket``), or None yet.
        self.taken_by: Optional[str] = None
        self.session: Optional[WebSocket] = None
        self._released = False

    def take(self, by: str) -> tuple[Any, bytes]:
        """Hijack the connection for ``by``; the socket (with the write timeout) and bytes already read."""
        if self.taken_by is not None:
            raise RuntimeError(f"this WebSocket was already taken through {self.taken_by!r}")
        conn = self.conn
        sock, received = conn.hijack()
        self.taken_by = by
        # The environ the connection keeps for its next requests: there are
        # none after this, and it would live as long as the WebSocket.
        conn.environ_base = None
        # Reads loop over this timeout (an idle WebSocket is fine); a write
        # that cannot finish within it ends the connection.
        sock.settimeout(conn.config.write_timeout)
        return sock, received

    def release(self) -> None:
        """Give the slot back (once)."""
        if not self._released:
            self._released = True
            self.websockets.open -= 1

    def handler_done(self) -> None:
        """The application's call is over (in the connection's greenlet)."""
        if self.taken_by is None:
            self.release()
        elif self.session is not None:
            try:
                self.session.finish()
            finally:
                self.release()
        # Taken by the application: its socket's close() releases the slot.


class WebSockets:
    """The WebSockets of one server: admission, the environ entries, the end of each."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        #: WebSockets open now (admitted upgrade requests included).
        self.open = 0
        #: WebSocket upgrades admitted so far.
        self.admitted_total = 0
        #: Whole messages received from clients, and sent to them (control frames not counted).
        self.messages_received = 0
        self.messages_sent = 0
        #: WebSockets ended, by close code: the client's Close code; the
        #: server's for a WebSocket it failed (1002, 1007, 1009); 1006 when no
        #: Close came (the connection was lost, or cut at the deadline).
        self.close_codes: dict[int, int] = {}
        self._upgrades: dict[int, _Upgrade] = {}
        self._refusal_logged_at = -REFUSAL_LOG_INTERVAL

    def admit(self, conn: Connection, request: Request, environ: dict[str, Any]) -> bool:
        """For an upgrade request: add the WebSocket entries, or answer it; False when answered.

        Upgrades to other protocols pass through untouched.
        """
        if not is_websocket_upgrade(request):
            return True
        problem = handshake_problem(request)
        server = self.server
        if problem is not None:
            status, reason = problem
            if status == 426:
                self._send_version_required(conn)
            else:
                conn.send_error(status, reason)
            return False
        if server.shutdown_started:
            conn.send_error(503, "Service Unavailable (shutting down)")
            return False
        limit = server.config.websocket_limit
        if limit is not None and self.open >= limit:
            now = time.monotonic()
            if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL:
                self._refusal_logged_at = now
                log.warning(
                    "WebSocket upgrades refused (503): %d open, the limit (max_websockets); logged every %g s",
                    self.open,
                    REFUSAL_LOG_INTERVAL,
                )
            conn.send_error(503, "Service Unavailable (too many WebSockets)")
            return False
        upgrade = _Upgrade(self, conn, request)
        self.open += 1
        self.admitted_total += 1
        self._upgrades[conn.id] = upgrade
        environ["wsgi.websocket"] = upgrade.session = WebSocket(upgrade, environ)
        environ["gunicorn.socket"] = TakenSocket(upgrade)
        return True

    def count_close(self, code: int) -> None:
        """One WebSocket ended with ``code``."""
        self.close_codes[code] = self.close_codes.get(code, 0) + 1

    def _send_version_required(self, conn: Connection) -> None:
        # RFC 6455 4.4: say which version this server speaks.
        response = error_response(
            426, "Upgrade Required", date=self.server.http_date(), server=self.server.config.server_header
        )
        head, _, body = response.partition(b"\r\n\r\n")
        conn.response_started = True
        conn.response_status = "426 Upgrade Required"
        try:
            conn.send(head + b"\r\nSec-WebSocket-Version: 13\r\n\r\n" + body)
        except OSError:
            pass

    def ended_quietly(self, conn: Connection, exc: BaseException) -> bool:
        """Whether ``exc``, raised by the application after it took a WebSocket, is its way to end it.

        flask-sock and python-engineio raise StopIteration (or ConnectionError)
        after the socket's last frame; a closed WebSocket raises OSError.
        """
        upgrade = self._upgrades.get(conn.id)
        return upgrade is not None and upgrade.taken_by is not None and isinstance(exc, _QUIET_END)

    def handler_done(self, conn: Connection) -> None:
        """The application's call for an upgrade request is over."""
        upgrade = self._upgrades.pop(conn.id, None)
        if upgrade is not None:
            upgrade.handler_done()
            upgrade.session = None  # the session refers to the upgrade: no cycle left


class WebSocket:
    """``environ['wsgi.websocket']``: a server-side WebSocket, gevent-websocket's interface.

    The handshake is sent on first use of ``receive``, ``send``, ``close`` or
    ``closed``. Not safe for two greenlets to ``receive()`` at once (sending
    from several is).

    Without permessage-deflate, the frames nearly every WebSocket sees (whole
    messages, pings, the closing handshake) are handled here, and wsproto's
    ``Connection`` (about 1.6 KiB) is made only when one needs it: a fragment,
    a reserved bit, an unmasked or malformed frame. From then on it parses
    every frame and its state is the WebSocket's.
    """

    def __init__(self, upgrade: _Upgrade, environ: dict[str, Any]) -> None:
        self._upgrade: Optional[_Upgrade] = upgrade
        self._websockets = upgrade.websockets  # the counters
        #: ``PATH_INFO`` of the handshake.
        self.path: str = environ.get("PATH_INFO", "")
        #: The ``Origin`` header, or None.
        self.origin: Optional[str] = environ.get("HTTP_ORIGIN")
        #: The ``Sec-WebSocket-Protocol`` the client asked for, or None (none is accepted).
        self.protocol: Optional[str] = environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL")
        #: The ``Sec-WebSocket-Version`` (``"13"``).
        self.version: str = environ.get("HTTP_SEC_WEBSOCKET_VERSION", "13")
        #: The Close code received from the client (1006 when the connection was lost), or None.
        self.close_code: Optional[int] = None
        self._opened = False  # the handshake was sent
        self._conn: Optional[Connection] = None
        self._sock: Any = None
        self._ws: Optional[WSConnection] = None  # wsproto, once a frame needs it (always when compressed)
        self._state = ConnectionState.OPEN  # while there is no wsproto
        self._send_lock: Semaphore  # made by the handshake
        self._going_away: Optional[GoingAway] = None
        self._parts: list[Union[str, bytes]] = []
        self._buffer = bytearray()  # received, not yet parsed
        self._max_message = upgrade.conn.config.max_websocket_message
        self._size = 0
        self._failed = False  # a protocol error: Close sent, nothing more is parsed
        self._compressed = False  # permessage-deflate agreed: wsproto frames every message
        self._lost = False  # the TCP connection is gone
        self._drained = False  # the last read emptied the socket

    def _state_now(self) -> ConnectionState:
        ws = self._ws
        return self._state if ws is None else ws.state

    # -- the handshake ------------------------------------------------------------

    def _open(self) -> None:
        if self._opened:
            return
        upgrade = self._upgrade
        if upgrade is None:
            raise WebSocketClosed("the WebSocket's request is over")
        request = upgrade.request
        sock, received = upgrade.take("server")
        conn = self._conn = upgrade.conn
        self._sock = sock
        self._send_lock = Semaphore()
        key = _header(request, "sec-websocket-key") or ""
        head = [
            b"HTTP/1.1 101 Switching Protocols",
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Accept: " + generate_accept_token(key.encode()),
        ]
        offers: list[str] = []
        seen = set()
        for field, value in request.headers:
            if field.lower() == "sec-websocket-extensions":
                for offer in value.split(","):
                    name = offer.split(";", 1)[0].strip()
                    if name and name not in seen:  # the first offer of each extension
                        seen.add(name)
                        offers.append(offer.strip())
        if offers:
            deflate = _LeanDeflate()
            accepted = server_extensions_handshake(offers, [deflate])
            if accepted:
                head.append(b"Sec-WebSocket-Extensions: " + accepted)
                self._ws = WSConnection(ConnectionType.SERVER, [deflate])
                self._compressed = True
        self._opened = True
        conn.response_started = True
        conn.response_status = "101 Switching Protocols"
        self._write(b"\r\n".join(head) + b"\r\n\r\n")
        self._buffer += received
        self._going_away = GoingAway(self._go_away)
        conn.server.add_going_away(conn, self._going_away)

    # -- gevent-websocket's interface ----------------------------------------------

    @property
    def closed(self) -> bool:
        """True once a Close was sent or received, or the connection is gone."""
        if not self._opened and self._upgrade is not None and self._upgrade.taken_by is None:
            self._open()
        return not self._opened or self._lost or self._failed or self._state_now() is not ConnectionState.OPEN

    def receive(self) -> Optional[Union[str, bytes]]:
        """The next message: ``str`` (text) or ``bytes`` (binary); None once the WebSocket is closed.

        Pings are answered and fragments joined meanwhile.
        """
        self._open()
        while True:
            if self._failed or self._lost:
                return None
            message = self._pump()
            if message is _CLOSED:
                return None
            if message is not None:
                self._websockets.messages_received += 1
                return message
            data = self._recv()
            if not data:
                self._lost = True
                self.close_code = self.close_code or _ABNORMAL
                return None
            self._buffer += data

    def send(self, message: Union[str, bytes, bytearray, memoryview], binary: Optional[bool] = None) -> None:
        """Send one message: binary for bytes-like, text for str (``binary`` forces either).

        Raises:
            WebSocketClosed: a Close was sent or received, or the connection is gone.
        """
        self._open()
        if binary is None:
            binary = not isinstance(message, str)
        if binary:
            data: Union[str, bytes] = message.encode() if isinstance(message, str) else bytes(message)
        else:
            data = message if isinstance(message, str) else bytes(message).decode()
        with self._send_lock:
            if self._lost or self._failed or self._state_now() is not ConnectionState.OPEN:
                raise WebSocketClosed("the WebSocket is closed")
            if self._compressed:
                self._write(self._ws.send(Message(data=data)))  # type: ignore[union-attr,type-var]
            elif binary:
                self._write(_data_frame(0x2, data))  # type: ignore[arg-type]
            else:
                self._write(_data_frame(0x1, data.encode()))  # type: ignore[union-attr]
            self._websockets.messages_sent += 1

    def close(self, code: int = 1000, message: Union[str, bytes] = b"") -> None:
        """Start the closing handshake (the server completes it when the handler returns)."""
        self._open()
        reason = message.decode() if isinstance(message, bytes) else message
        self._send_close(code, reason)

    # -- inside ---------------------------------------------------------------------

    def _pump(self) -> Any:
        """The next message from the bytes received so far; ``_CLOSED``; or None: more bytes needed.

        Frame boundaries are found here, so wsproto only ever gets whole frames
        and holds no bytes between calls. A whole, unfragmented, masked text or
        binary frame with no RSV bit (nearly every frame) is unmasked here;
        without wsproto yet, so are pings, pongs and valid Close frames. Anything
        else (fragments, compressed messages, frames breaking the rules) goes
        through wsproto, which answers what is wrong.
        """
        buffer = self._buffer
        while True:
            ws = self._ws
            if ws is not None:
                for event in ws.events():
                    kind = type(event)
                    if kind is TextMessage or kind is BytesMessage:
                        message = self._add_part(event)  # type: ignore[arg-type]
                        if message is not None:
                            return message
                        if self._failed:
                            return _CLOSED
                    elif kind is Ping:
                        self._send_event(event.response())  # type: ignore[attr-defined]
                    elif kind is CloseConnection:
                        self._on_close(event)  # type: ignore[arg-type]
                        return _CLOSED
                if ws.state is ConnectionState.CLOSED or self._failed:
                    return _CLOSED
                if self._compressed:
                    if not buffer:
                        return None
                    ws.receive_data(bytes(buffer))
                    buffer.clear()
                    continue
            elif self._state is ConnectionState.CLOSED or self._failed:
                return _CLOSED
            have = len(buffer)
            if have < 2:
                return None
            first, second = buffer[0], buffer[1]
            length = second & 0x7F
            offset = 2
            if length == 126:
                if have < 4:
                    return None
                length, offset = (buffer[2] << 8) | buffer[3], 4
            elif length == 127:
                if have < 10:
                    return None
                length, offset = int.from_bytes(buffer[2:10], "big"), 10
            masked = second & 0x80
            if masked:
                offset += 4
            if length > self._max_message:
                self._fail(int(CloseReason.MESSAGE_TOO_BIG), "message too big")
                return _CLOSED
            end = offset + length
            if have < end:
                return None
            opcode = first & 0x0F
            if first & 0xF0 == 0x80 and masked and (ws is None or not self._parts):
                if opcode == 1 or opcode == 2:
                    data = _unmask(buffer, offset, length)
                    del buffer[:end]
                    if opcode == 2:
                        return data
                    try:
                        return data.decode()
                    except UnicodeDecodeError:
                        self._fail(int(CloseReason.INVALID_FRAME_PAYLOAD_DATA), "invalid UTF-8 in a text message")
                        return _CLOSED
                if ws is None and length < 126 and opcode >= 0x8 and self._control(opcode, buffer, offset, length):
                    del buffer[:end]
                    if self._state is ConnectionState.CLOSED:
                        return _CLOSED
                    continue
            if ws is None:
                if self._state is not ConnectionState.OPEN:
                    del buffer[:end]  # after our Close: only the client's Close matters
                    continue
                ws = self._ws = WSConnection(ConnectionType.SERVER)
            ws.receive_data(bytes(buffer[:end]))
            del buffer[:end]

    def _control(self, opcode: int, buffer: bytearray, offset: int, length: int) -> bool:
        """Handle a whole, masked control frame without wsproto; False if it needs wsproto."""
        if opcode == 0xA:  # pong: nothing to do
            return True
        payload = _unmask(buffer, offset, length)
        if opcode == 0x9:
            with self._send_lock:
                if not self._lost and self._state is ConnectionState.OPEN:
                    self._write(bytes((0x8A, length)) + payload)
            return True
        if opcode != 0x8:
            return False
        if length == 0:
            code, reason = int(CloseReason.NO_STATUS_RCVD), ""
        else:
            code = (payload[0] << 8) | payload[1] if length >= 2 else 0
            if code not in _VALID_CLOSE_CODES and not 3000 <= code <= 4999:
                return False  # wsproto fails it: 1002
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                return False  # wsproto fails it: 1007
        self.close_code = code
        with self._send_lock:
            if self._state is ConnectionState.OPEN and not self._lost:
                # The client starts the closing handshake: answer with its code.
                try:
                    self._write(_close_frame(code, reason))
                except OSError:
                    pass
            self._state = ConnectionState.CLOSED
        return True

    def _add_part(self, event: Union[TextMessage, BytesMessage]) -> Optional[Union[str, bytes]]:
        """Add a piece of a message; the message when complete."""
        self._parts.append(bytes(event.data) if type(event.data) is bytearray else event.data)  # type: ignore[arg-type]
        self._size += len(event.data)
        assert self._conn is not None
        if self._size > self._max_message:
            self._fail(int(CloseReason.MESSAGE_TOO_BIG), "message too big")
            return None
        if not event.message_finished:
            return None
        parts, self._parts, self._size = self._parts, [], 0
        if len(parts) == 1:
            return parts[0]
        return "".join(parts) if type(event) is TextMessage else b"".join(parts)  # type: ignore[arg-type]

    def _on_close(self, event: CloseConnection) -> None:
        ws = self._ws
        assert ws is not None
        if ws.state is ConnectionState.OPEN:
            # Not a Close frame: a frame wsproto could not parse (1002, 1007).
            self._fail(event.code, event.reason or "")
            return
        self.close_code = event.code
        if ws.state is ConnectionState.REMOTE_CLOSING:
            self._send_event(event.response())

    def _fail(self, code: int, reason: str) -> None:
        """_Fail the WebSocket Connection_ (RFC 6455 7.1.7): Close with ``code``, parse nothing more."""
        log.info("WebSocket %s from %s failed: close %d (%s)", self.path, self._conn and self._conn.peer, code, reason)
        self._send_close(code, reason)
        self._failed = True
        self.close_code = code

    def _close_bytes(self, code: int, reason: str) -> Optional[bytes]:
        """Our Close frame, the state moved on; None when a Close may not be sent now. Under the send lock."""
        if not self._opened or self._lost:
            return None
        ws = self._ws
        if ws is not None:
            if ws.state is not ConnectionState.OPEN and ws.state is not ConnectionState.REMOTE_CLOSING:
                return None
            return ws.send(CloseConnection(code=code, reason=reason))
        if self._state is not ConnectionState.OPEN:
            return None
        self._state = ConnectionState.LOCAL_CLOSING
        return _GOING_AWAY_FRAME if code == _GOING_AWAY else _close_frame(code, reason)

    def _send_close(self, code: int, reason: str) -> None:
        with self._send_lock:
            data = self._close_bytes(code, reason)
            if data is None:
                return
            try:
                self._write(data)
            except OSError:
                pass

    def _send_event(self, event: Any) -> None:
        ws = self._ws
        with self._send_lock:
            if ws is None or self._lost:
                return
            if ws.state is ConnectionState.OPEN or (
                type(event) is CloseConnection and ws.state is ConnectionState.REMOTE_CLOSING
            ):
                self._write(ws.send(event))

    def _write(self, data: bytes) -> None:
        """Write ``data`` within the write timeout; past it (or on error) the connection is closed."""
        try:
            _send_all(self._sock, data)
        except OSError as exc:
            self._lost = True
            self._sock.close()
            raise WebSocketClosed(f"write failed: {exc or type(exc).__name__}") from exc

    def _recv(self) -> bytes:
        """The next bytes from the client (``b""`` at EOF or when the connection is gone)."""
        sock = self._sock
        if type(sock) is _PLAIN_GEVENT_SOCKET:
            try:
                data = _recv_untimed(sock, RECV_SIZE, self._drained)
            except OSError:
                return b""
            self._drained = len(data) < RECV_SIZE
            return data
        while True:  # TLS: its recv decrypts
            try:
                return sock.recv(RECV_SIZE)
            except TimeoutError:
                continue
            except OSError:
                return b""

    def _go_away(self) -> None:
        # From the server's greenlet at the drain's start, for every WebSocket:
        # it must not block, and a greenlet each costs (10,000 of them took
        # 0.5 s). The Close goes out here when nobody is writing and the kernel
        # takes it whole, as it nearly always does; else a greenlet sends it.
        lock = self._send_lock
        if not lock.acquire(blocking=False):
            gevent.spawn(self._send_close, _GOING_AWAY, GOING_AWAY_REASON)
            return
        try:
            data = self._close_bytes(_GOING_AWAY, GOING_AWAY_REASON)
        except BaseException:
            lock.release()
            raise
        if data is None:
            lock.release()
            return
        _write_now_or_soon(self._sock, data, lock)

    def finish(self) -> None:
        """The handler returned: complete the closing handshake (bounded), then close the connection."""
        self._upgrade = None
        if not self._opened:
            return
        conn = self._conn
        assert conn is not None
        try:
            if self._state_now() is ConnectionState.OPEN and not self._failed:
                self._send_close(1000, "")
            if not self._lost and self._state_now() is not ConnectionState.CLOSED:
                self._await_close(conn.config.linger_timeout)
        finally:
            self._lost = True
            self._sock.close()
            self._websockets.count_close(self.close_code or _ABNORMAL)
            if self._going_away is not None:
                self._going_away.finish()
                # conn -> promise -> this session -> conn: not a cycle left for the collector.
                conn.going_away = self._going_away = None

    def _await_close(self, seconds: float) -> None:
        """Read until the client's Close (or EOF), for at most ``seconds``."""
        with gevent.Timeout(seconds, False):
            while not self._failed:
                # Messages that cross our Close are dropped.
                got = self._pump()
                if got is _CLOSED:
                    break
                if got is not None:
                    continue
                data = self._recv()
                if not data:
                    return
                self._buffer += data
            if self._failed or self._state_now() is not ConnectionState.CLOSED:
                # Nothing more is parsed: wait for the client to hang up.
                while self._recv():
                    pass


class _FrameCounter:
    """Counts the whole messages in one direction of a WebSocket the application's library speaks.

    It reads frame heads only (payloads are skipped, never copied), keeping
    across calls the bytes left of the current frame and a head split between
    two reads; it notes the code of the first Close frame.
    """

    __slots__ = ("_pending", "_skip", "close_code")

    def __init__(self) -> None:
        self._skip = 0  # payload bytes of the current frame still to come
        self._pending = b""  # the start of a frame head split between two calls
        #: The code of the first Close frame seen (1005 for a Close without one), or None.
        self.close_code: Optional[int] = None

    def feed(self, data: bytes) -> int:
        """The messages that ``data`` (the next bytes of the stream) completes."""
        size = len(data)
        if self._skip >= size:
            self._skip -= size
            return 0
        if self._pending:
            data = self._pending + data
            size = len(data)
            self._pending = b""
        messages = 0
        position, self._skip = self._skip, 0
        while True:
            have = size - position
            if have < 2:
                break
            first, second = data[position], data[position + 1]
            length, head = second & 0x7F, 2
            if length == 126:
                if have < 4:
                    break
                length, head = (data[position + 2] << 8) | data[position + 3], 4
            elif length == 127:
                if have < 10:
                    break
                length, head = int.from_bytes(data[position + 2 : position + 10], "big"), 10
            if second & 0x80:
                head += 4
            opcode = first & 0x0F
            closing = opcode == 0x8
            if have < head + (2 if closing and length >= 2 else 0):
                break
            if opcode < 0x3:
                if first & 0x80:  # FIN: the last (or only) frame of a message
                    messages += 1
            elif closing and self.close_code is None:
                if length < 2:
                    self.close_code = int(CloseReason.NO_STATUS_RCVD)
                else:
                    code = data[position + head : position + head + 2]
                    if second & 0x80:
                        mask = data[position + head - 4 : position + head - 2]
                        code = bytes((code[0] ^ mask[0], code[1] ^ mask[1]))
                    self.close_code = (code[0] << 8) | code[1]
            end = position + head + length
            if end > size:
                self._skip = end - size
                return messages
            position = end
        if position < size:
            self._pending = bytes(data[position:])
        return messages


class TakenSocket:
    """``environ['gunicorn.socket']`` on a WebSocket upgrade: the connection, for the application's library.

    The first use hijacks the connection (HIJACKED from then on). Writes are
    serialised with the server's Close 1001, and dropped after it; ``close()``
    ends the WebSocket for the server.
    """

    __slots__ = (
        "_close_sent",
        "_closed",
        "_drained",
        "_going_away",
        "_inbound",
        "_lock",
        "_outbound",
        "_received",
        "_response_head",
        "_sock",
        "_upgrade",
        "_websockets",
    )

    def __init__(self, upgrade: _Upgrade) -> None:
        self._upgrade = upgrade
        self._sock: Any = None
        self._received = b""
        # Made when the application takes the socket: most upgrades are served
        # through wsgi.websocket, with this object left unused in the environ.
        self._lock: Semaphore
        self._inbound: _FrameCounter
        self._outbound: _FrameCounter
        self._going_away: Optional[GoingAway] = None
        self._websockets = upgrade.websockets  # the counters
        # The end of the application's 101 response head, searched for across
        # writes (None once found): frames come after it.
        self._response_head: Optional[bytes] = b""
        self._close_sent = False
        self._closed = False
        self._drained = False  # the last read emptied the socket

    def _take(self) -> Any:
        sock = self._sock
        if sock is None:
            upgrade = self._upgrade
            sock, self._received = upgrade.take("app")
            self._lock = Semaphore()
            self._inbound = _FrameCounter()
            self._outbound = _FrameCounter()
            self._sock = sock
            conn = upgrade.conn
            conn.response_status = "101 Switching Protocols"
            self._going_away = GoingAway(self._go_away)
            conn.server.add_going_away(conn, self._going_away)
        return sock

    def recv(self, size: int, flags: int = 0) -> bytes:
        sock = self._take()
        if self._received:
            data, self._received = self._received[:size], self._received[size:]
        elif not flags and type(sock) is _PLAIN_GEVENT_SOCKET:
            data = _recv_untimed(sock, size, self._drained)
            self._drained = len(data) < size
        else:
            while True:
                try:
                    data = sock.recv(size, flags)
                    break
                except TimeoutError:
                    continue  # the timeout is for writes
        if data and not flags & gsocket.MSG_PEEK:
            self._websockets.messages_received += self._inbound.feed(data)
        return data

    def send(self, data: bytes, flags: int = 0) -> int:
        """Send all of ``data`` (a frame is never left half-written); its length."""
        self.sendall(data, flags)
        return len(data)

    def sendall(self, data: bytes, flags: int = 0) -> None:
        sock = self._take()
        with self._lock:
            if self._close_sent:
                return  # after the server's Close, nothing may follow (RFC 6455 5.5.1)
            try:
                _send_all(sock, data) if not flags else sock.sendall(data, flags)
            except OSError:
                self.close()  # a client that stops reading: the write timeout ends it
                raise
            self._count_sent(data)

    def _count_sent(self, data: bytes) -> None:
        head = self._response_head
        if head is not None:
            head += data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self._response_head = head[-3:]
                return
            self._response_head = None
            data = head[end + 4 :]
        self._websockets.messages_sent += self._outbound.feed(data)

    def fileno(self) -> int:
        return int(self._take().fileno())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._websockets.count_close(self._inbound.close_code or _ABNORMAL)
        self._upgrade.release()
        if self._going_away is not None:
            self._going_away.finish()
            self._upgrade.conn.going_away = self._going_away = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._take(), name)

    def _go_away(self) -> None:
        # As WebSocket._go_away: at once when the socket is free, else in a greenlet.
        lock = self._lock
        if not lock.acquire(blocking=False):
            gevent.spawn(self._send_going_away)
            return
        if self._close_sent or self._closed or self._sock is None:
            lock.release()
            return
        self._close_sent = True
        _write_now_or_soon(self._sock, _close_frame(int(CloseReason.GOING_AWAY), GOING_AWAY_REASON), lock)

    def _send_going_away(self) -> None:
        with self._lock:
            if self._close_sent or self._closed:
                return
            self._close_sent = True
            try:
                self._sock.sendall(_close_frame(int(CloseReason.GOING_AWAY), GOING_AWAY_REASON))
            except OSError:
                pass
