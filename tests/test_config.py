"""config.py: defaults, validation of negative values, replace()."""

from __future__ import annotations

import dataclasses

import pytest

from gshutdown import Config
from gshutdown.protocol.parser import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_MAX_REQUEST_LINE,
)

NUMERIC_FIELDS = [
    f.name
    for f in dataclasses.fields(Config)
    if isinstance(getattr(Config(), f.name), (int, float)) and not isinstance(getattr(Config(), f.name), bool)
]


def test_defaults_are_present_and_documented_values() -> None:
    config = Config()
    assert dataclasses.asdict(config) == {
        "idle_timeout": 5.0,
        "read_header_timeout": 10.0,
        "read_body_timeout": 30.0,
        "min_body_rate": 500.0,
        "max_body_size": None,
        "write_timeout": 30.0,
        "idle_grace": 0.1,
        "linger_timeout": 2.0,
        "max_discard_body": 256 * 1024,
        "max_request_line": DEFAULT_MAX_REQUEST_LINE,
        "max_header_bytes": DEFAULT_MAX_HEADER_BYTES,
        "max_header_count": DEFAULT_MAX_HEADER_COUNT,
        "max_field_size": None,
        "max_connections": 1000,
        "max_websockets": None,
        "max_websocket_message": 1024 * 1024,
        "max_hijacked": 1000,
        "backlog": 2048,
        "unix_socket_mode": None,
        "keep_alive": True,
        "sendfile": True,
        "server_header": "gshutdown",
        "tune_malloc": True,
        "forwarded_allow_ips": "127.0.0.1,::1",
        "secure_scheme_headers": None,
        "forwarder_headers": ("SCRIPT_NAME", "PATH_INFO"),
        "proxy_headers": True,
        "proxy_protocol": False,
        "certfile": None,
        "keyfile": None,
        "ca_certs": None,
        "cert_reqs": None,
        "ciphers": None,
    }
    assert DEFAULT_MAX_HEADER_BYTES == 64 * 1024


def test_numeric_fields_cover_every_timeout_and_limit() -> None:
    assert set(NUMERIC_FIELDS) >= {
        "idle_timeout",
        "read_header_timeout",
        "read_body_timeout",
        "write_timeout",
        "idle_grace",
        "linger_timeout",
        "max_discard_body",
        "max_request_line",
        "max_header_bytes",
        "max_header_count",
        "max_connections",
        "min_body_rate",
        "backlog",
    }


@pytest.mark.parametrize("name", NUMERIC_FIELDS)
@pytest.mark.parametrize("bad", [-1, -0.001, float("-inf")])
def test_negative_value_is_rejected_naming_the_field(name: str, bad: float) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must not be negative"):
        Config(**{name: bad})


# Zero is a value for these; a count of connections or a rate cannot be zero.
ZERO_IS_A_VALUE = [name for name in NUMERIC_FIELDS if name not in ("max_connections", "min_body_rate")]


@pytest.mark.parametrize("name", ZERO_IS_A_VALUE)
def test_zero_is_accepted(name: str) -> None:
    assert getattr(Config(**{name: 0}), name) == 0


def test_min_body_rate_must_be_more_than_zero_or_none() -> None:
    assert Config(min_body_rate=None).min_body_rate is None
    assert Config(min_body_rate=0.5).min_body_rate == 0.5
    with pytest.raises(ValueError, match="min_body_rate must be more than 0"):
        Config(min_body_rate=0)


def test_unix_socket_mode_is_permission_bits() -> None:
    assert Config(unix_socket_mode=0o660).unix_socket_mode == 0o660
    assert Config(unix_socket_mode=0).unix_socket_mode == 0
    with pytest.raises(ValueError, match="unix_socket_mode must be permission bits"):
        Config(unix_socket_mode=0o1777)
    with pytest.raises(ValueError, match="unix_socket_mode must not be negative"):
        Config(unix_socket_mode=-1)


@pytest.mark.parametrize("name", ["idle_timeout", "read_header_timeout", "read_body_timeout", "write_timeout"])
def test_optional_timeouts_accept_none_for_no_limit(name: str) -> None:
    assert getattr(Config(**{name: None}), name) is None


def test_max_connections_must_be_at_least_one() -> None:
    assert Config(max_connections=1).max_connections == 1
    assert Config(max_connections=None).max_connections is None
    with pytest.raises(ValueError, match="max_connections"):
        Config(max_connections=0)
    with pytest.raises(ValueError, match="max_connections"):
        Config(max_connections=-5)


def test_booleans_and_strings_are_not_range_checked() -> None:
    config = Config(keep_alive=False, server_header="")
    assert config.keep_alive is False
    assert config.server_header == ""


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.idle_timeout = 1.0  # type: ignore[misc]


def test_replace_returns_a_changed_copy() -> None:
    config = Config()
    changed = config.replace(idle_timeout=1.5, max_connections=10, server_header="x")
    assert (changed.idle_timeout, changed.max_connections, changed.server_header) == (1.5, 10, "x")
    assert config.idle_timeout == 5.0
    assert config.max_connections == 1000
    assert changed.read_header_timeout == config.read_header_timeout
    assert changed is not config


def test_replace_validates_like_the_constructor() -> None:
    with pytest.raises(ValueError, match=r"^linger_timeout must not be negative"):
        Config().replace(linger_timeout=-1)
    with pytest.raises(ValueError, match="max_connections"):
        Config().replace(max_connections=0)


def test_replace_with_an_unknown_name_raises_type_error() -> None:
    with pytest.raises(TypeError):
        Config().replace(idle_timout=1.0)


@pytest.mark.parametrize("spec", ["*", "", "10.0.0.0/8,::1", "192.0.2.1"])
def test_forwarded_allow_ips_accepts_addresses_networks_and_star(spec: str) -> None:
    assert Config(forwarded_allow_ips=spec).forwarded_allow_ips == spec


def test_forwarded_allow_ips_rejects_a_bad_entry_naming_it() -> None:
    with pytest.raises(ValueError, match=r"forwarded_allow_ips: 'proxy\.internal' is not"):
        Config(forwarded_allow_ips="127.0.0.1,proxy.internal")


@pytest.mark.parametrize("name", ["keyfile", "ca_certs", "ciphers"])
def test_tls_settings_need_certfile(name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} needs certfile"):
        Config(**{name: "x"})


def test_cert_reqs_values_and_their_need_for_ca_certs() -> None:
    assert Config(certfile="c.pem", cert_reqs="none").cert_reqs == "none"
    assert Config(certfile="c.pem", ca_certs="ca.pem", cert_reqs="optional").cert_reqs == "optional"
    with pytest.raises(ValueError, match="cert_reqs must be one of none, optional, required"):
        Config(certfile="c.pem", cert_reqs="always")
    with pytest.raises(ValueError, match="cert_reqs='required' needs ca_certs"):
        Config(certfile="c.pem", cert_reqs="required")
