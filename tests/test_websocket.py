"""WebSockets in-process: real clients against ``wsgi.websocket``, flask-sock and Flask-SocketIO.

The server runs in a thread (``tests.helpers.ServerThread``); clients are
websocket-client, websockets (its sync client), python-socketio's client, and
``tests.websocket_helpers.RawWebSocket`` for the bytes no library will send.
"""

from __future__ import annotations

import gc
import logging
import socket
import struct
import threading
import weakref
import zlib
from typing import Any, Callable

import pytest
import socketio
import websocket
from websockets.sync.client import connect as websockets_connect

from gshutdown import Config, ConnState
from tests.apps.websockets import flask_sock_app, raw_echo, socketio_app
from tests.helpers import ServerThread, read_response, wait_until
from tests.test_connection import cyclic_garbage_from_gshutdown
from tests.tls_helpers import TLSFiles
from tests.websocket_helpers import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    RawWebSocket,
    close_frame,
    frame,
    handshake_request,
)

Serve = Callable[..., ServerThread]


def ws_url(st: ServerThread, path: str = "/") -> str:
    return f"ws://127.0.0.1:{st.port}{path}"


def hijacked(st: ServerThread) -> int:
    return int(st.call(lambda: st.server.registry.counts()["hijacked"]))


# -- wsgi.websocket, the server speaking the protocol ------------------------------------------


def test_wsgi_websocket_echo_with_websocket_client(serve: Serve) -> None:
    st = serve(raw_echo)
    ws = websocket.create_connection(ws_url(st), timeout=10)
    try:
        ws.send("hello, ünïcode")
        assert ws.recv() == "hello, ünïcode"
        ws.send_binary(b"\x00\xffbinary")
        assert ws.recv() == b"\x00\xffbinary"
        # A fragmented message comes back whole.
        ws.send_frame(websocket.ABNF.create_frame("frag", websocket.ABNF.OPCODE_TEXT, fin=0))
        ws.send_frame(websocket.ABNF.create_frame("ment", websocket.ABNF.OPCODE_CONT, fin=0))
        ws.send_frame(websocket.ABNF.create_frame("ed", websocket.ABNF.OPCODE_CONT, fin=1))
        assert ws.recv() == "fragmented"
        ws.ping(b"are you there")
        opcode, pong = ws.recv_data(control_frame=True)
        assert (opcode, pong) == (websocket.ABNF.OPCODE_PONG, b"are you there")
    finally:
        ws.close()


def test_wsgi_websocket_with_websockets_negotiates_permessage_deflate(serve: Serve) -> None:
    st = serve(raw_echo)
    with websockets_connect(ws_url(st), max_size=None) as ws:
        assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
        big = "compressible " * 50_000
        ws.send(big)
        assert ws.recv() == big
        ws.send(b"\x01" * 100_000)
        assert ws.recv() == b"\x01" * 100_000


