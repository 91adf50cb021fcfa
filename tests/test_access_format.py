"""``gshutdown.wsgi.access_format``: no access-log atom can forge a line, a field or a terminal escape.

Decoded request data (the path, headers, environ values) is escaped as nginx
escapes its access log: ``\\xHH`` for bytes below 0x20, 0x7f, C1 controls,
bytes that are not UTF-8, ``"`` and ``\\``. Lines are checked from requests
through a real server, and end to end through ``gshutdown --access-log -``.
"""

from __future__ import annotations

import io
import json
import logging
import re
import signal
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

from gshutdown.wsgi import access_format
from gshutdown.wsgi.access_format import escape
from gshutdown.wsgi.middleware import AccessLog
from tests.helpers import ServerThread, read_response, wait_until
from tests.process_helpers import PROBE, free_port, start_gshutdown
from tests.process_helpers import connect as connect_to_process
from tests.process_helpers import read_response as read_process_response

# -- escape() -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "logged"),
    [
        ("/a\r\nFAKE\x1b[31m", "/a\\x0D\\x0AFAKE\\x1B[31m"),
        ("\x00\t\x1f\x7f", "\\x00\\x09\\x1F\\x7F"),
        ('x" 200 5 "y', "x\\x22 200 5 \\x22y"),  # a quote would end a quoted field
        ("C:\\x0D", "C:\\x5Cx0D"),  # a literal backslash cannot pass for an escape
        ("/\xff\xfe", "/\\xFF\\xFE"),  # WSGI latin-1 strings: bytes that are not UTF-8
        ("/caf\xc3\xa9", "/café"),  # UTF-8 stays text
        ("\xc2\x9b31m", "\\xC2\\x9B31m"),  # C1 CSI, the 8-bit terminal escape
        ("€ \n\u009b", "€ \\x0A\\xC2\\x9B"),  # wider text (an app's environ value): controls only
        ("GET /items/42?page=2 HTTP/1.1", "GET /items/42?page=2 HTTP/1.1"),
        ("", ""),
    ],
)
def test_escape_writes_unsafe_bytes_as_uppercase_hex(value: str, logged: str) -> None:
    assert escape(value) == logged


# -- lines from real requests -------------------------------------------------------

#: ``/a%0d%0aFAKE%1b[31m`` then a byte that is not UTF-8, then ``é``, then C1 CSI.
HOSTILE_TARGET = b"/a%0d%0aFAKE%1b[31m%ff%c3%a9%c2%9b?q=%0a"
HOSTILE_REQUEST = (
    b"GET " + HOSTILE_TARGET + b" HTTP/1.1\r\nHost: a\r\n"
    b'X-Data: \xff\t"x\r\n'
    b'User-Agent: a" 200 0 "forged\\\r\n'
    b"Referer: \x80\r\n"
    b"\r\n"
)
ESCAPED_PATH = "/a\\x0D\\x0AFAKE\\x1B[31m\\xFFé\\xC2\\x9B"
COMBINED = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
#: Every atom that carries request or application data, one field each.
EVERY_DATA_ATOM = " | ".join(
    f"%({atom})s"
    for atom in ("h", "u", "r", "m", "U", "q", "H", "s", "f", "a", "{X-Data}i", "{X-Echo}o", "{app.note}e")
)


def echo_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    environ["app.note"] = "note\r\nFAKE \x1b]0;title\x07"  # what an app may put in its environ
    environ["REMOTE_USER"] = "bob\nroot"
    start_response("200 OK", [("Content-Length", "2"), ("X-Echo", '\xff"')])
    return [b"ok"]


@pytest.fixture
def log_stream() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(f"tests.access_format.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def logged_line(fmt: Optional[str], logger: logging.Logger, stream: io.StringIO) -> str:
    """The access-log output of HOSTILE_REQUEST through a real server, checked to be one line."""
    with ServerThread(AccessLog(echo_app, access_format.emitter(fmt, logger))) as server, server.connect() as sock:
        sock.sendall(HOSTILE_REQUEST)
        assert read_response(sock)[0] == 200
        wait_until(lambda: stream.getvalue().endswith("\n"))
    output = stream.getvalue()
    assert output.count("\n") == 1 and "\r" not in output
    line = output[:-1]
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\udc80-\udcff]", line)
    return line


def test_the_common_log_format_stays_one_line_whatever_the_app_sets(
    log_stream: tuple[logging.Logger, io.StringIO],
) -> None:
    line = logged_line(None, *log_stream)
    assert f'"GET {HOSTILE_TARGET.decode()} HTTP/1.1"' in line  # %(r)s is the raw target: nothing to escape
    assert "bob\\x0Aroot" in line


def test_gunicorns_combined_format_cannot_forge_a_field(log_stream: tuple[logging.Logger, io.StringIO]) -> None:
    line = logged_line(COMBINED, *log_stream)
    assert line.endswith(' 200 2 "\\x80" "a\\x22 200 0 \\x22forged\\x5C"')
    assert line.count('"') == 6  # the three quoted fields of the format, no more


def test_every_atom_carrying_request_or_app_data_is_escaped(log_stream: tuple[logging.Logger, io.StringIO]) -> None:
    line = logged_line(EVERY_DATA_ATOM, *log_stream)
    assert line.split(" | ") == [
        "127.0.0.1",
        "bob\\x0Aroot",
        f"GET {HOSTILE_TARGET.decode()} HTTP/1.1",
        "GET",
        ESCAPED_PATH,
        "q=%0a",
        "HTTP/1.1",
        "200",
        "\\x80",
        "a\\x22 200 0 \\x22forged\\x5C",
        "\\xFF\\x09\\x22x",
        "\\xFF\\x22",
        "note\\x0D\\x0AFAKE \\x1B]0;title\\x07",
    ]


def test_json_lines_stay_one_line_and_give_back_the_decoded_path(
    log_stream: tuple[logging.Logger, io.StringIO],
) -> None:
    """JSON escapes by itself; this guards that it stays so."""
    record = json.loads(logged_line("json", *log_stream))
    assert record["path"] == "/a\r\nFAKE\x1b[31m\xff\xc3\xa9\xc2\x9b"
    assert record["user_agent"] == 'a" 200 0 "forged\\'


# -- end to end ----------------------------------------------------------------


def test_gshutdown_access_log_writes_a_decoded_crlf_esc_path_escaped_on_one_line(tmp_path: Path) -> None:
    port = free_port()
    with start_gshutdown(
        tmp_path / "log",
        "--access-log",
        "-",
        "--access-log-format",
        "%(U)s %(s)s",
        "--bind",
        f"127.0.0.1:{port}",
        PROBE,
    ) as server:
        with connect_to_process(port) as sock:
            sock.sendall(b"GET /a%0d%0aFAKE%1b[31m HTTP/1.1\r\nHost: a\r\n\r\n")
            status = read_process_response(sock)[0]
        server.wait_for_log(rf"^/a\\x0D\\x0AFAKE\\x1B\[31m {status}$")
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    log = server.log()
    assert "\x1b" not in log
    assert not any(logged.startswith("FAKE") for logged in log.splitlines())
