"""Parsers of setting values: text in, a typed value out, or ``SettingError``.

Each takes the text a user wrote (on the command line, in the environment,
or in a configuration file as a string) and returns the value the settings
hold, in the unit their names give (seconds, bytes, counts).
"""

from __future__ import annotations

from typing import Any, Optional

from gshutdown.protocol.forwarded import TrustedProxies


class SettingError(ValueError):
    """A bad value or name: one line for the user, exit status 2."""


_YES = ("1", "true", "yes", "on")
_NO = ("", "0", "false", "no", "off")


def yes_no(text: str) -> bool:
    """1/true/yes/on or 0/false/no/off (an empty value is off)."""
    value = text.strip().lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise SettingError(f"want 1/true/yes/on or 0/false/no/off, not {text!r}")


def _number_of_seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SettingError(f"not a number of seconds: {text!r}") from None


def seconds(text: str) -> float:
    value = _number_of_seconds(text)
    if value < 0 or value != value:
        raise SettingError(f"must be zero or more seconds: {text!r}")
    return value


def milliseconds(text: str) -> float:
    """Milliseconds where the user writes them, seconds inside."""
    return seconds(text) / 1000


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SettingError(f"not a whole number: {text!r}") from None
    if value < minimum:
        raise SettingError(f"must be at least {minimum}: {text!r}")
    return value


def count(text: str) -> int:
    return _whole_number(text, 1)


def count_or_zero(text: str) -> int:
    return _whole_number(text, 0)


def optional_count(text: str) -> Optional[int]:
    """A count of at least 1, or ``none`` for no limit."""
    if text.strip().lower() == "none":
        return None
    return count(text)


def limit_seconds(text: str) -> Optional[float]:
    """A timeout of more than 0 seconds, or ``none`` for no limit (0 would read as either)."""
    if text.strip().lower() == "none":
        return None
    value = _number_of_seconds(text)
    if not value > 0:  # NaN included
        raise SettingError(f"must be more than 0 seconds, or 'none' for no limit: {text!r}")
    return value


def socket_mode(text: str) -> int:
    """Permission bits, octal: 000 to 777."""
    value = octal(text)
    if not 0 <= value <= 0o777:
        raise SettingError(f"permission bits go from 000 to 777: {text!r}")
    return value


def octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise SettingError(f"not an octal mode: {text!r}") from None


def text(value: str) -> str:
    return value


def optional_text(value: str) -> Optional[str]:
    return value or None


def name_value(value: str) -> str:
    """``NAME=VALUE`` for the environment."""
    if "=" not in value or value.startswith("="):
        raise SettingError(f"want NAME=VALUE, not {value!r}")
    return value


def log_level(value: str) -> str:
    level = value.lower()
    if level not in ("debug", "info", "warning", "error", "critical"):
        raise SettingError(f"not a log level (debug, info, warning, error, critical): {value!r}")
    return level


def trusted_peers(value: str) -> str:
    """``*`` or comma-separated addresses and CIDR networks (checked, kept as text)."""
    try:
        TrustedProxies(value)
    except ValueError as exc:
        raise SettingError(str(exc).removeprefix("forwarded_allow_ips: ")) from None
    return value


def client_certificates(value: str) -> Optional[str]:
    """``none``, ``optional`` or ``required`` (gunicorn's 0, 1, 2)."""
    choice = {"0": "none", "1": "optional", "2": "required"}.get(value.strip(), value.strip().lower())
    if choice not in ("none", "optional", "required"):
        raise SettingError(f"want none, optional or required, not {value!r}")
    return choice


def bind_address(value: str) -> Any:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or ``unix:PATH`` to a listener."""
    if value.startswith("unix:"):
        if len(value) == 5:
            raise SettingError("unix: needs a path")
        return value
    host, sep, port = value.rpartition(":")
    if not sep:
        raise SettingError(f"bad address {value!r} (want HOST:PORT, [::1]:PORT or unix:PATH)")
    if host.startswith("["):
        if not host.endswith("]"):
            raise SettingError(f"bad address {value!r}")
        host = host[1:-1]
    elif ":" in host:
        raise SettingError(f"bad address {value!r} (put IPv6 addresses in brackets)")
    try:
        number = int(port)
    except ValueError:
        raise SettingError(f"bad port in {value!r}") from None
    if not 0 <= number <= 65535:
        raise SettingError(f"port out of range in {value!r}")
    return (host or "0.0.0.0", number)


def scheme_header(value: str) -> tuple[str, str]:
    """``NAME=VALUE``: a header a trusted proxy sets, and the value that means HTTPS (gunicorn's form)."""
    name, sep, wanted = value.partition("=")
    name = name.strip()
    if not sep or not name or not all(char.isalnum() or char in "-_" for char in name):
        raise SettingError(f"want HEADER=VALUE (e.g. X-FORWARDED-PROTO=https), not {value!r}")
    return name.upper(), wanted


def header_names(value: str) -> str:
    """Comma-separated header names, upper-cased as gunicorn compares them (``*``: any)."""
    names = [name.strip().upper() for name in value.split(",") if name.strip()]
    for name in names:
        if name != "*" and not all(char.isalnum() or char in "-_" for char in name):
            raise SettingError(f"not a header name: {name!r}")
    return ",".join(names)


def directories(value: str) -> Optional[str]:
    """Comma-separated directories (kept as text; made absolute where they are used)."""
    return ",".join(part.strip() for part in value.split(",") if part.strip()) or None
