"""The PROXY protocol header (v1 text, v2 binary), parsed from bytes.

A load balancer that speaks it (HAProxy ``send-proxy``/``send-proxy-v2``,
nginx ``proxy_protocol on``, AWS NLB with proxy protocol v2) writes one header
at the very start of each TCP connection, before any byte of the client's own
stream (a TLS handshake included), naming the addresses of the connection it
relays. The specification (HAProxy's ``doc/proxy-protocol.txt``) forbids
guessing: a receiver configured for it refuses a connection that does not
begin with a valid header, and one not configured for it never looks.

``parse_proxy_header(data)`` is incremental and does no I/O: give it every
byte received so far; it answers "read up to N bytes in all", or the header
and its exact length, or raises ``ProxyProtocolError``. The length matters:
the bytes after the header belong to the client's stream (HTTP, or TLS that
the header must not swallow).
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple, Optional

#: The 12 bytes that open a v2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: A v2 header is 16 fixed bytes, then as many as its length field says.
V2_FIXED_LENGTH = 16
#: A v1 line, CRLF included, is at most this long (the specification's worst case).
V1_MAX_LENGTH = 107
_V1_PREFIX = b"PROXY "

# v2 command (low nibble of byte 13), family (high nibble of byte 14), transport (its low nibble).
_LOCAL, _PROXY = 0, 1
_UNSPEC, _INET, _INET6, _UNIX = 0, 1, 2, 3
_STREAM = 1
_ADDRESS_BLOCK = {_UNSPEC: 0, _INET: 12, _INET6: 36, _UNIX: 216}

#: TLV types (section 2.2 of the specification, and AWS's).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_TYPE_NETNS = 0x30
#: AWS: the VPC endpoint id (first value byte 0x01) of a PrivateLink connection.
PP2_TYPE_AWS = 0xEA

Address = tuple[str, int]


class ProxyHeader(NamedTuple):
    """A complete, valid PROXY header."""

    #: 1 (text) or 2 (binary).
    version: int
    #: ``"PROXY"`` (relayed for a client) or ``"LOCAL"`` (v2: the proxy's own
    #: connection, e.g. a health check).
    command: str
    #: The client's ``(address, port)`` as the proxy saw it; None when the
    #: connection's own endpoints apply (LOCAL, v1 ``UNKNOWN``, and v2
    #: families or transports other than TCP over IPv4/IPv6).
    source: Optional[Address]
    #: The address the client connected to (the proxy's), or None as for ``source``.
    destination: Optional[Address]
    #: v2 type-length-value fields in wire order, ``(type, value)``; values as sent.
    tlvs: tuple[tuple[int, bytes], ...] = ()


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY header: refuse the connection."""


def parse_proxy_header(data: bytes) -> tuple[Optional[ProxyHeader], int]:
    """Parse the PROXY header at the start of ``data`` (the bytes received so far).

    Returns:
        ``(header, length)`` once the header is complete: its first
        ``length`` bytes are the header and the rest is the client's stream;
        or ``(None, needed)`` while incomplete: read until ``needed`` bytes
        have been received in all (for v1, whose end is only known at its
        CRLF, the most it may take).

    Raises:
        ProxyProtocolError: ``data`` cannot begin a valid header. Raised as
            soon as that is certain, e.g. at the first byte of a plain HTTP
            request.
    """
    if data[:1] == b"\r":
        return _parse_v2(data)
    if data[: len(_V1_PREFIX)] == _V1_PREFIX[: len(data)]:
        return _parse_v1(data)
    raise ProxyProtocolError("the connection does not begin with a PROXY protocol header")


# -- version 1 ---------------------------------------------------------------------


def _parse_v1(data: bytes) -> tuple[Optional[ProxyHeader], int]:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        head = data[:V1_MAX_LENGTH]
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(f"PROXY v1 line without CRLF in its first {V1_MAX_LENGTH} bytes")
        # A CR at the very end may be the first half of the CRLF.
        if b"\n" in head or b"\r" in head[:-1]:
            raise ProxyProtocolError("PROXY v1 line ended by a bare CR or LF")
        return None, V1_MAX_LENGTH
    line = data[:end]
    if b"\r" in line or b"\n" in line:
        raise ProxyProtocolError("PROXY v1 line ended by a bare CR or LF")
    fields = line.split(b" ")
    if fields[1] == b"UNKNOWN":
        # Whatever follows UNKNOWN up to the CRLF is to be ignored.
        return ProxyHeader(1, "PROXY", None, None), end + 2
    if len(fields) != 6:
        raise ProxyProtocolError("PROXY v1 line needs protocol, two addresses and two ports, one space apart")
    protocol, src, dst, src_port, dst_port = fields[1:]
    if protocol not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, not {protocol!r}")
    ipv6 = protocol == b"TCP6"
    source = (_v1_address(src, ipv6), _v1_port(src_port))
    destination = (_v1_address(dst, ipv6), _v1_port(dst_port))
    return ProxyHeader(1, "PROXY", source, destination), end + 2


