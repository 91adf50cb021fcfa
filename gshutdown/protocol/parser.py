"""Request parsing: httptools (llhttp) behind a pull interface.

(Over 500 lines: one parser class around llhttp's callbacks, with the limits
and framing checks that must run inside them; the corpus in
``tests/conformance`` covers it whole.)

Strategy: llhttp is a push parser. It calls back for every request it finds in
whatever bytes it is given, pipelined ones included. The callbacks here do as
little as possible: they turn what llhttp reports into events on a queue, and
the connection pulls events one at a time with ``next_event()``, feeding more
bytes only when the queue runs dry. So a pipelined request waits on the queue
until the response before it is done, and a request body is read from the
socket only as fast as the application consumes it.

Bytes are handed to llhttp in slices (``FEED_SLICE``), and the next slice
only once the events of the last one are consumed, so a flood of pipelined
requests in one read queues the requests of one slice, not of the whole read
(a request event weighs about 20 times the bytes of a minimal request). A
Content-Length body is the exception: its remaining bytes go in whole, so a
body read stays one event per read.

A chunked body's pieces are joined into one ``Data`` per slice fed, so a
body of small chunks costs one event per slice rather than one per chunk.
What each chunk still costs (three callbacks) is bounded per byte: beyond
``FREE_CHUNKS`` chunks, a body must bring ``min_average_chunk_size`` bytes of
data per chunk on average, else 400. Go bounds the bytes of chunk framing per
byte of data (CVE-2023-39326: 16 bytes per chunk plus twice its data, net/http
``chunkedReader``), picohttpparser the share of framing in a body (80%, past
100 KB), pekko-http the number of chunks (``max-chunk-count``); this bounds the
number of chunks per byte of data, which is what costs CPU here (about 0.4 us
a chunk, against 0.5 us per 64 KiB of a Content-Length body). Real clients
send chunks of KiBs (curl and Go's client a buffer at a time): 64 bytes on
average, with the first 1,024 chunks free whatever their size, is far below
them, and a body of 1-byte chunks is refused after about 1 KiB. A client that
sends each item of an iterable as a chunk (requests, http.client) passes with
items of 64 bytes or more; a stream of shorter lines, one chunk each, is
refused past its first 1,024 lines.

llhttp already enforces RFC 9112 framing (Content-Length with
Transfer-Encoding, duplicate Content-Length, chunk syntax, obs-fold, bytes not
allowed in field names or values). This layer adds what llhttp leaves to its
caller: the HTTP versions we speak, the Host rule, the request-target form
each method may use, the transfer codings we implement, and size limits on
the head and the body.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Optional, Union

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

#: Bytes given to llhttp at a time outside a Content-Length body: at most
#: about 450 minimal pipelined requests are queued per connection.
FEED_SLICE = 8 * 1024
#: The same inside a chunked body, where a slice ends up as one ``Data``.
CHUNKED_FEED_SLICE = 64 * 1024
#: Chunks in one slice of a chunked body beyond which the next slices are
#: ``FEED_SLICE`` long, until one has fewer: the parsing done between two
#: events stays short (about 0.5 ms per 1,024 chunks), so the caller can let
#: other work run between them (a 64 KiB slice of 1-byte chunks is 11,000).
DENSE_SLICE_CHUNKS = 1024
#: Chunks any chunked body may have, whatever their size (see ``min_average_chunk_size``).
FREE_CHUNKS = 1024
#: Bytes of data a chunked body must bring, on average, per chunk beyond ``FREE_CHUNKS``.
DEFAULT_MIN_AVERAGE_CHUNK_SIZE = 64

# Events without fields are immutable: one instance serves every request.
_END_OF_MESSAGE = EndOfMessage()
# Builds a Request from a tuple of its fields without the Python-level
# __new__ a named tuple's constructor runs (a frame per request).
_new_request = tuple.__new__

# RFC 3986 host [":" port]: an IP literal in brackets, or a reg-name /
# IPv4 address (unreserved, pct-encoded, sub-delims); empty is allowed (RFC
# 9112 3.2). No userinfo, no space, no slash.
_HOST_PORT = re.compile(rb"(?:\[[0-9A-Za-z:.]+\]|(?:[-A-Za-z0-9._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?\Z")
# Authority-form (CONNECT only): host ":" port, both present.
_AUTHORITY_FORM = re.compile(rb"(?:\[[0-9A-Za-z:.]+\]|(?:[-A-Za-z0-9._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+):[0-9]+\Z")
# Host values that passed _HOST_PORT: a server sees a few again and again.
# Bounded, and cleared when full, so made-up values cannot grow it.
_VALID_HOSTS: set[bytes] = set()
_MAX_VALID_HOSTS = 256
# A synthetic head that puts a fresh llhttp into a chunked body; see _rechunk().
_CHUNKED_PRIMER = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"


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
        max_body_size: largest request body accepted, in bytes (else 413:
            at once for a Content-Length, when it is passed for a chunked
            body); None for no limit.
        min_average_chunk_size: bytes of data a chunked body must bring per
            chunk, on average, beyond its first ``FREE_CHUNKS`` chunks (else
            400, at the chunk that breaks it); None for no minimum.
    """

    # Slots, not a __dict__: more than 30 attribute names would overflow
    # CPython's shared instance keys (the limit in 3.11), which turns every
    # parser's attributes into a dict of its own and every attribute access
    # on the hot path into the slow, generic one.
    __slots__ = (
        "__weakref__",
        "_body_left",
        "_chunk_allowance",
        "_chunked_body_size",
        "_content_length",
        "_dense_chunks",
        "_eof_after_unfed",
        "_events",
        "_expect_continue",
        "_field_count",
        "_finished",
        "_has_body",
        "_header_bytes",
        "_headers",
        "_host_count",
        "_in_chunk_line",
        "_in_head",
        "_line_tail",
        "_max_body_size",
        "_max_field_size",
        "_max_header_bytes",
        "_max_header_count",
        "_max_request_line",
        "_min_average_chunk_size",
        "_parser",
        "_pending_body",
        "_priming",
        "_progress",
        "_raw_head_bytes",
        "_rechunking",
        "_transfer_encoding",
        "_tunnelling",
        "_unfed",
        "_upgrade_body_left",
        "_url_len",
        "_url_parts",
        "chunk_count",
        "in_message",
        "tunnel_bytes",
    )

    def __init__(
        self,
        *,
        max_request_line: int = DEFAULT_MAX_REQUEST_LINE,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
        max_field_size: Optional[int] = None,
        max_body_size: Optional[int] = None,
        min_average_chunk_size: Optional[int] = DEFAULT_MIN_AVERAGE_CHUNK_SIZE,
    ) -> None:
        self._max_request_line = max_request_line
        self._max_header_bytes = max_header_bytes
        self._max_header_count = max_header_count
        self._max_field_size = max_field_size if max_field_size is not None else max_header_bytes
        self._max_body_size = max_body_size
        self._min_average_chunk_size = min_average_chunk_size
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[Event] = deque()
        # Chunk data received since the last Data event (see _flush_body()).
        self._pending_body: list[bytes] = []
        # The last slice of a chunked body had many chunks (DENSE_SLICE_CHUNKS).
        self._dense_chunks = False
        self._finished = False  # after an error, close or upgrade: no more parsing
        self._tunnelling = False  # after an upgrade: bytes go to tunnel_bytes
        # Received but not yet given to llhttp (see FEED_SLICE), and whether
        # the peer's EOF came after them.
        self._unfed: Union[bytes, memoryview] = b""
        self._eof_after_unfed = False
        # An Upgrade request's chunked body is due: see _rechunk().
        self._rechunking = False
        # The head being parsed is _CHUNKED_PRIMER's, not the client's.
        self._priming = False
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
        self._body_left: Optional[int] = None  # of a Content-Length body
        self._chunked_body_size: Optional[int] = None  # data bytes of a chunked body so far
        self._in_chunk_line = False  # a chunk-size line (or its extension) is being read
        #: Chunks of the current body so far (its last chunk included).
        self.chunk_count = 0
        # Chunks allowed before the average chunk size is looked at again.
        self._chunk_allowance = FREE_CHUNKS

    # -- the pull interface -------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Give the parser bytes received; ``b""`` means the peer closed."""
        if self._finished:
            if not self._tunnelling:
                return  # after an error or a close nothing more is parsed
            if data:
                self._tunnel(data)
            elif self._upgrade_body_left:
                self._upgrade_body_left = 0
                self._events.append(ConnectionClosed(mid_message=True))
            return
        if self._unfed:
            if data:
                self._unfed = bytes(self._unfed) + data
            else:
                self._eof_after_unfed = True
            self._feed_unfed()
            return
        if not data:
            self._finished = True
            self._events.append(ConnectionClosed(mid_message=self.in_message))
            return
        body_left = self._body_left
        if len(data) <= FEED_SLICE or (body_left is not None and body_left >= len(data)):
            # The usual cases: one request or a few, or a piece of a body.
            self._feed_llhttp(data)
        else:
            self._unfed = memoryview(data)
            self._feed_unfed()

    def _feed_unfed(self) -> None:
        """Feed slices of what is unfed until an event is queued (or all is fed)."""
        events = self._events
        while self._unfed and not events and not self._finished:
            unfed = self._unfed
            body_left = self._body_left
            if body_left is not None:
                size = max(body_left, FEED_SLICE)
            elif self._transfer_encoding is not None and not self._in_head:
                size = FEED_SLICE if self._dense_chunks else CHUNKED_FEED_SLICE
            else:
                size = FEED_SLICE
            self._unfed = unfed[size:]
            chunks_before = self.chunk_count
            self._feed_llhttp(unfed[:size])
            # (Negative when the body ended in the slice: the next body starts afresh.)
            self._dense_chunks = self.chunk_count - chunks_before > DENSE_SLICE_CHUNKS
        if self._finished:
            rest, self._unfed = self._unfed, b""
            if rest and self._tunnelling:
                self._tunnel(bytes(rest))
        if not self._unfed and self._eof_after_unfed:
            self._eof_after_unfed = False
            self.feed(b"")

    def _feed_llhttp(self, data: Union[bytes, memoryview]) -> None:
        progress = self._progress
        line_tail = self._line_tail
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = bytes(data[upgrade.args[0] :])
            if self._rechunking:
                self._rechunk(rest)
                return
            self._finished = self._tunnelling = True
            self._tunnel(rest)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Rejected):
                self._fail(cause.status, cause.reason)
            else:  # pragma: no cover - our callbacks raise nothing else
                self._fail(400, "Bad Request")
        except httptools.HttpParserError as exc:
            self._fail(400, str(exc) or "Bad Request")
        if self._pending_body:
            self._flush_body()
        if self._finished:
            return
        if not self.in_message:
            # Every request in ``data`` is complete (the usual case): nothing
            # partial to check, and the next request line starts afresh.
            self._line_tail = b""
            self._raw_head_bytes = 0
            return
        if self._in_head:
            if type(data) is memoryview:
                data = bytes(data)  # a slice of at most FEED_SLICE bytes
            last_lf = data.rfind(b"\n")
            keep = self._max_request_line + 64
            self._line_tail = data[last_lf + 1 :][-keep:] if last_lf >= 0 else (line_tail + data[-keep:])[-keep:]
            if last_lf >= 0 and self._url_parts:
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
            # head or trailer, or a chunk-size line, only once it is whole,
            # and does not pass chunk extensions on at all): twice the limits
            # without progress, then 431 (a head or trailer field) or 400 (a
            # chunk-size line: that is body framing, not a header).
            self._raw_head_bytes += len(data)
            if self._raw_head_bytes > 2 * (self._max_header_bytes + self._max_request_line):
                if self._in_chunk_line:
                    self._fail(400, "Chunk Extension Too Long")
                else:
                    self._fail(431, "Request Header Fields Too Large")

    def _rechunk(self, rest: bytes) -> None:
        """Parse an Upgrade request's chunked body as an ordinary request's.

        llhttp skips the body of a request with an Upgrade and hands over the
        bytes after the head: a fresh llhttp, put into a chunked body by a
        synthetic head whose event is dropped, de-chunks them instead, and
        goes on with the requests pipelined after it.
        """
        self._rechunking = False
        self._parser = httptools.HttpRequestParser(self)
        self._priming = True
        self._parser.feed_data(_CHUNKED_PRIMER)
        self._unfed = rest + bytes(self._unfed)
        self._feed_unfed()

    @property
    def body_remaining(self) -> int:
        """Bytes of a Content-Length body the caller may read from the stream itself.

        Non-zero only inside such a body with no event waiting. The caller
        reads at most this many bytes and reports them with ``skip_body()``:
        they never pass through llhttp, which would copy every piece once
        more (and scan it) on its way to the application.
        """
        if self._events or self._finished or self._unfed or self._upgrade_body_left or self._rechunking:
            return 0
        return self._body_left or 0

    def skip_body(self, count: int) -> None:
        """Account for ``count`` body bytes (at most ``body_remaining``) the caller read itself.

        Once the body is complete, ``EndOfMessage`` is queued as if llhttp had
        seen it, and a fresh llhttp (which still waits for those bytes) parses
        the next request.
        """
        left = self._body_left = (self._body_left or 0) - count
        if left:
            return
        self._progress += 1
        self._parser = httptools.HttpRequestParser(self)
        self._line_tail = b""
        self._raw_head_bytes = 0
        self._events.append(_END_OF_MESSAGE)
        self.in_message = False
        self._reset_message()

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
        events = self._events
        if events:
            event = events.popleft()
            if not events and self._unfed:
                self._feed_unfed()
            return event
        return None

    def close(self) -> None:
        """Stop parsing for good and let go of llhttp.

        llhttp holds this parser's callbacks and this parser holds llhttp:
        without this, every finished connection is left to the cycle collector.
        """
        self._finished = True
        self._unfed = b""
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
        if self._pending_body:
            self._flush_body()  # the data before the error stays before it
        self._finished = True
        self._events.append(ProtocolError(status, reason))

    def _flush_body(self) -> None:
        """Queue the chunk data received so far as one ``Data``."""
        pending = self._pending_body
        self._events.append(Data(pending[0] if len(pending) == 1 else b"".join(pending)))
        pending.clear()

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
            if value not in _VALID_HOSTS:
                if not _HOST_PORT.match(value):
                    raise _Rejected(400, "Invalid Host")
                if len(_VALID_HOSTS) >= _MAX_VALID_HOSTS:
                    _VALID_HOSTS.clear()
                _VALID_HOSTS.add(value)
        elif lname == b"expect":
            self._expect_continue = value.lower() == b"100-continue"
        elif lname == b"content-length":
            self._has_body = value.strip() not in (b"0", b"")
            self._content_length = int(value) if value.isdigit() else 0
        elif lname == b"transfer-encoding":
            self._has_body = True
            te = self._transfer_encoding
            # Several fields make one list (RFC 9110 5.3).
            self._transfer_encoding = value if te is None else te + b"," + value
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self._priming:
            # _CHUNKED_PRIMER's head: the client's request is already queued.
            self._priming = False
            self._header_bytes = self._url_len = self._field_count = 0
            self._in_chunk_line = True
            return
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _Rejected(400, "Unsupported HTTP Version")
        te = self._transfer_encoding
        if te is not None:
            if version == "1.0":
                # RFC 9112 6.1: the framing of such a message is faulty.
                raise _Rejected(400, "Transfer-Encoding In An HTTP/1.0 Request")
            codings = [c.strip().lower() for c in te.split(b",") if c.strip()]
            if not codings or codings[-1] != b"chunked":
                raise _Rejected(400, "Transfer-Encoding Must End In chunked")  # RFC 9112 6.3
            if len(codings) > 1:
                # Only chunked is implemented; passing the body on still
                # encoded would hand the application bytes it did not ask for.
                raise _Rejected(501, "Transfer-Encoding Not Implemented")  # RFC 9112 6.1
        if self._host_count > 1 or (version == "1.1" and self._host_count == 0):
            raise _Rejected(400, "Exactly One Host Header Required")
        method = parser.get_method()
        target = b"".join(self._url_parts)
        if target[:1] != b"/" or method == b"CONNECT":  # not origin-form, the usual case
            self._check_target(method, target)
        max_body = self._max_body_size
        if max_body is not None and self._content_length > max_body:
            raise _Rejected(413, "Content Too Large")
        if te is not None:
            self._chunked_body_size = 0
        upgrade = parser.should_upgrade()
        if upgrade and self._has_body and method != b"CONNECT":
            if te is None:
                self._upgrade_body_left = self._content_length
            else:
                # RFC 9110 7.8 lets a server ignore Upgrade: it does, rather
                # than tunnel a body still chunked; _rechunk() parses it.
                upgrade = False
                self._rechunking = True
        self._in_head = False
        self._in_chunk_line = te is not None
        if self._content_length and te is None:
            self._body_left = self._content_length
        # Trailer fields get a budget of their own.
        self._header_bytes = self._url_len = self._field_count = 0
        self._events.append(
            _new_request(
                Request,
                (
                    method.decode("latin-1"),
                    target.decode("latin-1"),
                    version,
                    self._headers,
                    parser.should_keep_alive(),
                    self._expect_continue and self._has_body and version == "1.1",
                    upgrade,
                    self._has_body,
                ),
            )
        )

    @staticmethod
    def _check_target(method: bytes, target: bytes) -> None:
        """The request-target form must suit the method (RFC 9112 3.2)."""
        if method == b"CONNECT":
            if not _AUTHORITY_FORM.match(target):
                raise _Rejected(400, "CONNECT Needs An Authority-Form Target")
        elif target[:1] == b"*":
            if method != b"OPTIONS" or target != b"*":
                raise _Rejected(400, "Asterisk-Form Is Only For OPTIONS")
        else:
            # absolute-form: the authority, which replaces Host (RFC 9112
            # 3.2.2), must be a valid host[:port]; userinfo is an error
            # (RFC 9110 4.2.4).
            rest = target.partition(b"://")[2]
            end = min((i for i in (rest.find(b"/"), rest.find(b"?"), rest.find(b"#")) if i >= 0), default=len(rest))
            authority = rest[:end]
            if not authority or not _HOST_PORT.match(authority):
                raise _Rejected(400, "Invalid Authority In The Request Target")

    def on_chunk_header(self) -> None:
        self._progress += 1
        self._in_chunk_line = False
        count = self.chunk_count = self.chunk_count + 1
        if count > self._chunk_allowance:
            self._check_chunk_sizes(count)

    def _check_chunk_sizes(self, count: int) -> None:
        """Refuse a body whose chunks are too small on average (see ``min_average_chunk_size``).

        Called only when ``count`` passes the allowance last computed, which
        then grows with the data received: once per chunk only while the
        body is at its minimum.
        """
        minimum = self._min_average_chunk_size
        if minimum is None:
            self._chunk_allowance = 1 << 62
            return
        allowance = self._chunk_allowance = FREE_CHUNKS + (self._chunked_body_size or 0) // minimum
        if count > allowance:
            raise _Rejected(400, "Chunks Too Small")

    def on_chunk_complete(self) -> None:
        self._progress += 1
        self._in_chunk_line = True

    def on_body(self, body: bytes) -> None:
        self._progress += 1
        left = self._body_left
        if left is not None:
            self._body_left = left - len(body)
        elif self._chunked_body_size is not None:
            size = self._chunked_body_size = self._chunked_body_size + len(body)
            max_body = self._max_body_size
            if max_body is not None and size > max_body:
                raise _Rejected(413, "Content Too Large")
            # Joined into one Data when the slice is parsed (_flush_body).
            self._pending_body.append(body)
            return
        self._events.append(Data(body))

    def on_message_complete(self) -> None:
        self._progress += 1
        if self._upgrade_body_left or self._rechunking:
            # llhttp skips an Upgrade request's body: _tunnel() or _rechunk()
            # delivers it, and ends the message.
            return
        if self._pending_body:
            self._flush_body()
        self._events.append(_END_OF_MESSAGE)
        self.in_message = False
        self._reset_message()
