"""forwarded.py: who is trusted, how chains are read, what a spoofer gets."""

from __future__ import annotations

import re
from typing import Any, Optional

import pytest

from gshutdown.protocol.forwarded import (
    ForwardedClient,
    TrustedProxies,
    apply_forwarded,
    from_forwarded,
    from_x_forwarded,
    parse_forwarded,
    parse_node,
)

LOOPBACK = TrustedProxies("127.0.0.1,::1")
#: A proxy tier: the load balancers 10.0.0.0/8, the edge 192.0.2.10.
TIER = TrustedProxies("10.0.0.0/8, 192.0.2.10")


# -- TrustedProxies -------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "host", "trusted"),
    [
        ("127.0.0.1,::1", "127.0.0.1", True),
        ("127.0.0.1,::1", "::1", True),
        ("127.0.0.1,::1", "127.0.0.2", False),
        ("127.0.0.1,::1", "::ffff:127.0.0.1", True),  # IPv4 peer on a dual-stack listener
        ("10.0.0.0/8", "10.255.0.1", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("2001:db8::/32", "2001:db8:1::5", True),
        ("2001:db8::/32", "2001:db9::5", False),
        (" 10.0.0.1 , 10.0.0.2 ", "10.0.0.2", True),
        ("*", "198.51.100.1", True),
        ("*", "not-an-address", True),
        ("", "127.0.0.1", False),
        ("10.0.0.0/8", "unknown", False),
        ("10.0.0.0/8", "", False),
    ],
)
def test_trusted_proxies_match_addresses_and_networks(spec: str, host: str, trusted: bool) -> None:
    proxies = TrustedProxies(spec)
    assert (host in proxies) is trusted
    assert (host in proxies) is trusted  # and again, from the cache


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "localhost", "10.0.0.0/33", "1.2.3.4.5", "**"])
def test_trusted_proxies_reject_what_is_not_an_address_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match=rf"forwarded_allow_ips: '{re.escape(bad)}' is not"):
        TrustedProxies(f"127.0.0.1,{bad}")


def test_unix_socket_peers_are_always_trusted_tcp_ones_by_address() -> None:
    nobody = TrustedProxies("")
    assert nobody.trusts_peer("") and nobody.trusts_peer("/run/app.sock")
    assert not nobody.trusts_peer(("127.0.0.1", 5000))
    assert LOOPBACK.trusts_peer(("::1", 5000, 0, 0))
    assert not LOOPBACK.trusts_peer(("192.0.2.1", 5000))


# -- nodes and the Forwarded grammar ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "node"),
    [
        ("192.0.2.60", ("192.0.2.60", None)),
        (" 192.0.2.60 ", ("192.0.2.60", None)),
        ("192.0.2.60:4711", ("192.0.2.60", 4711)),
        ("2001:DB8::17", ("2001:db8::17", None)),
        ("[2001:db8::17]", ("2001:db8::17", None)),
        ("[2001:db8::17]:4711", ("2001:db8::17", 4711)),
        ("[2001:db8::17]:_port", ("2001:db8::17", None)),  # obfuscated port
        ("192.0.2.60:99999", ("192.0.2.60", None)),
        ("unknown", None),
        ("_hidden", None),
        ("", None),
        ("[2001:db8::17", None),
        ("[2001:db8::17]x", None),
        ("fe80::1%eth0", None),
        ("example.com", None),
        ("192.0.2.256", None),
    ],
)
def test_parse_node(text: str, node: Optional[tuple[str, Optional[int]]]) -> None:
    assert parse_node(text) == node


def test_parse_forwarded_follows_rfc_7239() -> None:
    value = 'for=192.0.2.43, For="[2001:db8:cafe::17]:4711";proto=https;by=203.0.113.43,for=unknown'
    assert parse_forwarded(value) == [
        {"for": "192.0.2.43"},
        {"for": "[2001:db8:cafe::17]:4711", "proto": "https", "by": "203.0.113.43"},
        {"for": "unknown"},
    ]


def test_parse_forwarded_quoted_strings_keep_commas_and_escapes() -> None:
    assert parse_forwarded(r'for="a,b\"c";host="x;y"') == [{"for": 'a,b"c', "host": "x;y"}]


def test_parse_forwarded_tolerates_empty_list_items_and_whitespace() -> None:
    assert parse_forwarded(" , for=1.2.3.4 ; proto=http ,, ") == [{"for": "1.2.3.4", "proto": "http"}]


@pytest.mark.parametrize(
    "value",
    [
        "for",  # no value
        "for=",  # empty value
        "=1.2.3.4",  # no name
        "for=1.2.3.4 proto=http",  # pairs without ;
        'for="1.2.3.4',  # unterminated quoted string
        "for=1.2.3.4;for=5.6.7.8",  # repeated in one element
        "for=[::1]",  # brackets need quoting: not a token
        "for=1.2.3.4/",  # not a token character
    ],
)
def test_parse_forwarded_rejects_what_breaks_the_grammar(value: str) -> None:
    with pytest.raises(ValueError, match="Forwarded"):
        parse_forwarded(value)