_IPV4_CHARS = frozenset(b"0123456789.")
_IPV6_CHARS = frozenset(b"0123456789abcdefABCDEF:")


def _v1_address(text: bytes, ipv6: bool) -> str:
    # Only the canonical forms: dotted quads without leading zeros (the
    # ipaddress module refuses those), and hex groups with colons; no scope
    # ids, no embedded IPv4 in an IPv6 address.
    allowed = _IPV6_CHARS if ipv6 else _IPV4_CHARS
    if not text or not allowed.issuperset(text):
        raise ProxyProtocolError(f"PROXY v1 address {text!r} is not a canonical {'IPv6' if ipv6 else 'IPv4'} address")
    try:
        address = ipaddress.IPv6Address(text.decode()) if ipv6 else ipaddress.IPv4Address(text.decode())
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1 address {text!r} is not a valid address") from None
    return str(address)


def _v1_port(text: bytes) -> int:
    if not text.isdigit() or (len(text) > 1 and text[:1] == b"0") or int(text) > 65535:
        raise ProxyProtocolError(f"PROXY v1 port {text!r} is not a number from 0 to 65535 without leading zeros")
    return int(text)


# -- version 2 ---------------------------------------------------------------------


def _parse_v2(data: bytes) -> tuple[Optional[ProxyHeader], int]:
    if data[:12] != V2_SIGNATURE[: len(data)]:
        raise ProxyProtocolError("the connection does not begin with a PROXY protocol header")
    if len(data) < V2_FIXED_LENGTH:
        return None, V2_FIXED_LENGTH
    version, command = data[12] >> 4, data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    if version != 2:
        raise ProxyProtocolError(f"PROXY v2 header with version {version}")
    if command not in (_LOCAL, _PROXY):
        raise ProxyProtocolError(f"PROXY v2 command {command} is neither LOCAL nor PROXY")
    if family not in _ADDRESS_BLOCK or transport > 2:
        raise ProxyProtocolError(f"PROXY v2 address family/transport 0x{data[13]:02x} is not defined")
    length = V2_FIXED_LENGTH + int.from_bytes(data[14:16], "big")
    if len(data) < length:
        return None, length
    if command == _LOCAL:
        # The proxy's own connection: the block, whatever it holds, is skipped.
        return ProxyHeader(2, "LOCAL", None, None), length
    address_end = V2_FIXED_LENGTH + _ADDRESS_BLOCK[family]
    if address_end > length:
        raise ProxyProtocolError("PROXY v2 address block is shorter than its family needs")
    if family == _UNSPEC or transport == 0:
        # Nothing we can read the rest as: the real endpoints apply.
        return ProxyHeader(2, "PROXY", None, None), length
    tlvs = _tlvs(data, address_end, length)
    if family == _UNIX or transport != _STREAM:
        return ProxyHeader(2, "PROXY", None, None, tlvs), length
    size = 4 if family == _INET else 16
    block = data[V2_FIXED_LENGTH:address_end]
    src = ipaddress.ip_address(block[:size])
    dst = ipaddress.ip_address(block[size : 2 * size])
    src_port = int.from_bytes(block[2 * size : 2 * size + 2], "big")
    dst_port = int.from_bytes(block[2 * size + 2 : 2 * size + 4], "big")
    return ProxyHeader(2, "PROXY", (str(src), src_port), (str(dst), dst_port), tlvs), length


def _tlvs(data: bytes, start: int, end: int) -> tuple[tuple[int, bytes], ...]:
    fields = []
    at = start
    while at < end:
        if at + 3 > end:
            raise ProxyProtocolError("PROXY v2 TLV truncated in its type or length")
        kind = data[at]
        value_end = at + 3 + int.from_bytes(data[at + 1 : at + 3], "big")
        if value_end > end:
            raise ProxyProtocolError(f"PROXY v2 TLV 0x{kind:02x} is longer than the header")
        if kind == PP2_TYPE_CRC32C:
            _check_crc32c(data[:end], at + 3, value_end)
        fields.append((kind, bytes(data[at + 3 : value_end])))
        at = value_end
    return tuple(fields)


def _check_crc32c(header: bytes, start: int, end: int) -> None:
    if end - start != 4:
        raise ProxyProtocolError("PROXY v2 CRC32C TLV must hold 4 bytes")
    expected = int.from_bytes(header[start:end], "big")
    if crc32c(header[:start] + b"\0\0\0\0" + header[end:]) != expected:
        raise ProxyProtocolError("PROXY v2 CRC32C checksum does not match the header")


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, RFC 4960 appendix B) of ``data``, as the v2 CRC32C TLV holds it."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
