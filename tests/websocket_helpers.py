"""A raw WebSocket client on a blocking socket: the frames exactly as sent, for bad input and counting Closes.

Real client libraries (websocket-client, websockets, python-socketio) are
used where the point is interoperability; this one is for what they will not
send (unmasked frames, invalid UTF-8) and for seeing every frame the server
sends, down to the last byte before EOF.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from typing import Optional

#: Opcodes.
TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def handshake_request(path: str = "/", *, key: Optional[str] = None, extra: str = "", version: str = "13") -> bytes:
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
    ).encode()


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    """A client frame (masked unless told otherwise)."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        head = bytes((first, (0x80 if masked else 0) | length))
    elif length < 65536:
        head = bytes((first, (0x80 if masked else 0) | 126)) + struct.pack("!H", length)
    else:
        head = bytes((first, (0x80 if masked else 0) | 127)) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_frame(code: int = 1000, reason: bytes = b"") -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason)


class RawWebSocket:
    """One client connection: ``open()`` does the handshake; ``read_frame()`` returns (opcode, payload)."""

    def __init__(self, address: tuple[str, int], timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buffer = b""

    def open(self, path: str = "/") -> RawWebSocket:
        self.sock.sendall(handshake_request(path))
        head = self.read_head()
        assert head.startswith(b"HTTP/1.1 101 "), head
        return self

    def read_head(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                break
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    def _need(self, count: int) -> bool:
        while len(self.buffer) < count:
            data = self.sock.recv(65536)
            if not data:
                return False
            self.buffer += data
        return True

    def read_frame(self) -> Optional[tuple[int, bytes]]:
        """The next frame from the server; None at EOF."""
        if not self._need(2):
            return None
        first, second = self.buffer[0], self.buffer[1]
        assert not second & 0x80, "server frames are never masked"
        length, offset = second & 0x7F, 2
        if length == 126:
            self._need(4)
            length, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif length == 127:
            self._need(10)
            length, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
        if not self._need(offset + length):
            return None
        payload = self.buffer[offset : offset + length]
        self.buffer = self.buffer[offset + length :]
        return first & 0x0F, payload

    def read_close_code(self) -> int:
        """Frames until a Close; its code."""
        while True:
            got = self.read_frame()
            assert got is not None, "EOF before a Close frame"
            opcode, payload = got
            if opcode == CLOSE:
                return int(struct.unpack("!H", payload[:2])[0])

    def frames_until_eof(self, timeout: float = 10.0) -> list[tuple[int, bytes]]:
        """Every frame until the server closes the connection."""
        self.sock.settimeout(timeout)
        frames = []
        while True:
            got = self.read_frame()
            if got is None:
                return frames
            frames.append(got)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()
