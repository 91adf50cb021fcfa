"""RequestParser: bytes in, events out, without sockets.

Events are compared with ``is None`` / ``type(...)``: ``EndOfMessage()`` is an
empty named tuple and therefore falsy.
"""

from __future__ import annotations

import itertools
import tracemalloc
from typing import Optional

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gshutdown.protocol import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    ProtocolError,
    Request,
    RequestParser,
)
from gshutdown.protocol.parser import (
    CHUNKED_FEED_SLICE,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_MAX_REQUEST_LINE,
    DEFAULT_MIN_AVERAGE_CHUNK_SIZE,
    DENSE_SLICE_CHUNKS,
    FEED_SLICE,
    FREE_CHUNKS,
)

HOST = b"Host: example.test\r\n"


def drain(parser: RequestParser) -> list[Event]:
    """Every event the parser has queued, in order."""
    out: list[Event] = []
    while (event := parser.next_event()) is not None:
        out.append(event)
    return out


def parse(data: bytes, step: Optional[int] = None, **limits: int) -> tuple[list[Event], RequestParser]:
    """Feed ``data`` whole (or ``step`` bytes at a time) to a new parser."""
    parser = RequestParser(**limits)
    if step is None:
        parser.feed(data)
    else:
        for i in range(0, len(data), step):
            parser.feed(data[i : i + step])
    return drain(parser), parser


