"""Which peers may say who the client is, and what they said.

Behind a reverse proxy the TCP peer is the proxy; the proxy names the client
in headers: ``X-Forwarded-For`` and ``X-Forwarded-Proto`` (de facto) or
``Forwarded`` (RFC 7239). Anyone can send those headers, so they are believed
only from *trusted* peers: ``TrustedProxies``, built from the
``forwarded_allow_ips`` setting (addresses or CIDR networks, ``*`` for all;
unix-socket peers are always trusted, as gunicorn does: only processes on this
host can reach them). From any other peer they are ignored (left in the
environ as ``HTTP_*`` entries, not used).

Chains. Each proxy appends the address it received the request from, so the
list reads client first, nearest proxy last, and everything left of a hop an
untrusted party wrote can be forged. The client is therefore found from the
right: starting at the (trusted) peer, step left while the hop is a trusted
proxy; the first hop that is not a trusted proxy is the client. If every hop
is trusted, the left-most one is. This is uvicorn's rule for
``X-Forwarded-For``; taking the left-most entry outright would let any client
choose its own address. A hop that is not an IP address (RFC 7239
``unknown``, an obfuscated ``_name``, garbage) ends the walk too, and then
``REMOTE_ADDR`` stays the peer's: it is always an address.

The scheme goes with the hop chosen: ``X-Forwarded-Proto`` with as many
entries as ``X-Forwarded-For`` is read at the same position (each proxy
appended both); otherwise its last entry, the nearest trusted proxy's word.
A ``Forwarded`` element's ``proto`` is read from the element chosen. Only
``http`` and ``https`` are taken.

Precedence. When a request has ``X-Forwarded-For`` or ``X-Forwarded-Proto``,
``Forwarded`` is ignored: the proxies in common use (nginx, HAProxy's
``option forwardfor``, AWS ALB, Envoy, Traefik, Caddy) set the
``X-Forwarded-*`` headers and pass a client's own ``Forwarded`` through
untouched, so preferring it would let a client spoof it through them. Behind
a proxy that writes only ``Forwarded``, have it drop ``X-Forwarded-*``
(HAProxy: ``http-request del-header X-Forwarded-For``).

Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Mapping, NamedTuple, Optional

#: ``forwarded_allow_ips`` value that trusts every peer.
ANY = "*"
_SCHEMES = ("http", "https")
_MAX_CACHED = 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The peers whose forwarding headers are believed.

    Args:
        spec: comma-separated IP addresses and CIDR networks
            (``"127.0.0.1,::1,10.0.0.0/8"``), or ``"*"`` for every peer;
            ``""`` trusts no TCP peer.

    Raises:
        ValueError: an entry is neither an address, a network nor ``*``
            (the message names it).
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.everyone = False
        networks: list[IPNetwork] = []
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            if item == ANY:
                self.everyone = True
                continue
            try:
                networks.append(ipaddress.ip_network(item))
            except ValueError as exc:
                raise ValueError(
                    f"forwarded_allow_ips: {item!r} is not an IP address or network ({exc}); '*' trusts every peer"
                ) from None
        self.networks = tuple(networks)
        self._known: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"TrustedProxies({self.spec!r})"

    def __contains__(self, host: object) -> bool:
        """True if ``host`` (an address as text) is trusted; anything not an address is not."""
        if self.everyone:
            return True
        if not isinstance(host, str):
            return False
        known = self._known.get(host)
        if known is None:
            known = self._match(host)
            if len(self._known) >= _MAX_CACHED:
                self._known.clear()
            self._known[host] = known
        return known

    def _match(self, host: str) -> bool:
        try:
            address: IPAddress = ipaddress.ip_address(host)
        except ValueError:
            return False
        candidates = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
            candidates.append(address.ipv4_mapped)
        return any(candidate in network for candidate in candidates for network in self.networks)

    def trusts_peer(self, peer: Any) -> bool:
        """True for a trusted ``(host, port, ...)`` peer, and for every unix-socket peer."""
        if not isinstance(peer, tuple):
            return True
        return peer[0] in self


class ForwardedClient(NamedTuple):
    """What trusted forwarding headers say about the client."""

    #: The client's address; None when the headers name none usable.
    host: Optional[str]
    #: The client's port, when the chosen hop gave one.
    port: Optional[int]
    #: ``"http"`` or ``"https"``; None when not said.
    scheme: Optional[str]


_NOBODY = ForwardedClient(None, None, None)


def apply_forwarded(environ: dict[str, Any], trusted: TrustedProxies, *, scheme: bool = True) -> None:
    """Set ``REMOTE_ADDR``/``REMOTE_PORT`` and ``wsgi.url_scheme`` from the request's forwarding headers.

    The caller has checked that the peer (``environ['REMOTE_ADDR']``) is
    trusted. ``REMOTE_PORT`` is removed when the client's hop gave no port
    (it would be the proxy's); an environ without it is what a unix-socket
    peer has anyway. ``scheme=False`` leaves ``wsgi.url_scheme`` alone (it is
    ``secure_scheme``'s to set).
    """
    x_for = environ.get("HTTP_X_FORWARDED_FOR")
    x_proto = environ.get("HTTP_X_FORWARDED_PROTO")
    if x_for is not None or x_proto is not None:
        client = from_x_forwarded(x_for, x_proto, trusted)
    else:
        forwarded = environ.get("HTTP_FORWARDED")
        if forwarded is None:
            return
        client = from_forwarded(forwarded, trusted)
    if client.host is not None:
        environ["REMOTE_ADDR"] = client.host
        if client.port is None:
            environ.pop("REMOTE_PORT", None)
        else:
            environ["REMOTE_PORT"] = str(client.port)
    if scheme and client.scheme is not None:
        environ["wsgi.url_scheme"] = client.scheme


class ContradictoryScheme(ValueError):
    """Two of the ``secure_scheme_headers`` disagree on whether the request came over HTTPS."""


def secure_scheme(environ: Mapping[str, Any], headers: Iterable[tuple[str, str]]) -> Optional[str]:
    """The scheme gunicorn's ``secure_scheme_headers`` give, or None when none of them is present.

    ``headers`` are ``(environ key, value meaning https)`` pairs
    (``("HTTP_X_FORWARDED_SSL", "on")``): a header present at its value says
    https, at any other value http. The caller has checked the peer is trusted.

    Raises:
        ContradictoryScheme: one says https and another http (gunicorn answers 400).
    """
    found = None
    for key, wanted in headers:
        value = environ.get(key)
        if value is None:
            continue
        said = "https" if value == wanted else "http"
        if found is not None and said != found:
            raise ContradictoryScheme(f"scheme headers disagree at {key[5:].replace('_', '-')}")
        found = said
    return found


def secure_scheme_keys(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``(HEADER, VALUE)`` pairs as ``secure_scheme`` takes them: header names as environ keys."""
    return tuple(("HTTP_" + name.upper().replace("-", "_"), value) for name, value in headers)


def from_x_forwarded(
    x_forwarded_for: Optional[str], x_forwarded_proto: Optional[str], trusted: TrustedProxies
) -> ForwardedClient:
    """The client named by ``X-Forwarded-For`` and ``X-Forwarded-Proto`` (all of their lines, comma-joined)."""
    hops = [parse_node(item) for item in x_forwarded_for.split(",")] if x_forwarded_for is not None else []
    chosen = _client_hop(hops, trusted)
    hop = hops[chosen] if chosen is not None else None
    scheme = None
    if x_forwarded_proto is not None:
        protos = [item.strip().lower() for item in x_forwarded_proto.split(",")]
        proto = protos[chosen] if chosen is not None and len(protos) == len(hops) else protos[-1]
        scheme = proto if proto in _SCHEMES else None
    if hop is None:
        return ForwardedClient(None, None, scheme)
    return ForwardedClient(hop[0], hop[1], scheme)


def from_forwarded(value: str, trusted: TrustedProxies) -> ForwardedClient:
    """The client named by an RFC 7239 ``Forwarded`` header; nothing if it is malformed."""
    try:
        elements = parse_forwarded(value)
    except ValueError:
        return _NOBODY
    hops = [parse_node(element["for"]) if "for" in element else None for element in elements]
    chosen = _client_hop(hops, trusted)
    if chosen is None:
        return _NOBODY
    hop = hops[chosen]
    proto = elements[chosen].get("proto", "").lower()
    scheme = proto if proto in _SCHEMES else None
    if hop is None:
        return ForwardedClient(None, None, scheme)
    return ForwardedClient(hop[0], hop[1], scheme)


def _client_hop(hops: list[Optional[tuple[str, Optional[int]]]], trusted: TrustedProxies) -> Optional[int]:
    """Index of the client's hop: the right-most one that is not a trusted proxy (see the module docstring)."""
    for index in range(len(hops) - 1, -1, -1):
        hop = hops[index]
        if index == 0 or hop is None or hop[0] not in trusted:
            return index
    return None


def parse_node(text: str) -> Optional[tuple[str, Optional[int]]]:
    """``(address, port or None)`` from ``1.2.3.4``, ``1.2.3.4:80``, ``::1``, ``[::1]`` or ``[::1]:80``.

    None for anything that is not an IP address (``unknown``, ``_hidden``, garbage).
    The address comes back normalised (``ipaddress``'s text form).
    """
    text = text.strip()
    port_text = ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host = text
    if "%" in host:
        return None  # a scope id names an interface of the proxy, not a client
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    port = int(port_text) if port_text.isdigit() and port_text.isascii() and int(port_text) <= 65535 else None
    return str(address), port


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_OWS = " \t"


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """The elements of a ``Forwarded`` header, each a dict of lower-cased parameter names.

    Follows RFC 7239 section 4: elements separated by commas, pairs within
    one by semicolons, values tokens or quoted strings (with ``\\`` escapes).

    Raises:
        ValueError: the value breaks that grammar, or repeats a parameter
            within one element (RFC 7239 forbids both).
    """
    elements: list[dict[str, str]] = []
    current: dict[str, str] = {}
    at, end = 0, len(value)
    while True:
        while at < end and value[at] in _OWS:
            at += 1
        if at == end or value[at] == ",":
            if current:
                elements.append(current)
                current = {}
            if at == end:
                return elements
            at += 1
            continue
        if value[at] == ";":
            at += 1
            continue
        start = at
        while at < end and value[at] in _TCHAR:
            at += 1
        name = value[start:at].lower()
        if not name or at == end or value[at] != "=":
            raise ValueError(f"Forwarded: expected name=value at offset {start}")
        at += 1
        if at < end and value[at] == '"':
            pair_value, at = _quoted_string(value, at)
        else:
            start = at
            while at < end and value[at] in _TCHAR:
                at += 1
            pair_value = value[start:at]
            if not pair_value:
                raise ValueError(f"Forwarded: empty value for {name!r}")
        if name in current:
            raise ValueError(f"Forwarded: {name!r} repeated in one element")
        current[name] = pair_value
        while at < end and value[at] in _OWS:
            at += 1
        if at < end and value[at] not in ",;":
            raise ValueError(f"Forwarded: unexpected {value[at]!r} at offset {at}")


def _quoted_string(value: str, at: int) -> tuple[str, int]:
    """The unescaped content of the quoted string opening at ``at``, and the offset after it."""
    out: list[str] = []
    at += 1
    while at < len(value):
        char = value[at]
        if char == '"':
            return "".join(out), at + 1
        if char == "\\":
            at += 1
            if at == len(value):
                break
            char = value[at]
        out.append(char)
        at += 1
    raise ValueError("Forwarded: unterminated quoted string")