def test_the_servers_compressed_messages_inflate_with_a_full_window_and_keep_their_context(serve: Serve) -> None:
    """The server compresses with a smaller window and memory level than zlib's defaults: any client inflates it."""
    st = serve(raw_echo)
    client = RawWebSocket(st.address)
    client.sock.sendall(handshake_request(extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    head = client.read_head()
    assert b"permessage-deflate" in head, head
    inflater = zlib.decompressobj(-15)  # what a client that offered nothing special uses
    # Repeats far apart (beyond a 2 KiB window) and close together; the same message twice.
    far = ("".join(chr(65 + (i * 7) % 26) for i in range(3000)) * 3).encode()
    chat = b'{"type": "chat", "user": "ann", "text": "hello hello hello"}'
    sizes = []
    for message in (far, chat, chat, b"x" * 70_000):
        client.send(frame(TEXT, message))
        assert client._need(2)
        assert client.buffer[0] & 0x40, "RSV1: the message is compressed"
        opcode, payload = client.read_frame() or (None, b"")
        assert opcode == TEXT
        assert inflater.decompress(payload + b"\x00\x00\xff\xff") == message
        sizes.append(len(payload))
    assert sizes[2] < sizes[1]  # the context is kept between messages
    assert sizes[0] < len(far) // 2 and sizes[3] < 1000


def test_a_websocket_is_a_hijacked_connection_of_the_server(serve: Serve) -> None:
    st = serve(raw_echo)
    ws = websocket.create_connection(ws_url(st), timeout=10)
    try:
        ws.send("x")
        assert ws.recv() == "x"
        assert hijacked(st) == 1
        (conn_id,) = st.conn_ids()
        assert st.states_of(conn_id) == [ConnState.NEW, ConnState.ACTIVE, ConnState.HIJACKED]
    finally:
        ws.close()
    # Closed by the client: no longer tracked.
    wait_until(lambda: hijacked(st) == 0)


def test_plain_request_to_a_websocket_app_is_plain_http(serve: Serve) -> None:
    st = serve(raw_echo)
    sock = st.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = read_response(sock)
    assert (status, body) == (200, b"not a websocket\n")


def test_frames_split_and_coalesced_arrive_whole_and_in_order(serve: Serve) -> None:
    st = serve(raw_echo)
    client = RawWebSocket(st.address).open()
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    big = bytes(range(256)) * 300  # a 64-bit length
    wire = (
        frame(TEXT, b"first")
        + frame(TEXT, b"frag", fin=False)
        + frame(PING, b"in between")  # a control frame inside a fragmented message
        + frame(CONTINUATION, b"mented")
        + frame(BINARY, b"")
        + frame(BINARY, big)
        + frame(TEXT, "ünï".encode())
    )
    for start in range(0, 40):  # the first frames a byte at a time, then the rest at once
        client.send(wire[start : start + 1])
    client.send(wire[40:])
    got = [client.read_frame() for _ in range(6)]
    assert got == [
        (TEXT, b"first"),
        (PONG, b"in between"),
        (TEXT, b"fragmented"),
        (BINARY, b""),
        (BINARY, big),
        (TEXT, "ünï".encode()),
    ]


def test_one_frame_declared_over_the_limit_gets_1009_before_its_payload(serve: Serve) -> None:
    st = serve(raw_echo, max_websocket_message=1000)
    client = RawWebSocket(st.address).open()
    client.send(frame(BINARY, b"z" * 5000)[:100])  # the head says 5,000 bytes: no need to wait for them
    assert client.read_close_code() == 1009


def test_a_wsgi_websocket_leaves_no_cyclic_garbage(serve: Serve) -> None:
    # (flask-sock makes a class per request, closing over its socket: that cycle is its own.)
    refs: list[weakref.ref[Any]] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        refs.append(weakref.ref(environ["gshutdown.connection"]))
        return raw_echo(environ, start_response)

    st = serve(app)
    gc.collect()
    gc.disable()
    try:
        client = RawWebSocket(st.address).open()
        client.send(frame(TEXT, b"x"))
        assert client.read_frame() == (TEXT, b"x")
        client.send(close_frame())
        assert client.read_close_code() == 1000
        assert client.frames_until_eof() == []
        wait_until(lambda: refs and refs[0]() is None)
        assert cyclic_garbage_from_gshutdown() == []
    finally:
        gc.enable()


def test_websockets_drained_by_a_shutdown_are_freed_by_then(serve: Serve) -> None:
    """The shutdown's list of WebSockets told to go away does not outlive its wait (it held every connection)."""
    refs: list[weakref.ref[Any]] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        refs.append(weakref.ref(environ["gshutdown.connection"]))
        return raw_echo(environ, start_response)

    st = serve(app)
    clients = [RawWebSocket(st.address).open() for _ in range(3)]
    for client in clients:
        client.send(frame(TEXT, b"x"))
        assert client.read_frame() == (TEXT, b"x")
    gc.collect()
    gc.disable()  # freed by reference counting, as soon as nothing holds them
    try:
        future = st.shutdown_async(10)
        for client in clients:
            assert client.read_close_code() == 1001
            client.send(close_frame(1001))
            assert client.frames_until_eof() == []
        assert future.result(20).websockets_closed == 3
        assert [ref() for ref in refs] == [None, None, None]
    finally:
        gc.enable()


def test_wss_echo_and_drain_over_tls(serve: Serve, tls_files: TLSFiles) -> None:
    st = serve(raw_echo, certfile=str(tls_files.cert), keyfile=str(tls_files.key))
    ws = websocket.create_connection(
        f"wss://127.0.0.1:{st.port}/", timeout=10, sslopt={"ca_certs": str(tls_files.cert), "check_hostname": False}
    )
    ws.send("over tls")
    assert ws.recv() == "over tls"
    future = st.shutdown_async(10)
    opcode, payload = ws.recv_data(control_frame=True)
    assert (opcode, struct.unpack("!H", payload[:2])[0]) == (websocket.ABNF.OPCODE_CLOSE, 1001)
    ws.close()
    assert future.result(20).websockets_closed == 1


@pytest.mark.parametrize("fragmented_first", [False, True], ids=["whole-frames", "after-a-fragmented-message"])
def test_pings_and_the_clients_closing_handshake(serve: Serve, fragmented_first: bool) -> None:
    """Pings answered, pongs ignored, the client's Close echoed once with its code and reason, then EOF.

    Whole frames are handled by the server itself; a fragmented message hands
    the WebSocket to wsproto for good: both must answer alike.
    """
    st = serve(raw_echo)
    client = RawWebSocket(st.address).open()
    if fragmented_first:
        client.send(frame(TEXT, b"frag", fin=False) + frame(CONTINUATION, b"ment"))
        assert client.read_frame() == (TEXT, b"fragment")
    client.send(frame(PING, b"are you there"))
    assert client.read_frame() == (PONG, b"are you there")
    client.send(frame(PONG, b"unasked") + frame(PING, b"") + frame(TEXT, b"still open"))
    assert client.read_frame() == (PONG, b"")
    assert client.read_frame() == (TEXT, b"still open")
    client.send(close_frame(4000, "bye ü".encode()))
    assert client.read_frame() == (CLOSE, struct.pack("!H", 4000) + "bye ü".encode())
    assert client.frames_until_eof() == []


def test_an_empty_close_is_answered_with_an_empty_close(serve: Serve) -> None:
    st = serve(raw_echo)
    client = RawWebSocket(st.address).open()
    client.send(frame(CLOSE, b""))
    assert client.read_frame() == (CLOSE, b"")
    assert client.frames_until_eof() == []


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", 1002),  # one byte: no room for a code
        (struct.pack("!H", 999), 1002),
        (struct.pack("!H", 1005), 1002),  # never sent on the wire
        (struct.pack("!H", 2999), 1002),  # reserved
        (struct.pack("!H", 5000), 1002),
        (struct.pack("!H", 1000) + b"\xff bad reason", 1007),
    ],
    ids=["one-byte", "999", "1005", "2999", "5000", "bad-utf8-reason"],
)
def test_a_malformed_close_fails_the_websocket(serve: Serve, payload: bytes, code: int) -> None:
    st = serve(raw_echo)
    client = RawWebSocket(st.address).open()
    client.send(frame(CLOSE, payload))
    assert client.read_close_code() == code