def merge_data(events: list[Event]) -> list[Event]:
    """Join adjacent Data events (how a body is cut into Data depends on the feeds)."""
    out: list[Event] = []
    for event in events:
        if type(event) is Data and out and type(out[-1]) is Data:
            out[-1] = Data(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def kinds(events: list[Event]) -> list[str]:
    return [type(event).__name__ for event in events]


def body_of(events: list[Event]) -> bytes:
    return b"".join(event.data for event in events if type(event) is Data)


# -- event kinds ----------------------------------------------------------------


def test_get_request_gives_a_complete_request_then_end_of_message() -> None:
    events, parser = parse(b"GET /path?q=1 HTTP/1.1\r\nHost: example.test\r\nX-Thing: a b\r\n\r\n")
    assert kinds(events) == ["Request", "EndOfMessage"]
    assert events[0] == Request(
        method="GET",
        target="/path?q=1",
        http_version="1.1",
        headers=[("Host", "example.test"), ("X-Thing", "a b")],
        keep_alive=True,
        expect_continue=False,
        upgrade=False,
        has_body=False,
    )
    assert not parser.in_message
    assert not parser.finished
    assert not parser.has_events


def test_no_event_until_the_head_is_complete() -> None:
    parser = RequestParser()
    head = b"GET / HTTP/1.1\r\n" + HOST + b"\r\n"
    for byte in head[:-1]:
        parser.feed(bytes([byte]))
        assert parser.next_event() is None
        assert not parser.has_events
    assert parser.in_message
    parser.feed(head[-1:])
    assert parser.has_events
    assert type(parser.next_event()) is Request
    assert type(parser.next_event()) is EndOfMessage
    assert parser.next_event() is None


def test_header_names_values_order_and_duplicates_are_kept_as_sent() -> None:
    events, _ = parse(
        b"GET / HTTP/1.1\r\nhost: h\r\nX-A: 1\r\nx-a: 2\r\nCookie: c=1\r\nX-Latin: caf\xe9\r\nX-Empty:\r\n\r\n"
    )
    request = events[0]
    assert type(request) is Request
    assert request.headers == [
        ("host", "h"),
        ("X-A", "1"),
        ("x-a", "2"),
        ("Cookie", "c=1"),
        ("X-Latin", "caf\xe9"),
        ("X-Empty", ""),
    ]


def test_whitespace_around_a_field_value_is_not_part_of_it() -> None:
    """RFC 9112 section 5: field-line = field-name ":" OWS field-value OWS."""
    events, _ = parse(b"GET / HTTP/1.1\r\n" + HOST + b"X-Pad: \t padded value \t\r\nX-Tab:\tv\t\r\n\r\n")
    assert type(events[0]) is Request
    assert events[0].headers[1:] == [("X-Pad", "padded value"), ("X-Tab", "v")]


def test_pipelined_requests_come_out_in_order_with_their_bodies() -> None:
    batch = (
        b"POST /1 HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\n\r\nabc"
        b"GET /2 HTTP/1.1\r\n" + HOST + b"\r\n"
        b"PUT /3 HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n"
    )
    events, parser = parse(batch)
    assert kinds(merge_data(events)) == [
        "Request",
        "Data",
        "EndOfMessage",
        "Request",
        "EndOfMessage",
        "Request",
        "Data",
        "EndOfMessage",
    ]
    requests = [event for event in events if type(event) is Request]
    assert [(r.method, r.target, r.has_body) for r in requests] == [
        ("POST", "/1", True),
        ("GET", "/2", False),
        ("PUT", "/3", True),
    ]
    assert [e.data for e in merge_data(events) if type(e) is Data] == [b"abc", b"xy"]
    assert not parser.in_message


def test_content_length_body_fed_byte_by_byte() -> None:
    body = bytes(range(256)) * 3
    parser = RequestParser()
    parser.feed(b"POST /upload HTTP/1.1\r\n" + HOST + b"Content-Length: %d\r\n\r\n" % len(body))
    request = parser.next_event()
    assert type(request) is Request
    assert request.has_body
    received = b""
    for i in range(len(body)):
        assert parser.in_message
        parser.feed(body[i : i + 1])
        event = parser.next_event()
        assert type(event) is Data
        received += event.data
    assert received == body
    assert type(parser.next_event()) is EndOfMessage
    assert not parser.in_message


def test_content_length_zero_has_no_body() -> None:
    events, _ = parse(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 0\r\n\r\n")
    assert kinds(events) == ["Request", "EndOfMessage"]
    assert events[0].has_body is False


@pytest.mark.parametrize("step", [None, 1, 5])
def test_chunked_body_is_dechunked_with_extensions_and_trailers_ignored(step: Optional[int]) -> None:
    data = (
        b"POST /c HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
        b"5;name=value;flag\r\nhello\r\n"
        b'1A;quoted="a b"\r\n' + b"z" * 26 + b"\r\n"
        b"0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n"
        b"GET /next HTTP/1.1\r\n" + HOST + b"\r\n"
    )
    events, parser = parse(data, step)
    merged = merge_data(events)
    assert kinds(merged) == ["Request", "Data", "EndOfMessage", "Request", "EndOfMessage"]
    request = merged[0]
    assert request.has_body
    assert request.headers == [("Host", "example.test"), ("Transfer-Encoding", "chunked")]
    assert merged[1].data == b"hello" + b"z" * 26
    # The trailer fields were not added to either request's headers.
    assert merged[3].headers == [("Host", "example.test")]
    assert merged[3].target == "/next"
    assert not parser.finished


# -- keep-alive, Expect, upgrade, targets -----------------------------------------


@pytest.mark.parametrize(
    ("version", "connection", "expected"),
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Close", False),
        (b"1.1", b"keep-alive", True),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
        (b"1.0", b"Keep-Alive", True),
        (b"1.0", b"close", False),
    ],
)
def test_keep_alive_follows_the_version_default_and_connection_header(
    version: bytes, connection: Optional[bytes], expected: bool
) -> None:
    head = b"GET / HTTP/" + version + b"\r\n" + HOST
    if connection is not None:
        head += b"Connection: " + connection + b"\r\n"
    events, _ = parse(head + b"\r\n")
    assert type(events[0]) is Request
    assert events[0].http_version == version.decode()
    assert events[0].keep_alive is expected


@pytest.mark.parametrize(
    ("version", "framing", "expect", "expected"),
    [
        (b"1.1", b"Content-Length: 4\r\n", b"100-continue", True),
        (b"1.1", b"Content-Length: 4\r\n", b"100-Continue", True),
        (b"1.1", b"Transfer-Encoding: chunked\r\n", b"100-continue", True),
        (b"1.1", b"", b"100-continue", False),
        (b"1.1", b"Content-Length: 0\r\n", b"100-continue", False),
        (b"1.0", b"Content-Length: 4\r\n", b"100-continue", False),
        (b"1.1", b"Content-Length: 4\r\n", b"something-else", False),
        (b"1.1", b"Content-Length: 4\r\n", None, False),
    ],
)
def test_expect_continue_only_for_http11_requests_with_a_body(
    version: bytes, framing: bytes, expect: Optional[bytes], expected: bool
) -> None:
    head = b"POST / HTTP/" + version + b"\r\n" + HOST + framing
    if expect is not None:
        head += b"Expect: " + expect + b"\r\n"
    events, _ = parse(head + b"\r\n")
    assert type(events[0]) is Request
    assert events[0].expect_continue is expected


@pytest.mark.parametrize("step", [None, 1])
def test_upgrade_request_ends_parsing_and_keeps_the_tunnelled_bytes(step: Optional[int]) -> None:
    data = (
        b"GET /chat HTTP/1.1\r\n" + HOST + b"Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"
    )
    events, parser = parse(data, step)
    assert kinds(events) == ["Request", "EndOfMessage"]
    assert events[0].upgrade is True
    assert parser.finished
    assert parser.tunnel_bytes == b"\x81\x05hello"
    # Whatever follows belongs to the new protocol: tunnelled, never parsed.
    parser.feed(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    assert parser.next_event() is None
    assert parser.tunnel_bytes == b"\x81\x05helloGET / HTTP/1.1\r\n" + HOST + b"\r\n"
    parser.feed(b"")
    assert parser.next_event() is None


def test_upgrade_request_body_is_delivered_before_the_tunnel() -> None:
    """An application that ignores ``Upgrade`` (e.g. h2c) must still see the body it declared."""
    events, parser = parse(
        b"POST /form HTTP/1.1\r\n" + HOST + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 5\r\n\r\nhelloPRI"
    )
    merged = merge_data(events)
    assert kinds(merged) == ["Request", "Data", "EndOfMessage"]
    assert merged[0].upgrade is True
    assert merged[1].data == b"hello"
    assert parser.tunnel_bytes == b"PRI"


def test_upgrade_header_without_connection_upgrade_is_an_ordinary_request() -> None:
    events, parser = parse(
        b"GET /a HTTP/1.1\r\n" + HOST + b"Upgrade: websocket\r\n\r\nGET /b HTTP/1.1\r\n" + HOST + b"\r\n"
    )
    assert kinds(events) == ["Request", "EndOfMessage", "Request", "EndOfMessage"]
    assert events[0].upgrade is False
    assert not parser.finished
    assert parser.tunnel_bytes == b""


def test_connect_is_an_upgrade_with_an_authority_form_target() -> None:
    events, parser = parse(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n\x00\x01")
    assert kinds(events) == ["Request", "EndOfMessage"]
    assert events[0].method == "CONNECT"
    assert events[0].target == "db.internal:5432"
    assert events[0].upgrade is True
    assert parser.tunnel_bytes == b"\x00\x01"


@pytest.mark.parametrize(
    "target",
    [b"http://example.test/a/b?c=d#frag", b"https://example.test:8443/", b"*", b"/%2e%2e/x?y=%20"],
)
def test_request_target_is_passed_through_as_sent(target: bytes) -> None:
    method = b"OPTIONS" if target == b"*" else b"GET"
    events, _ = parse(method + b" " + target + b" HTTP/1.1\r\n" + HOST + b"\r\n")
    assert type(events[0]) is Request
    assert events[0].target == target.decode("latin-1")


def test_http10_request_needs_no_host() -> None:
    events, _ = parse(b"GET / HTTP/1.0\r\n\r\n")
    assert kinds(events) == ["Request", "EndOfMessage"]
    assert events[0].headers == []


# -- strict cases -----------------------------------------------------------------

# (request bytes, status, whether the failing request's head is accepted first)
STRICT = {
    "content-length with transfer-encoding": (
        b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        False,
    ),
    "transfer-encoding then content-length": (
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        400,
        False,
    ),
    "conflicting content-length": (
        b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
        False,
    ),
    "content-length not a number": (
        b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 1x\r\n\r\na",
        400,
        False,
    ),
    "bad chunk size": (
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
        400,
        True,
    ),
    "chunk size overflow": (
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 20 + b"\r\n",
        400,
        True,
    ),
    "obs-fold": (b"GET / HTTP/1.1\r\n" + HOST + b"X-Long: a\r\n  b\r\n\r\n", 400, False),
    "NUL in field name": (b"GET / HTTP/1.1\r\n" + HOST + b"X-\x00A: v\r\n\r\n", 400, False),
    "NUL in field value": (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: v\x00w\r\n\r\n", 400, False),
    "CR in field name": (b"GET / HTTP/1.1\r\n" + HOST + b"X-\rA: v\r\n\r\n", 400, False),
    "CR in field value": (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: v\rw\r\n\r\n", 400, False),
    "LF in field value": (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: v\nw\r\n\r\n", 400, False),
    "LF in field name": (b"GET / HTTP/1.1\r\n" + HOST + b"X-\nA: v\r\n\r\n", 400, False),
    "space before colon": (b"GET / HTTP/1.1\r\n" + HOST + b"X-A : v\r\n\r\n", 400, False),
    "missing colon": (b"GET / HTTP/1.1\r\n" + HOST + b"NoColonHere\r\n\r\n", 400, False),
    "HTTP/2.0": (b"GET / HTTP/2.0\r\n" + HOST + b"\r\n", 400, False),
    "HTTP/0.9": (b"GET / HTTP/0.9\r\n" + HOST + b"\r\n", 400, False),
    "HTTP/0.9 simple request": (b"GET /\r\n\r\n", 400, False),
    "HTTP/1.2": (b"GET / HTTP/1.2\r\n" + HOST + b"\r\n", 400, False),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, False),
    "missing Host on 1.1": (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400, False),
    "duplicate Host": (b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400, False),
    "duplicate Host on 1.0": (b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400, False),
    "TLS ClientHello": (
        bytes.fromhex("16030100c4010000c00303") + bytes(range(32)) + b"\x00\x00\x02\x13\x01\x01\x00",
        400,
        False,
    ),
    "SSH banner": (b"SSH-2.0-OpenSSH_9.6\r\n", 400, False),
    "lower-case method": (b"get / HTTP/1.1\r\n" + HOST + b"\r\n", 400, False),
    "space in target": (b"GET /a b HTTP/1.1\r\n" + HOST + b"\r\n", 400, False),
    "bare LF line ends": (b"GET / HTTP/1.1\nHost: example.test\n\n", 400, False),
    "request line too long": (b"GET /" + b"a" * DEFAULT_MAX_REQUEST_LINE + b" HTTP/1.1\r\n" + HOST, 414, False),
    "too many header fields": (
        b"GET / HTTP/1.1\r\n" + HOST + b"".join(b"X-F%d: v\r\n" % i for i in range(DEFAULT_MAX_HEADER_COUNT)) + b"\r\n",
        431,
        False,
    ),
    "head larger than the default 64 KiB": (
        b"GET / HTTP/1.1\r\n" + HOST + b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 1000) for i in range(70)) + b"\r\n",
        431,
        False,
    ),
}


@pytest.mark.parametrize("step", [None, 1000], ids=["whole", "split"])
@pytest.mark.parametrize(("data", "status", "head_first"), STRICT.values(), ids=list(STRICT))
def test_strict_cases_end_in_protocol_error_with_the_right_status(
    data: bytes, status: int, head_first: bool, step: Optional[int]
) -> None:
    events, parser = parse(data, step)
    assert events, "no event at all"
    error = events[-1]
    assert type(error) is ProtocolError, events
    assert error.status == status
    assert error.reason
    expected = ["Request", "ProtocolError"] if head_first else ["ProtocolError"]
    assert kinds([e for e in events if type(e) is not Data]) == expected
    assert parser.finished


def test_after_an_error_no_further_request_is_parsed() -> None:
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\n\r\nGET /ok HTTP/1.1\r\n" + HOST + b"\r\n")
    assert drain(parser) == [ProtocolError(400, "Exactly One Host Header Required")]
    parser.feed(b"GET /again HTTP/1.1\r\n" + HOST + b"\r\n")
    assert parser.next_event() is None
    parser.feed(b"")  # not even ConnectionClosed: the stream already ended
    assert parser.next_event() is None
    assert parser.finished


def test_error_in_a_later_pipelined_request_keeps_the_earlier_ones() -> None:
    events, _ = parse(b"GET /1 HTTP/1.1\r\n" + HOST + b"\r\nGET /2 HTTP/2.0\r\n" + HOST + b"\r\n")
    assert kinds(events) == ["Request", "EndOfMessage", "ProtocolError"]
    assert events[0].target == "/1"
    assert events[2].status == 400


def test_request_target_at_the_limit_is_accepted_and_one_more_byte_is_414() -> None:
    limit = 100
    ok = b"/" + b"a" * (limit - 1)
    events, _ = parse(b"GET " + ok + b" HTTP/1.1\r\n" + HOST + b"\r\n", max_request_line=limit)
    assert type(events[0]) is Request
    assert events[0].target == ok.decode()
    events, _ = parse(b"GET " + ok + b"a HTTP/1.1\r\n" + HOST + b"\r\n", step=7, max_request_line=limit)
    assert events == [ProtocolError(414, "URI Too Long")]


def test_header_count_limit_is_inclusive() -> None:
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(DEFAULT_MAX_HEADER_COUNT - 1))
    events, _ = parse(b"GET / HTTP/1.1\r\n" + HOST + fields + b"\r\n")
    assert type(events[0]) is Request
    assert len(events[0].headers) == DEFAULT_MAX_HEADER_COUNT
    events, _ = parse(b"GET / HTTP/1.1\r\n" + HOST + fields + b"X-One-More: v\r\n\r\n")
    assert kinds(events) == ["ProtocolError"]
    assert events[0].status == 431


def test_header_bytes_limit_is_configurable() -> None:
    small = b"GET / HTTP/1.1\r\n" + HOST + b"X-A: " + b"v" * 50 + b"\r\n\r\n"
    events, _ = parse(small, max_header_bytes=200)
    assert type(events[0]) is Request
    big = b"GET / HTTP/1.1\r\n" + HOST + b"X-A: " + b"v" * 250 + b"\r\n\r\n"
    events, _ = parse(big, max_header_bytes=200)
    assert kinds(events) == ["ProtocolError"]
    assert events[0].status == 431


BACKSTOP = 2 * (DEFAULT_MAX_HEADER_BYTES + DEFAULT_MAX_REQUEST_LINE)


def feed_until_an_event(parser: RequestParser) -> int:
    """Feed 4 KiB pieces of one endless line (at most twice the backstop); the bytes fed."""
    fed = 0
    while not parser.has_events and fed <= 2 * BACKSTOP:
        parser.feed(b"v" * 4096)
        fed += 4096
    return fed


def test_head_that_never_ends_a_line_is_cut_off_with_431() -> None:
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\n" + HOST + b"X-Endless: ")
    fed = feed_until_an_event(parser)
    assert drain(parser) == [ProtocolError(431, "Request Header Fields Too Large")]
    assert fed <= BACKSTOP + 4096
    assert parser.finished


def test_trailer_that_never_ends_a_line_is_cut_off_with_431() -> None:
    """Trailer fields are discarded, but an endless one must not grow without bound."""
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: ")
    assert kinds(merge_data(drain(parser))) == ["Request", "Data"]
    fed = feed_until_an_event(parser)
    events = drain(parser)
    assert events and type(events[-1]) is ProtocolError, f"no error after {fed} bytes of one trailer field"
    assert events[-1].status == 431


def test_chunk_size_line_that_never_ends_is_cut_off_with_400_not_431() -> None:
    """An endless chunk extension is bad body framing, not a header field that is too large."""
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n5;name=")
    assert kinds(merge_data(drain(parser))) == ["Request", "Data"]
    fed = feed_until_an_event(parser)
    assert drain(parser) == [ProtocolError(400, "Chunk Extension Too Long")]
    assert fed <= BACKSTOP + 4096


# -- body size limit ----------------------------------------------------------------


def test_content_length_over_max_body_size_is_413_before_any_body() -> None:
    head = b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 11\r\n\r\n"
    events, parser = parse(head, max_body_size=10)
    assert events == [ProtocolError(413, "Content Too Large")]
    assert parser.finished
    events, _ = parse(head.replace(b"11", b"10") + b"0123456789", max_body_size=10)
    assert kinds(merge_data(events)) == ["Request", "Data", "EndOfMessage"]


@pytest.mark.parametrize("step", [None, 3], ids=["whole", "split"])
def test_chunked_body_over_max_body_size_is_413_once_it_passes_the_limit(step: Optional[int]) -> None:
    head = b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
    exact = head + b"4\r\nabcd\r\n6\r\nefghij\r\n0\r\n\r\n"
    events, _ = parse(exact, step, max_body_size=10)
    assert kinds(merge_data(events)) == ["Request", "Data", "EndOfMessage"]
    assert body_of(events) == b"abcdefghij"
    events, parser = parse(head + b"4\r\nabcd\r\n7\r\nefghijk\r\n0\r\n\r\n", step, max_body_size=10)
    assert kinds(merge_data(events))[0] == "Request"
    assert events[-1] == ProtocolError(413, "Content Too Large")
    assert len(body_of(events)) <= 10
    assert parser.finished


# -- slices fed to llhttp ---------------------------------------------------------------


def test_a_flood_of_pipelined_requests_in_one_feed_queues_one_slice_of_them() -> None:
    """10,000 requests in one read: memory for the events of one slice, served in order all the same."""
    one = b"GET /%05d HTTP/1.1\r\n" + HOST + b"\r\n"
    data = b"".join(one % i for i in range(10_000))
    parser = RequestParser()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        parser.feed(data)
        queued = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # All 10,000 queued at once took about 5.2 MB; one slice of them, about 95 KiB.
    assert queued < 400_000, queued
    targets = [event.target for event in drain(parser) if type(event) is Request]
    assert targets == [f"/{i:05d}" for i in range(10_000)]


def test_a_content_length_body_in_one_feed_is_one_data_event() -> None:
    body = bytes(range(256)) * 1024  # 256 KiB, as conn.py's body reads
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: %d\r\n\r\n" % (len(body) + 100))
    assert kinds(drain(parser)) == ["Request"]
    parser.feed(body)
    assert drain(parser) == [Data(body)]
    parser.feed(b"x" * 100 + b"GET /next HTTP/1.1\r\n" + HOST + b"\r\n" * 2)
    assert kinds(drain(parser)) == ["Data", "EndOfMessage", "Request", "EndOfMessage"]


def test_eof_after_a_large_feed_comes_after_all_its_requests() -> None:
    one = b"GET / HTTP/1.1\r\n" + HOST + b"\r\n"
    count = 3 * FEED_SLICE // len(one)
    parser = RequestParser()
    parser.feed(one * count)
    parser.feed(b"")  # the peer closed right after sending them
    events = drain(parser)
    assert kinds(events) == ["Request", "EndOfMessage"] * count + ["ConnectionClosed"]
    assert events[-1] == ConnectionClosed(mid_message=False)


def test_upgrade_after_a_large_feed_tunnels_everything_after_its_head() -> None:
    filler = b"GET / HTTP/1.1\r\n" + HOST + b"\r\n"
    count = 2 * FEED_SLICE // len(filler)
    upgrade = b"GET /ws HTTP/1.1\r\n" + HOST + b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    tunnel = bytes(range(256)) * 100
    parser = RequestParser()
    parser.feed(filler * count + upgrade + tunnel)
    events = drain(parser)
    assert kinds(events) == ["Request", "EndOfMessage"] * (count + 1)
    assert events[-2].upgrade
    assert parser.tunnel_bytes == tunnel


@pytest.mark.parametrize("what", ["large body", "many pipelined requests"])
def test_large_single_feed_of_valid_requests_is_not_mistaken_for_an_endless_head(what: str) -> None:
    """The head backstop must count head bytes, not every byte handed to one feed()."""
    limits = {"max_header_bytes": 1024, "max_request_line": 1024}
    if what == "large body":
        body = b"b" * 64 * 1024
        data = b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: %d\r\n\r\n" % len(body) + body
        expected = ["Request", "Data", "EndOfMessage"]
    else:
        one = b"GET / HTTP/1.1\r\n" + HOST + b"\r\n"
        data = one * 1000
        expected = ["Request", "EndOfMessage"] * 1000
    events, parser = parse(data, **limits)
    assert kinds(merge_data(events)) == expected
    assert not parser.finished


# -- end of stream ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("received", "mid_message"),
    [
        (b"", False),
        (b"G", True),
        (b"GET / HTTP/1.1\r\nHo", True),
        (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\nab", True),
        (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n", True),
        (b"GET / HTTP/1.1\r\n" + HOST + b"\r\n", False),
        (b"GET / HTTP/1.1\r\n" + HOST + b"\r\nGET /2 HTTP/1.1\r\n", True),
    ],
    ids=["nothing", "one byte", "partial head", "partial body", "partial chunked", "complete", "second partial"],
)
def test_eof_gives_connection_closed_saying_whether_a_request_was_cut(received: bytes, mid_message: bool) -> None:
    parser = RequestParser()
    if received:
        parser.feed(received)
    drain(parser)
    assert parser.in_message is mid_message
    parser.feed(b"")
    assert drain(parser) == [ConnectionClosed(mid_message=mid_message)]
    assert parser.finished
    parser.feed(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    assert parser.next_event() is None


# -- properties -----------------------------------------------------------------

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)
_value = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ABC=;,/0123456789", max_size=20).map(str.strip)


@st.composite
def _request(draw: st.DrawFn, last: bool = True) -> bytes:
    """One valid request; unless ``last``, one that keeps the connection open."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    path = "/" + draw(st.text(alphabet="abc/xyz0123456789-._~%", max_size=20))
    version = draw(st.sampled_from(["1.0", "1.1"]))
    lines = [f"{method} {path} HTTP/{version}"]
    if version == "1.1" or draw(st.booleans()):
        lines.append("Host: h.test")
    if version == "1.0" and (not last or draw(st.booleans())):
        lines.append("Connection: keep-alive")
    elif version == "1.1" and last and draw(st.booleans()):
        lines.append("Connection: close")
    for name, value in draw(st.lists(st.tuples(_token, _value), max_size=5)):
        if name.lower() in ("host", "content-length", "transfer-encoding", "connection", "upgrade"):
            name = "x-" + name
        lines.append(f"{name}: {value}")
    body = draw(st.binary(max_size=60))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    if version == "1.0" or framing == "none":
        framing = "length" if body else "none"
    payload = b""
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        pieces = draw(st.lists(st.binary(min_size=1, max_size=20), max_size=4))
        for piece in pieces:
            ext = draw(st.sampled_from(["", ";a=b", ';q="x y"']))
            payload += b"%x%s\r\n%s\r\n" % (len(piece), ext.encode(), piece)
        payload += b"0\r\n"
        if draw(st.booleans()):
            payload += b"X-Trailer: 1\r\n"
        payload += b"\r\n"
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


@st.composite
def _batch_and_cuts(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    data = b"".join(draw(st.lists(_request(last=False), max_size=3))) + draw(_request())
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=len(data) - 1), max_size=30)))
    return data, cuts


_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    # No "explain" phase: it adds nothing here and trips filterwarnings=error.
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)


@_SETTINGS
@given(_batch_and_cuts())
def test_any_split_of_valid_pipelined_requests_gives_the_same_events(case: tuple[bytes, list[int]]) -> None:
    data, cuts = case
    whole, whole_parser = parse(data)
    assert whole, "a valid batch gave no events"
    assert all(type(e) is not ProtocolError for e in whole), whole
    assert not whole_parser.in_message
    parser = RequestParser()
    split: list[Event] = []
    for start, end in itertools.pairwise([0, *cuts, len(data)]):
        parser.feed(data[start:end])
        split += drain(parser)
    assert merge_data(split) == merge_data(whole)
    parser.feed(b"")
    assert drain(parser) == [ConnectionClosed(mid_message=False)]


@_SETTINGS
@given(
    st.one_of(st.just(b""), _request().map(lambda r: r[: len(r) // 2])),
    st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=8),
)
def test_arbitrary_bytes_never_raise_out_of_feed(prefix: bytes, pieces: list[bytes]) -> None:
    parser = RequestParser()
    events: list[Event] = []
    for piece in [prefix, *pieces] if prefix else pieces:
        parser.feed(piece)
        events += drain(parser)
    parser.feed(b"")
    events += drain(parser)
    allowed = (Request, Data, EndOfMessage, ProtocolError, ConnectionClosed)
    assert all(type(e) in allowed for e in events)
    ends = [i for i, e in enumerate(events) if type(e) in (ProtocolError, ConnectionClosed)]
    # At most one terminal event, and nothing after it.
    assert len(ends) <= 1
    if ends:
        assert ends[0] == len(events) - 1
    else:
        assert parser.finished  # only an upgrade ends the stream without an event
    # Framing is well nested: Data only inside a request, one EndOfMessage per Request.
    open_request = False
    for event in events:
        if type(event) is Request:
            assert not open_request
            open_request = True
        elif type(event) in (Data, EndOfMessage):
            assert open_request
            if type(event) is EndOfMessage:
                open_request = False


# -- end of a connection's parser ------------------------------------------------


def test_http09_line_after_a_body_without_a_final_lf_is_rejected_at_once() -> None:
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\n\r\nabc")
    assert kinds(drain(parser)) == ["Request", "Data", "EndOfMessage"]
    parser.feed(b"GET /x\r\n")
    assert drain(parser) == [ProtocolError(400, "Unsupported HTTP Version")]


def test_close_ends_parsing_and_drops_the_reference_cycle_with_llhttp() -> None:
    import gc
    import weakref

    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    drain(parser)
    parser.close()
    assert parser.finished
    parser.feed(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")  # ignored, no error
    parser.feed(b"")
    assert drain(parser) == []
    ref = weakref.ref(parser)
    gc.disable()
    try:
        del parser
        assert ref() is None, "freed by reference counting alone"
    finally:
        gc.enable()


def test_a_header_field_longer_than_max_field_size_gets_431() -> None:
    parser = RequestParser(max_field_size=64)
    parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\nX-Ok: " + b"v" * 50 + b"\r\nX-Long: " + b"v" * 60 + b"\r\n\r\n")
    event = parser.next_event()
    assert type(event) is ProtocolError and event.status == 431


# -- the work a chunked body costs -------------------------------------------------------

CHUNKED_HEAD = b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"


def chunks(*sizes: int) -> bytes:
    return b"".join(b"%x\r\n" % size + b"d" * size + b"\r\n" for size in sizes)


LAST_CHUNK = b"0\r\n\r\n"


def test_a_chunked_body_is_one_data_event_per_slice_not_per_chunk() -> None:
    parser = RequestParser()
    parser.feed(CHUNKED_HEAD)
    assert kinds(drain(parser)) == ["Request"]
    parser.feed(chunks(*[100] * 500) + LAST_CHUNK)  # 51 KiB: one slice
    assert drain(parser) == [Data(b"d" * 50_000), EndOfMessage()]


def body_kinds(events: list[Event]) -> tuple[list[str], int]:
    """The kinds of ``events``, a run of Data as one, and the body's length."""
    merged: list[str] = []
    for kind in kinds(events):
        if kind != "Data" or not merged or merged[-1] != "Data":
            merged.append(kind)
    return merged, sum(len(event.data) for event in events if type(event) is Data)


def most_1_byte_chunks() -> int:
    """How many chunks a body of 1-byte chunks may have: each chunk, when its size line
    is read, must be within FREE_CHUNKS plus one per DEFAULT_MIN_AVERAGE_CHUNK_SIZE
    bytes of data before it."""
    count = FREE_CHUNKS
    while count + 1 <= FREE_CHUNKS + count // DEFAULT_MIN_AVERAGE_CHUNK_SIZE:
        count += 1
    return count


def test_1_byte_chunks_past_the_allowance_get_400() -> None:
    most = most_1_byte_chunks()
    assert FREE_CHUNKS < most < FREE_CHUNKS * 1.1
    # most - 1 data chunks and the last chunk: within the allowance.
    events, _ = parse(CHUNKED_HEAD + chunks(*[1] * (most - 1)) + LAST_CHUNK)
    assert body_kinds(events) == (["Request", "Data", "EndOfMessage"], most - 1)
    events, parser = parse(CHUNKED_HEAD + chunks(*[1] * most) + LAST_CHUNK)
    assert events[-1] == ProtocolError(400, "Chunks Too Small")
    assert parser.finished
    assert body_kinds(events) == (["Request", "Data", "ProtocolError"], most)  # the data before it comes first


@pytest.mark.parametrize("size", [DEFAULT_MIN_AVERAGE_CHUNK_SIZE, 100, 4096])
def test_chunks_of_the_minimum_average_or_more_pass_however_many(size: int) -> None:
    count = 4 * FREE_CHUNKS
    events, _ = parse(CHUNKED_HEAD + chunks(*[size] * count) + LAST_CHUNK)
    assert body_kinds(events) == (["Request", "Data", "EndOfMessage"], size * count)


def test_small_chunks_are_paid_for_by_the_bytes_before_them() -> None:
    """The rule is on the average: a big chunk buys room for small ones, and no more."""
    big = 64 * 1024
    allowed_small = FREE_CHUNKS + big // DEFAULT_MIN_AVERAGE_CHUNK_SIZE - 1  # the big chunk is one of them
    # Small chunks add to the data too: stay under what the big one alone pays for.
    events, _ = parse(CHUNKED_HEAD + chunks(big, *[1] * (allowed_small - 40)) + LAST_CHUNK)
    assert body_kinds(events)[0] == ["Request", "Data", "EndOfMessage"]
    events, _ = parse(CHUNKED_HEAD + chunks(big, *[1] * (allowed_small + 100)) + LAST_CHUNK)
    assert events[-1] == ProtocolError(400, "Chunks Too Small")


def test_no_minimum_average_chunk_size_when_none() -> None:
    events, _ = parse(CHUNKED_HEAD + chunks(*[1] * (4 * FREE_CHUNKS)) + LAST_CHUNK, min_average_chunk_size=None)
    assert body_kinds(events) == (["Request", "Data", "EndOfMessage"], 4 * FREE_CHUNKS)


def test_the_parsing_between_two_events_is_bounded_once_chunks_are_small() -> None:
    """Slices of many small chunks shrink to FEED_SLICE: a caller pulling events can
    yield between them, whatever the chunks (at most DENSE_SLICE_CHUNKS in a slice
    of FEED_SLICE after a dense one)."""
    parser = RequestParser(min_average_chunk_size=None)
    parser.feed(CHUNKED_HEAD)
    assert kinds(drain(parser)) == ["Request"]
    parser.feed(chunks(*[1] * 40_000))  # 240 KB of 1-byte chunks in one read
    per_event = []
    while (event := parser.next_event()) is not None:
        assert type(event) is Data
        per_event.append(len(event.data))
    assert sum(per_event) == 40_000
    first, *rest = per_event
    assert first <= CHUNKED_FEED_SLICE // 6 + 1  # the first slice is a big one...
    assert rest and max(rest) <= FEED_SLICE // 6 + 1  # ...then they are small
    assert DENSE_SLICE_CHUNKS < CHUNKED_FEED_SLICE // 6
