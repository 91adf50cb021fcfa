"""Request parsing: httptools (llhttp) behind a pull interface.

Strategy: llhttp is a push parser. It calls back for every request it finds in
whatever bytes it is given, pipelined ones included. The callbacks here do as
little as possible: they turn what llhttp reports into events on a queue, and
the connection pulls events one at a time with ``next_event()``, feeding more
bytes only when the queue runs dry. So a pipelined request waits on the queue
until the response before it is done, and a request body is read from the
socket only as fast as the application consumes it.

llhttp already enforces RFC 9112 framing (Content-Length with
Transfer-Encoding, duplicate Content-Length, chunk syntax, obs-fold, bytes not
allowed in field names or values). This layer adds what llhttp leaves to its
caller: the HTTP versions we speak, the Host rule, and size limits on the head.
"""

from __future__ import annotations

from collections import deque
from typing import Optional

import httptools

from gshutdown.protocol.events import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    ProtocolError,
    Request,
)

#: Longest request line accepted, in bytes (nginx and Apache: 8 KiB).
DEFAULT_MAX_REQUEST_LINE = 8190
#: Largest request head (line + fields) accepted, in bytes.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
#: Most header fields accepted in one request (gunicorn ``limit_request_fields``).
DEFAULT_MAX_HEADER_COUNT = 100

# Events without fields are immutable: one instance serves every request.
_END_OF_MESSAGE = EndOfMessage()