def test_shutdown_after_a_fragmented_message_sends_one_1001(serve: Serve) -> None:
    """Once wsproto has the WebSocket, the server's Close goes through it: once, and the reply completes it."""
    st = serve(raw_echo)
    client = RawWebSocket(st.address).open()
    client.send(frame(BINARY, b"a", fin=False) + frame(CONTINUATION, b"b"))
    assert client.read_frame() == (BINARY, b"ab")
    future = st.shutdown_async(10)
    assert client.read_frame() == (CLOSE, struct.pack("!H", 1001) + b"server shutting down")
    client.send(close_frame(1001))
    assert client.frames_until_eof() == []
    result = future.result(20)
    assert (result.clean, result.websockets_closed, result.websockets_forced) == (True, 1, 0)


# -- bad input ----------------------------------------------------------------------------------


def test_unmasked_client_frame_gets_1002(serve: Serve) -> None:
    st = serve(raw_echo)
    client = RawWebSocket(st.address).open()
    client.send(frame(TEXT, b"hello", masked=False))
    assert client.read_close_code() == 1002


def test_invalid_utf8_text_gets_1007(serve: Serve) -> None:
    st = serve(raw_echo)
    client = RawWebSocket(st.address).open()
    client.send(frame(TEXT, b"\xff\xfe not utf-8"))
    assert client.read_close_code() == 1007