# -- chains ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x_forwarded_for", "client"),
    [
        ("203.0.113.9", "203.0.113.9"),
        # The client wrote the left part: everything right of it is our tier.
        ("6.6.6.6, 203.0.113.9, 10.1.1.1", "203.0.113.9"),
        ("6.6.6.6, 203.0.113.9, 192.0.2.10, 10.1.1.1", "203.0.113.9"),
        # All trusted: the left-most is the client (an internal caller).
        ("10.2.2.2, 10.1.1.1", "10.2.2.2"),
        # A spoofed "trusted" address on the left changes nothing.
        ("10.9.9.9, 203.0.113.9, 10.1.1.1", "203.0.113.9"),
        ("[2001:db8::9]:1234, 10.1.1.1", "2001:db8::9"),
    ],
)
def test_x_forwarded_for_chain_is_read_from_the_right(x_forwarded_for: str, client: str) -> None:
    assert from_x_forwarded(x_forwarded_for, None, TIER).host == client


def test_x_forwarded_for_hop_that_is_not_an_address_ends_the_walk_with_no_client() -> None:
    assert from_x_forwarded("203.0.113.9, unknown, 10.1.1.1", None, TIER) == ForwardedClient(None, None, None)
    assert from_x_forwarded("garbage<>", None, TIER).host is None


def test_x_forwarded_for_port_is_kept_when_the_hop_has_one() -> None:
    assert from_x_forwarded("203.0.113.9:5555", None, TIER) == ForwardedClient("203.0.113.9", 5555, None)


@pytest.mark.parametrize(
    ("x_for", "x_proto", "scheme"),
    [
        (None, "https", "https"),
        ("203.0.113.9", "HTTPS", "https"),
        ("203.0.113.9", " http ", "http"),
        # One entry per hop: the client's hop decides.
        ("203.0.113.9, 10.1.1.1", "https, http", "https"),
        # The client spoofed an entry: its own hop is the untrusted one.
        ("6.6.6.6, 203.0.113.9, 10.1.1.1", "http, https, http", "https"),
        # Counts differ: the nearest proxy's word.
        ("6.6.6.6, 203.0.113.9", "https, http, https", "https"),
        ("203.0.113.9", "wss", None),
        ("203.0.113.9", "ftp", None),
    ],
)
def test_x_forwarded_proto_goes_with_the_hop(x_for: Optional[str], x_proto: str, scheme: Optional[str]) -> None:
    assert from_x_forwarded(x_for, x_proto, TIER).scheme == scheme


def test_forwarded_chain_and_proto_of_the_chosen_element() -> None:
    value = 'for=6.6.6.6;proto=http, for="[2001:db8::9]:4711";proto=https, for=10.1.1.1;proto=http'
    assert from_forwarded(value, TIER) == ForwardedClient("2001:db8::9", 4711, "https")


def test_forwarded_element_without_for_or_with_an_obfuscated_node_names_no_client() -> None:
    assert from_forwarded("proto=https", TIER) == ForwardedClient(None, None, "https")
    assert from_forwarded("for=_hidden;proto=https, for=10.1.1.1", TIER) == ForwardedClient(None, None, "https")


def test_malformed_forwarded_is_ignored_whole() -> None:
    assert from_forwarded('for=203.0.113.9;proto=https, for="10.1.1.1', TIER) == ForwardedClient(None, None, None)


# -- the environ ----------------------------------------------------------------------


def environ(**headers: str) -> dict[str, Any]:
    env: dict[str, Any] = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "wsgi.url_scheme": "http"}
    env.update({f"HTTP_{name.upper()}": value for name, value in headers.items()})
    return env


def test_apply_sets_address_and_scheme_and_drops_the_proxy_port() -> None:
    env = environ(x_forwarded_for="203.0.113.9", x_forwarded_proto="https")
    apply_forwarded(env, LOOPBACK)
    assert (env["REMOTE_ADDR"], env.get("REMOTE_PORT"), env["wsgi.url_scheme"]) == ("203.0.113.9", None, "https")


def test_apply_with_a_port_from_forwarded() -> None:
    env = environ(forwarded='for="198.51.100.17:6000";proto=https')
    apply_forwarded(env, LOOPBACK)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["wsgi.url_scheme"]) == ("198.51.100.17", "6000", "https")


def test_apply_prefers_x_forwarded_and_ignores_a_spoofed_forwarded() -> None:
    # The proxy (nginx) set X-Forwarded-For and passed the client's own Forwarded through.
    env = environ(x_forwarded_for="203.0.113.9", forwarded="for=6.6.6.6;proto=https")
    apply_forwarded(env, LOOPBACK)
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("203.0.113.9", "http")


def test_apply_with_only_x_forwarded_proto_keeps_the_peer() -> None:
    env = environ(x_forwarded_proto="https", forwarded="for=6.6.6.6")
    apply_forwarded(env, LOOPBACK)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["wsgi.url_scheme"]) == ("127.0.0.1", "40000", "https")


def test_apply_leaves_an_environ_without_forwarding_headers_as_it_is() -> None:
    env = environ(user_agent="curl")
    apply_forwarded(env, LOOPBACK)
    assert env == environ(user_agent="curl")
