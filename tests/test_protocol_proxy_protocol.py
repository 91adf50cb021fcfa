"""protocol/proxy_protocol.py: PROXY v1 and v2 headers, byte by byte.

Every header is also fed one byte at a time: until complete the parser must
ask for more (never fail early on a valid prefix, never succeed late), and it
must report the exact length, leaving the client's bytes after it alone.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from gshutdown.protocol.proxy_protocol import (
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_AWS,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    crc32c,
    parse_proxy_header,
)

HTTP = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"
TLS_CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def parse_whole(header: bytes, after: bytes = HTTP) -> ProxyHeader:
    """Parse ``header`` fed byte by byte, then whole with ``after`` appended; check the length."""
    for cut in range(len(header)):
        result, needed = parse_proxy_header(header[:cut])
        assert result is None, f"complete after only {cut} of {len(header)} bytes"
        assert cut < needed <= max(V1_MAX_LENGTH, len(header)), (cut, needed)
    parsed, length = parse_proxy_header(header + after)
    assert parsed is not None
    assert length == len(header)
    assert parse_proxy_header(header) == (parsed, length)
    return parsed


def v2(command: int, family: int, body: bytes, *, version: int = 2) -> bytes:
    return V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", len(body)) + body


def ipv4_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + struct.pack("!HH", sport, dport)


def ipv6_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + struct.pack("!HH", sport, dport)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def with_crc32c(header_without_crc: bytes) -> bytes:
    """Append a CRC32C TLV and fix the length field, as a sender does."""
    placeholder = tlv(PP2_TYPE_CRC32C, b"\0\0\0\0")
    body_length = struct.unpack("!H", header_without_crc[14:16])[0] + len(placeholder)
    draft = header_without_crc[:14] + struct.pack("!H", body_length) + header_without_crc[16:] + placeholder
    return draft[:-4] + struct.pack("!I", crc32c(draft))


# -- version 1 -----------------------------------------------------------------


def test_v1_tcp4() -> None:
    header = b"PROXY TCP4 198.51.100.7 203.0.113.1 56324 443\r\n"
    assert parse_whole(header) == ProxyHeader(1, "PROXY", ("198.51.100.7", 56324), ("203.0.113.1", 443))


def test_v1_tcp6_is_normalised() -> None:
    header = b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 65535 0\r\n"
    assert parse_whole(header) == ProxyHeader(1, "PROXY", ("2001:db8::1", 65535), ("::1", 0))


def test_v1_longest_line_is_accepted() -> None:
    full = "ffff:" * 7 + "ffff"
    header = f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    assert len(header) == 104
    assert parse_whole(header).source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)


@pytest.mark.parametrize(
    "header",
    [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n", b"PROXY UNKNOWN anything at all\r\n"],
)
def test_v1_unknown_means_the_real_endpoints(header: bytes) -> None:
    assert parse_whole(header) == ProxyHeader(1, "PROXY", None, None)


def test_v1_leaves_a_tls_client_hello_after_it_alone() -> None:
    header = b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"
    parsed, length = parse_proxy_header(header + TLS_CLIENT_HELLO_START)
    assert parsed is not None and length == len(header)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"PROXY TCP4 198.51.100.7 203.0.113.1 56324\r\n", "one space apart"),  # five fields
        (b"PROXY TCP4 198.51.100.7 203.0.113.1 56324 443 1\r\n", "one space apart"),  # seven fields
        (b"PROXY  TCP4 198.51.100.7 203.0.113.1 56324 443\r\n", "one space apart"),  # two spaces
        (b"PROXY TCP4 198.51.100.7 203.0.113.1 56324 443 \r\n", "one space apart"),  # trailing space
        (b"PROXY TCP5 198.51.100.7 203.0.113.1 56324 443\r\n", "TCP4, TCP6 or UNKNOWN"),  # unknown protocol
        (b"PROXY tcp4 198.51.100.7 203.0.113.1 56324 443\r\n", "TCP4, TCP6 or UNKNOWN"),  # lower-case protocol
        (b"PROXY UDP4 198.51.100.7 203.0.113.1 56324 443\r\n", "TCP4, TCP6 or UNKNOWN"),  # UDP
        (b"PROXY TCP4 198.51.100.07 203.0.113.1 56324 443\r\n", "not a valid address"),  # leading zero in an octet
        (b"PROXY TCP4 198.51.100.256 203.0.113.1 56324 443\r\n", "not a valid address"),  # octet over 255
        (b"PROXY TCP4 198.51.100 203.0.113.1 56324 443\r\n", "not a valid address"),  # three octets
        (b"PROXY TCP4 ::1 203.0.113.1 56324 443\r\n", "canonical IPv4"),  # IPv6 address under TCP4
        (b"PROXY TCP6 198.51.100.7 ::1 56324 443\r\n", "canonical IPv6"),  # IPv4 address under TCP6
        (b"PROXY TCP6 ::ffff:1.2.3.4 ::1 56324 443\r\n", "canonical IPv6"),  # embedded IPv4 in TCP6
        (b"PROXY TCP6 fe80::1%eth0 ::1 56324 443\r\n", "canonical IPv6"),  # scope id
        (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 56324 443\r\n", "not a valid address"),  # nine groups
        (b"PROXY TCP4 198.51.100.7 203.0.113.1 056324 443\r\n", "port"),  # leading zero in a port
        (b"PROXY TCP4 198.51.100.7 203.0.113.1 65536 443\r\n", "port"),  # port over 65535
        (b"PROXY TCP4 198.51.100.7 203.0.113.1 -1 443\r\n", "port"),  # negative port
        (b"PROXY TCP4 198.51.100.7 203.0.113.1 5\xd9\xa3 443\r\n", "port"),  # non-ASCII digit
        (b"PROXY TCP4 198.51.100.7 203.0.113.1 56324 443\n", "bare CR or LF"),  # bare LF
        (b"PROXY TCP4 198.51.100.7 203.0.113.1 56324 443\rX\r\n", "bare CR or LF"),  # bare CR
        (b"PROXY \r\n", "one space apart"),  # nothing after PROXY
        (b"PROXY\r\n", "does not begin"),  # no space after PROXY
        (b"PROXY UNKNOWNX\r\n", "one space apart"),  # UNKNOWN glued to more
    ],
)
def test_v1_malformed_is_rejected(header: bytes, match: str) -> None:
    with pytest.raises(ProxyProtocolError, match=match):
        parse_proxy_header(header + HTTP)


def test_v1_without_crlf_in_107_bytes_is_rejected_and_not_before() -> None:
    line = b"PROXY UNKNOWN " + b"x" * 200
    assert parse_proxy_header(line[: V1_MAX_LENGTH - 1]) == (None, V1_MAX_LENGTH)
    with pytest.raises(ProxyProtocolError, match="107"):
        parse_proxy_header(line[:V1_MAX_LENGTH])


def test_v1_cr_at_the_end_of_what_arrived_may_still_become_crlf() -> None:
    assert parse_proxy_header(b"PROXY UNKNOWN\r") == (None, V1_MAX_LENGTH)


@pytest.mark.parametrize("start", [b"GET / HTTP/1.1\r\n", b"G", b"PROXZ", b"proxy ", TLS_CLIENT_HELLO_START, b"\x00"])
def test_anything_else_is_rejected_at_once(start: bytes) -> None:
    with pytest.raises(ProxyProtocolError, match="does not begin"):
        parse_proxy_header(start)


def test_nothing_yet_asks_for_more() -> None:
    assert parse_proxy_header(b"") == (None, V1_MAX_LENGTH)


# -- version 2 -----------------------------------------------------------------


def test_v2_tcp4() -> None:
    header = v2(1, 0x11, ipv4_block("198.51.100.7", "203.0.113.1", 56324, 443))
    assert parse_whole(header) == ProxyHeader(2, "PROXY", ("198.51.100.7", 56324), ("203.0.113.1", 443))


def test_v2_tcp6() -> None:
    header = v2(1, 0x21, ipv6_block("2001:db8::7", "2001:db8::1", 1, 65535))
    assert parse_whole(header) == ProxyHeader(2, "PROXY", ("2001:db8::7", 1), ("2001:db8::1", 65535))


def test_v2_as_haproxy_sends_it_before_a_request() -> None:
    # The bytes of a capture of HAProxy's send-proxy-v2 (172.19.0.1:42578 -> 172.19.0.3:80).
    wire = bytes.fromhex("0d0a0d0a000d0a515549540a2111000cac130001ac130003a6520050") + HTTP
    parsed, length = parse_proxy_header(wire)
    assert parsed == ProxyHeader(2, "PROXY", ("172.19.0.1", 42578), ("172.19.0.3", 80))
    assert wire[length:] == HTTP


def test_v2_with_tlvs_keeps_them_in_order() -> None:
    ssl_value = b"\x01" + b"\0\0\0\0" + tlv(0x21, b"TLSv1.3") + tlv(0x23, b"TLS_AES_128_GCM_SHA256")
    tlvs = (
        tlv(PP2_TYPE_ALPN, b"http/1.1")
        + tlv(PP2_TYPE_AUTHORITY, b"example.com")
        + tlv(PP2_TYPE_NOOP, b"")
        + tlv(PP2_TYPE_UNIQUE_ID, b"\x00\xff" * 8)
        + tlv(PP2_TYPE_SSL, ssl_value)
        + tlv(PP2_TYPE_AWS, b"\x01vpce-08d2bf15fac5001c9")
    )
    header = v2(1, 0x11, ipv4_block("10.0.0.1", "10.0.0.2", 1000, 80) + tlvs)
    parsed = parse_whole(header)
    assert parsed.source == ("10.0.0.1", 1000)
    assert parsed.tlvs == (
        (PP2_TYPE_ALPN, b"http/1.1"),
        (PP2_TYPE_AUTHORITY, b"example.com"),
        (PP2_TYPE_NOOP, b""),
        (PP2_TYPE_UNIQUE_ID, b"\x00\xff" * 8),
        (PP2_TYPE_SSL, ssl_value),
        (PP2_TYPE_AWS, b"\x01vpce-08d2bf15fac5001c9"),
    )


def test_v2_crc32c_that_matches_is_accepted() -> None:
    header = with_crc32c(v2(1, 0x11, ipv4_block("10.0.0.1", "10.0.0.2", 1000, 80) + tlv(PP2_TYPE_NOOP, b"ab")))
    parsed = parse_whole(header)
    assert [kind for kind, _ in parsed.tlvs] == [PP2_TYPE_NOOP, PP2_TYPE_CRC32C]


def test_v2_crc32c_that_does_not_match_is_rejected() -> None:
    header = bytearray(with_crc32c(v2(1, 0x11, ipv4_block("10.0.0.1", "10.0.0.2", 1000, 80))))
    header[17] ^= 0x01  # one bit of the source address
    with pytest.raises(ProxyProtocolError, match="CRC32C"):
        parse_proxy_header(bytes(header))


def test_v2_crc32c_tlv_of_the_wrong_size_is_rejected() -> None:
    header = v2(1, 0x11, ipv4_block("10.0.0.1", "10.0.0.2", 1000, 80) + tlv(PP2_TYPE_CRC32C, b"\0\0\0"))
    with pytest.raises(ProxyProtocolError, match="4 bytes"):
        parse_proxy_header(header)


def test_crc32c_known_answer() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720 / iSCSI check value
    assert crc32c(b"") == 0


def test_v2_local_ignores_whatever_its_block_holds() -> None:
    assert parse_whole(v2(0, 0x00, b"")) == ProxyHeader(2, "LOCAL", None, None)
    # LOCAL with an address block and junk: skipped by its length, not read.
    header = v2(0, 0x11, ipv4_block("10.0.0.1", "10.0.0.2", 1, 2) + b"\xff\xff")
    assert parse_whole(header) == ProxyHeader(2, "LOCAL", None, None)


@pytest.mark.parametrize(
    ("family", "block"),
    [
        (0x00, b""),  # UNSPEC
        (0x00, b"anything at all"),  # UNSPEC may carry what it likes
        (0x10, ipv4_block("10.0.0.1", "10.0.0.2", 1, 2)),  # IPv4, transport UNSPEC
        (0x12, ipv4_block("10.0.0.1", "10.0.0.2", 1, 2)),  # UDP over IPv4
        (0x22, ipv6_block("::1", "::2", 1, 2)),  # UDP over IPv6
        (0x31, b"/run/client.sock".ljust(108, b"\0") + b"/run/server.sock".ljust(108, b"\0")),  # UNIX stream
    ],
)
def test_v2_families_other_than_tcp_fall_back_to_the_real_endpoints(family: int, block: bytes) -> None:
    parsed = parse_whole(v2(1, family, block))
    assert (parsed.version, parsed.command, parsed.source, parsed.destination) == (2, "PROXY", None, None)


def test_v2_unix_keeps_its_tlvs() -> None:
    block = b"\0" * 216 + tlv(PP2_TYPE_AUTHORITY, b"example.com")
    assert parse_whole(v2(1, 0x31, block)).tlvs == ((PP2_TYPE_AUTHORITY, b"example.com"),)


def test_v2_header_of_the_largest_length_is_parsed() -> None:
    padding = 0xFFFF - 12 - 3
    header = v2(1, 0x11, ipv4_block("10.0.0.1", "10.0.0.2", 1, 2) + tlv(PP2_TYPE_NOOP, b"\0" * padding))
    assert len(header) == 16 + 0xFFFF
    parsed, length = parse_proxy_header(header + HTTP)
    assert parsed is not None and length == len(header)
    assert parse_proxy_header(header[:-1]) == (None, len(header))


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (v2(1, 0x11, ipv4_block("10.0.0.1", "10.0.0.2", 1, 2), version=1), "version 1"),
        (v2(1, 0x11, ipv4_block("10.0.0.1", "10.0.0.2", 1, 2), version=3), "version 3"),
        (v2(2, 0x11, ipv4_block("10.0.0.1", "10.0.0.2", 1, 2)), "command 2"),
        (v2(0xF, 0x11, ipv4_block("10.0.0.1", "10.0.0.2", 1, 2)), "command 15"),
        (v2(1, 0x41, b"\0" * 12), "0x41"),
        (v2(1, 0x13, ipv4_block("10.0.0.1", "10.0.0.2", 1, 2)), "0x13"),
        (v2(1, 0x11, b"\0" * 11), "shorter than its family"),
        (v2(1, 0x21, b"\0" * 35), "shorter than its family"),
        (v2(1, 0x31, b"\0" * 215), "shorter than its family"),
        (v2(1, 0x11, ipv4_block("10.0.0.1", "10.0.0.2", 1, 2) + b"\x04\x00"), "truncated"),
        (v2(1, 0x11, ipv4_block("10.0.0.1", "10.0.0.2", 1, 2) + b"\x04\x00\x05ab"), "longer than the header"),
        (v2(1, 0x11, ipv4_block("10.0.0.1", "10.0.0.2", 1, 2) + tlv(1, b"h2") + b"\x02"), "truncated"),
    ],
)
def test_v2_malformed_is_rejected(header: bytes, match: str) -> None:
    with pytest.raises(ProxyProtocolError, match=match):
        parse_proxy_header(header + HTTP)


def test_v2_signature_mismatch_is_rejected_at_the_first_wrong_byte() -> None:
    assert parse_proxy_header(V2_SIGNATURE[:5]) == (None, 16)
    with pytest.raises(ProxyProtocolError, match="does not begin"):
        parse_proxy_header(V2_SIGNATURE[:5] + b"X")
    with pytest.raises(ProxyProtocolError, match="does not begin"):
        parse_proxy_header(b"\r\n\r\nGET")


def test_v2_truncated_asks_for_exactly_the_rest() -> None:
    header = v2(1, 0x21, ipv6_block("::1", "::2", 1, 2) + tlv(PP2_TYPE_ALPN, b"h2"))
    assert parse_proxy_header(header[:15]) == (None, 16)
    assert parse_proxy_header(header[:16]) == (None, len(header))
    assert parse_proxy_header(header[:-1]) == (None, len(header))