def test_oversize_message_gets_1009_fragments_counted(serve: Serve) -> None:
    st = serve(raw_echo, max_websocket_message=1000)
    client = RawWebSocket(st.address).open()
    client.send(frame(BINARY, b"a" * 600))
    assert client.read_frame() == (BINARY, b"a" * 600)  # under the limit: echoed
    client.send(frame(BINARY, b"b" * 600, fin=False))
    client.send(frame(CONTINUATION, b"b" * 600))
    assert client.read_close_code() == 1009


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (handshake_request(key="not base64!"), 400),
        (handshake_request(key="c2hvcnQ="), 400),  # base64, but not 16 bytes
        (handshake_request().replace(b"Sec-WebSocket-Key", b"X-Nothing"), 400),
        (handshake_request().replace(b"GET /", b"POST /"), 400),
        (handshake_request(version="8"), 426),
    ],
    ids=["key-not-base64", "key-not-16-bytes", "no-key", "not-get", "version-8"],
)
def test_malformed_handshake_is_refused_before_the_app(serve: Serve, request_bytes: bytes, status: int) -> None:
    called = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        called.append(environ)
        return raw_echo(environ, start_response)

    st = serve(app)
    sock = st.connect()
    sock.sendall(request_bytes)
    got, headers, _ = read_response(sock)
    assert got == status
    if status == 426:
        assert headers["sec-websocket-version"] == "13"
    assert called == []
    assert hijacked(st) == 0


def test_client_that_stops_reading_is_ended_by_the_write_timeout(serve: Serve) -> None:
    st = serve(raw_echo, write_timeout=0.5)
    client = RawWebSocket(st.address)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.open("/push")  # the server sends until the socket is full, and then some
    wait_until(lambda: hijacked(st) == 1)
    # The server gave up on it (and closed it): no longer tracked.
    wait_until(lambda: hijacked(st) == 0, timeout=10)
    assert st.call(lambda: st.server.handler.websockets.open) == 0
    client.close()


def test_max_websockets_leaves_room_for_plain_http(serve: Serve) -> None:
    st = serve(raw_echo, max_connections=4, max_websockets=2)
    open_ones = [RawWebSocket(st.address).open() for _ in range(2)]
    refused = st.connect()
    refused.sendall(handshake_request())
    status, _, _ = read_response(refused)
    assert status == 503
    plain = st.connect()
    plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(plain)[0] == 200
    # A slot freed is a slot for the next one.
    open_ones[0].send(close_frame())
    assert open_ones[0].read_close_code() == 1000
    wait_until(lambda: st.call(lambda: st.server.handler.websockets.open) == 1)
    RawWebSocket(st.address).open()


def test_max_websockets_must_leave_a_slot_for_http() -> None:
    with pytest.raises(ValueError, match="max_websockets"):
        Config(max_connections=10, max_websockets=10)
    assert Config(max_connections=1000).websocket_limit == 900
    assert Config(max_connections=None).websocket_limit is None
    assert Config(max_connections=1).websocket_limit == 0


# -- simple-websocket (flask-sock) on gunicorn.socket -------------------------------------------


