"""Access log lines: gunicorn's format atoms, or one JSON object per request.

``--access-log-format`` takes gunicorn's ``access_log_format`` strings
unchanged, e.g. ``'%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'``:

==========  ==============================================================
``h``       remote address           ``l``  ``-``
``u``       user (REMOTE_USER)       ``t``  request time, ``[10/Oct/2026:13:55:36 +0000]``
``r``       request line             ``m``  method
``U``       path, no query           ``q``  query string
``H``       protocol                 ``s``  status
``B``       body bytes               ``b``  body bytes, ``-`` for none
``f``       referer                  ``a``  user agent
``T``       seconds (whole)          ``M``  milliseconds (whole)
``D``       microseconds (whole)     ``L``  seconds (decimal)
``p``       process id               ``{name}i``  request header
``{name}o`` response header          ``{name}e``  environ variable
==========  ==============================================================

``json`` writes one object per request with the same facts, response time
included (``duration_s``, seconds).

Every atom is escaped as nginx escapes its access log, so that a client cannot
forge a line or a field, or reach the terminal of whoever reads the log: bytes
below 0x20, 0x7f, C1 controls, bytes that are not UTF-8, ``"`` and ``\\``
become ``\\xHH`` (uppercase hex, ``/a%0d%0a`` logs as ``/a\\x0D\\x0A``); UTF-8
text stays text. JSON escapes by itself.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Iterator, Mapping, Optional

#: The application's request lines (``--access-log``).
access_log = logging.getLogger("gshutdown.access")

#: The Common Log Format, gshutdown's default.
COMMON_FORMAT = '%(h)s - %(u)s %(t)s "%(r)s" %(s)s %(B)s'

#: ``emit(environ, status line, response headers, body bytes sent, seconds)``.
AccessEmit = Callable[[dict[str, Any], str, list[tuple[str, str]], int, float], None]


def _escapes() -> dict[int, str]:
    """``str.translate`` table: code point -> the ``\\xHH`` escape of the bytes it stands for."""
    table = {c: f"\\x{c:02X}" for c in (*range(0x20), 0x22, 0x5C, 0x7F)}
    # C1 controls (8-bit CSI is 0x9B) arrive from UTF-8 as U+0080..U+009F: escape their two bytes.
    table.update({c: f"\\xC2\\x{c:02X}" for c in range(0x80, 0xA0)})
    # Bytes that are not UTF-8, as surrogateescape decodes them (U+DC80..U+DCFF).
    table.update({0xDC00 + b: f"\\x{b:02X}" for b in range(0x80, 0x100)})
    return table


_ESCAPES = _escapes()


def escape(value: str) -> str:
    """``value`` made safe for one access-log line, nginx style (see the module docstring).

    WSGI strings carry request bytes one per code point (latin-1), so those are
    decoded as UTF-8 first; a string holding wider characters (an environ value
    the application set) is text already, and only its controls are escaped.
    """
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return value  # the usual case: printable ASCII with nothing to escape
    try:
        value = value.encode("latin-1").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        pass
    return value.translate(_ESCAPES)


class _Atoms(Mapping[str, str]):
    """The atoms of one request, computed only when the format asks for them, escaped."""

    __slots__ = ("_environ", "_headers", "_seconds", "_sent", "_status")

    def __init__(
        self, environ: dict[str, Any], status: str, headers: list[tuple[str, str]], sent: int, seconds: float
    ) -> None:
        self._environ = environ
        self._status = status
        self._headers = headers
        self._sent = sent
        self._seconds = seconds

    def __getitem__(self, key: str) -> str:
        env = self._environ
        if key.startswith("{") and len(key) > 3 and key[-2] == "}":
            name, kind = key[1:-2], key[-1]
            if kind == "i":
                value = env.get("HTTP_" + name.upper().replace("-", "_"))
                if value is None and name.lower() in ("content-type", "content-length"):
                    value = env.get(name.upper().replace("-", "_"))
            elif kind == "o":
                lname = name.lower()
                value = next((v for n, v in self._headers if n.lower() == lname), None)
            elif kind == "e":
                value = env.get(name)
            else:
                raise KeyError(key)
            return "-" if value is None else escape(str(value))
        atom = _ATOMS.get(key)
        if atom is None:
            raise KeyError(key)
        value = atom(self)
        # escape()'s first test, inlined: it runs for most atoms of every line.
        if key in _OWN_ATOMS or (value.isascii() and value.isprintable() and '"' not in value and "\\" not in value):
            return value
        return escape(value)

    def __iter__(self) -> Iterator[str]:
        return iter(_ATOMS)

    def __len__(self) -> int:
        return len(_ATOMS)

    # -- the facts the atoms are made of --

    def started(self) -> float:
        return time.time() - self._seconds

    def request_line(self) -> str:
        env = self._environ
        return f"{env['REQUEST_METHOD']} {env.get('RAW_URI', env['PATH_INFO'])} {env['SERVER_PROTOCOL']}"


def _header(env: Mapping[str, Any], key: str) -> str:
    value = env.get(key)
    return "-" if value is None else str(value)


_ATOMS: dict[str, Callable[[_Atoms], str]] = {
    "h": lambda a: a._environ.get("REMOTE_ADDR") or "-",
    "l": lambda a: "-",
    "u": lambda a: a._environ.get("REMOTE_USER") or "-",
    "t": lambda a: time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(a.started())),
    "r": lambda a: a.request_line(),
    "m": lambda a: a._environ["REQUEST_METHOD"],
    "U": lambda a: a._environ["PATH_INFO"],
    "q": lambda a: a._environ.get("QUERY_STRING", ""),
    "H": lambda a: a._environ["SERVER_PROTOCOL"],
    "s": lambda a: a._status[:3] or "-",
    "B": lambda a: str(a._sent),
    "b": lambda a: str(a._sent) if a._sent else "-",
    "f": lambda a: _header(a._environ, "HTTP_REFERER"),
    "a": lambda a: _header(a._environ, "HTTP_USER_AGENT"),
    "T": lambda a: str(int(a._seconds)),
    "M": lambda a: str(int(a._seconds * 1000)),
    "D": lambda a: str(int(a._seconds * 1_000_000)),
    "L": lambda a: f"{a._seconds:.6f}",
    "p": lambda a: f"<{os.getpid()}>",
}

#: Atoms made of numbers and time only, never of request data: nothing to escape.
_OWN_ATOMS = frozenset("ltBbTMDLp")


def check(fmt: str) -> None:
    """Raise ValueError unless ``fmt`` is ``json`` or a format of known atoms."""
    if fmt == "json":
        return
    sample = _Atoms(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_PROTOCOL": "HTTP/1.1", "QUERY_STRING": ""},
        "200 OK",
        [],
        0,
        0.0,
    )
    try:
        fmt % sample
    except KeyError as exc:
        raise ValueError(f"unknown access log atom %({exc.args[0]})s") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad access log format: {exc}") from None


def emitter(fmt: Optional[str], logger: logging.Logger) -> AccessEmit:
    """An ``AccessEmit`` writing one line per request in ``fmt`` (None: Common Log Format) to ``logger``."""
    if fmt == "json":

        def emit_json(
            environ: dict[str, Any], status: str, headers: list[tuple[str, str]], sent: int, seconds: float
        ) -> None:
            atoms = _Atoms(environ, status, headers, sent, seconds)
            record = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(atoms.started())),
                "remote_addr": environ.get("REMOTE_ADDR") or None,
                "method": environ["REQUEST_METHOD"],
                "path": environ["PATH_INFO"],
                "query": environ.get("QUERY_STRING", ""),
                "protocol": environ["SERVER_PROTOCOL"],
                "status": int(status[:3]) if status[:3].isdigit() else None,
                "bytes": sent,
                "referer": environ.get("HTTP_REFERER"),
                "user_agent": environ.get("HTTP_USER_AGENT"),
                "duration_s": round(seconds, 6),
                "pid": os.getpid(),
            }
            logger.info("%s", json.dumps(record, separators=(",", ":")))

        return emit_json
    line = fmt or COMMON_FORMAT

    def emit(environ: dict[str, Any], status: str, headers: list[tuple[str, str]], sent: int, seconds: float) -> None:
        logger.info("%s", line % _Atoms(environ, status, headers, sent, seconds))

    return emit