class _Rejected(Exception):
    """Raised inside a callback to stop llhttp; carries the answer to send."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestParser:
    """Turns the bytes a client sends into a stream of events.

    Args:
        max_request_line: longest request line accepted, in bytes (else 414).
        max_header_bytes: largest head accepted, in bytes (else 431).
        max_header_count: most header fields accepted (else 431).
        max_field_size: longest header field, name and value, in bytes (else
            431); None: only ``max_header_bytes`` bounds it.
    """

    def __init__(
        self,
        *,
        max_request_line: int = DEFAULT_MAX_REQUEST_LINE,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
        max_field_size: Optional[int] = None,
    ) -> None:
        self._max_request_line = max_request_line
        self._max_header_bytes = max_header_bytes
        self._max_header_count = max_header_count
        self._max_field_size = max_field_size if max_field_size is not None else max_header_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[Event] = deque()
        self._finished = False  # after an error, close or upgrade: no more parsing
        #: Bytes received after an upgrade request's head (the tunnelled protocol's).
        self.tunnel_bytes = b""
        # Body bytes still due on an upgrade request (httptools skips them).
        self._upgrade_body_left = 0
        self._progress = 0  # bumped by every callback that completes something
        self._line_tail = b""  # what follows the last LF received (HTTP/0.9 check)
        self._reset_message()
        self.in_message = False

    def _reset_message(self) -> None:
        self._url_parts: list[bytes] = []
        self._url_len = 0
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._in_head = True
        self._raw_head_bytes = 0
        self._host_count = 0
        self._expect_continue = False
        self._has_body = False
        self._field_count = 0
        self._content_length = 0
        self._transfer_encoding: Optional[bytes] = None

    # -- the pull interface -------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Give the parser bytes received; ``b""`` means the peer closed."""
        if self._finished:
            if data:
                self._tunnel(data)
            elif self._upgrade_body_left:
                self._upgrade_body_left = 0
                self._events.append(ConnectionClosed(mid_message=True))
            return
        if not data:
            self._finished = True
            self._events.append(ConnectionClosed(mid_message=self.in_message))
            return
        progress = self._progress
        line_tail = self._line_tail
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._finished = True
            self._tunnel(data[upgrade.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Rejected):
                self._fail(cause.status, cause.reason)
            else:  # pragma: no cover - our callbacks raise nothing else
                self._fail(400, "Bad Request")
        except httptools.HttpParserError as exc:
            self._fail(400, str(exc) or "Bad Request")
        if self._finished:
            return
        if not self.in_message:
            # Every request in ``data`` is complete (the usual case): nothing
            # partial to check, and the next request line starts afresh.
            self._line_tail = b""
            self._raw_head_bytes = 0
            return
        last_lf = data.rfind(b"\n")
        keep = self._max_request_line + 64
        self._line_tail = data[last_lf + 1 :][-keep:] if last_lf >= 0 else (line_tail + data[-keep:])[-keep:]
        if self._in_head and last_lf >= 0 and self._url_parts:
            # llhttp takes a request line with no version for HTTP/0.9 and
            # waits for fields such a client never sends: reject it at once.
            start = data.rfind(b"\n", 0, last_lf)
            line = data[start + 1 : last_lf] if start >= 0 else line_tail + data[:last_lf]
            if line.rstrip(b"\r") == self._parser.get_method() + b" " + b"".join(self._url_parts):
                self._fail(400, "Unsupported HTTP Version")
                return
        if self._progress != progress:
            self._raw_head_bytes = 0
        else:
            # A backstop for a line that never ends (llhttp reports a field,
            # head or trailer, only once it is whole, and buffers it until
            # then): twice the limits without progress, then 431.
            self._raw_head_bytes += len(data)
            if self._raw_head_bytes > 2 * (self._max_header_bytes + self._max_request_line):
                self._fail(431, "Request Header Fields Too Large")

    def _tunnel(self, data: bytes) -> None:
        left = self._upgrade_body_left
        if left:
            body, data = data[:left], data[left:]
            self._events.append(Data(body))
            self._upgrade_body_left = left = left - len(body)
            if not left:
                self._events.append(_END_OF_MESSAGE)
                self.in_message = False
        self.tunnel_bytes += data

    def next_event(self) -> Optional[Event]:
        """The next event, or ``None`` when more bytes must be fed first."""
        if self._events:
            return self._events.popleft()
        return None

    def close(self) -> None:
        """Stop parsing for good and let go of llhttp.

        llhttp holds this parser's callbacks and this parser holds llhttp:
        without this, every finished connection is left to the cycle collector.
        """
        self._finished = True
        self._parser = None  # type: ignore[assignment]

    @property
    def has_events(self) -> bool:
        """True when ``next_event()`` has an event without more bytes."""
        return bool(self._events)

    @property
    def finished(self) -> bool:
        """True once the parser will produce no more requests."""
        return self._finished

    def _fail(self, status: int, reason: str) -> None:
        self._finished = True
        self._events.append(ProtocolError(status, reason))

    # -- llhttp callbacks ---------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = True

    def on_url(self, url: bytes) -> None:
        self._url_len += len(url)
        if self._url_len > self._max_request_line:
            raise _Rejected(414, "URI Too Long")
        self._url_parts.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._progress += 1
        value = value.rstrip(b" \t")  # trailing OWS is not part of the value
        self._header_bytes += len(name) + len(value) + 4
        self._field_count += 1
        if (
            self._header_bytes + self._url_len > self._max_header_bytes
            or self._field_count > self._max_header_count
            or len(name) + len(value) > self._max_field_size
        ):
            raise _Rejected(431, "Request Header Fields Too Large")
        if not self._in_head:
            return  # a trailer field: framing only, not passed on
        lname = name.lower()
        if lname == b"host":
            self._host_count += 1
        elif lname == b"expect":
            self._expect_continue = value.lower() == b"100-continue"
        elif lname == b"content-length":
            self._has_body = value.strip() not in (b"0", b"")
            self._content_length = int(value) if value.isdigit() else 0
        elif lname == b"transfer-encoding":
            self._has_body = True
            self._transfer_encoding = value
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _Rejected(400, "Unsupported HTTP Version")
        if self._host_count > 1 or (version == "1.1" and self._host_count == 0):
            raise _Rejected(400, "Exactly One Host Header Required")
        te = self._transfer_encoding
        if te is not None and te.rsplit(b",", 1)[-1].strip().lower() != b"chunked":
            raise _Rejected(400, "Transfer-Encoding Must End In chunked")  # RFC 9112 6.3
        upgrade = parser.should_upgrade()
        if upgrade and self._has_body and parser.get_method() != b"CONNECT":
            if te is not None:
                raise _Rejected(400, "Upgrade With A Chunked Body")
            self._upgrade_body_left = self._content_length
        self._in_head = False
        # Trailer fields get a budget of their own.
        self._header_bytes = self._url_len = self._field_count = 0
        target = b"".join(self._url_parts).decode("latin-1")
        self._events.append(
            Request(
                parser.get_method().decode("latin-1"),
                target,
                version,
                self._headers,
                # RFC 9112 6.1: HTTP/1.0 with Transfer-Encoding: close after it.
                parser.should_keep_alive() and not (version == "1.0" and te is not None),
                self._expect_continue and self._has_body and version == "1.1",
                upgrade,
                self._has_body,
            )
        )

    def on_body(self, body: bytes) -> None:
        self._progress += 1
        self._events.append(Data(body))

    def on_message_complete(self) -> None:
        self._progress += 1
        if self._upgrade_body_left:
            return  # httptools skips an upgrade request's body: _tunnel() delivers it
        self._events.append(_END_OF_MESSAGE)
        self.in_message = False
        self._reset_message()