def test_flask_sock_with_websocket_client_and_websockets(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    st = serve(flask_sock_app)
    ws = websocket.create_connection(ws_url(st, "/echo"), timeout=10)
    ws.send("one")
    assert ws.recv() == "one"
    assert hijacked(st) == 1
    ws.close()
    with websockets_connect(ws_url(st, "/echo")) as ws2:
        ws2.send(b"two")
        assert ws2.recv() == b"two"
    wait_until(lambda: hijacked(st) == 0)
    # flask-sock ends with StopIteration: quiet, no 500, no error logged.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_flask_sock_end_writes_nothing_after_the_close_handshake(serve: Serve) -> None:
    st = serve(flask_sock_app)
    client = RawWebSocket(st.address).open("/echo")
    client.send(frame(TEXT, b"hi"))
    assert client.read_frame() == (TEXT, b"hi")
    client.send(close_frame(1000))
    frames = client.frames_until_eof()
    # The library's Close reply, then EOF: no HTTP response, no 500.
    assert [opcode for opcode, _ in frames] == [CLOSE]
    assert client.buffer == b""


# -- Flask-SocketIO with python-socketio's client ---------------------------------------------


def test_flask_socketio_websocket_transport(serve: Serve) -> None:
    st = serve(socketio_app)
    client = socketio.Client(reconnection=False)
    echoed = threading.Event()
    got: list[Any] = []

    @client.on("echoed")
    def on_echoed(data: Any) -> None:
        got.append(data)
        echoed.set()

    client.connect(f"http://127.0.0.1:{st.port}", transports=["websocket"], wait_timeout=10)
    try:
        assert client.transport() == "websocket"
        assert client.call("echo", {"n": 1}, timeout=10) == {"n": 1}
        client.emit("reply", "pong")
        assert echoed.wait(10)
        assert got == ["pong"]
        assert hijacked(st) == 1
    finally:
        client.disconnect()
    wait_until(lambda: hijacked(st) == 0)


# -- graceful shutdown ----------------------------------------------------------------------------


@pytest.mark.parametrize("app", [raw_echo, flask_sock_app], ids=["wsgi.websocket", "flask-sock"])
def test_shutdown_sends_one_1001_and_waits_for_the_closing_handshakes(serve: Serve, app: Any) -> None:
    st = serve(app)
    path = "/echo" if app is flask_sock_app else "/"
    clients = [RawWebSocket(st.address).open(path) for _ in range(5)]
    for client in clients:
        client.send(frame(TEXT, b"before"))
        assert client.read_frame() == (TEXT, b"before")
    wait_until(lambda: hijacked(st) == 5)
    future = st.shutdown_async(10)
    for client in clients:
        opcode, payload = client.read_frame() or (None, b"")
        assert (opcode, struct.unpack("!H", payload[:2])[0]) == (CLOSE, 1001)
        client.send(close_frame(1001))
    for client in clients:
        # Nothing but EOF after the one Close: no second Close, no data.
        assert client.frames_until_eof() == []
    result = future.result(20)
    assert (result.clean, result.websockets_closed, result.websockets_forced) == (True, 5, 0)


def test_shutdown_forces_websockets_that_never_answer(serve: Serve) -> None:
    st = serve(raw_echo)
    silent = RawWebSocket(st.address).open()
    polite = RawWebSocket(st.address).open()
    wait_until(lambda: hijacked(st) == 2)
    future = st.shutdown_async(1.0)
    assert polite.read_close_code() == 1001
    polite.send(close_frame(1001))
    assert silent.read_close_code() == 1001  # and it never answers
    result = future.result(20)
    assert (result.clean, result.websockets_closed, result.websockets_forced) == (False, 1, 1)
    assert silent.frames_until_eof() == []


def test_upgrade_during_shutdown_gets_503(serve: Serve) -> None:
    st = serve(raw_echo)
    sock = st.connect()
    keep = RawWebSocket(st.address).open()  # holds the shutdown open
    wait_until(lambda: hijacked(st) == 1)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[0] == 200  # kept alive, so it can ask again during the drain
    future = st.shutdown_async(10)
    assert keep.read_close_code() == 1001
    sock.sendall(handshake_request())
    assert read_response(sock)[0] == 503
    keep.send(close_frame(1001))
    assert future.result(20).websockets_closed == 1
