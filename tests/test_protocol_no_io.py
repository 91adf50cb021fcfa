"""The protocol package does no I/O: importing it pulls in neither socket nor gevent.

Checked in fresh interpreters, against a baseline interpreter that imports
only what the protocol layer legitimately needs (httptools and a little of the
stdlib), so that modules the stdlib or httptools import on their own do not
count against it. Importing ``gshutdown.protocol`` normally would first run
``gshutdown/__init__.py`` (the whole server); the check replaces the parent
package with an empty namespace so that only the protocol package's own
imports are measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import gshutdown

PACKAGE_DIR = os.path.dirname(gshutdown.__file__)

BASELINE = "import httptools, collections, typing"

# Load gshutdown.protocol without executing gshutdown/__init__.py.
ISOLATED = f"""
import importlib.machinery, sys, types
parent = types.ModuleType("gshutdown")
parent.__path__ = [{PACKAGE_DIR!r}]
parent.__spec__ = importlib.machinery.ModuleSpec("gshutdown", None, is_package=True)
sys.modules["gshutdown"] = parent
import gshutdown.protocol
parser = gshutdown.protocol.RequestParser()
parser.feed(b"GET / HTTP/1.1\\r\\nHost: h\\r\\n\\r\\n")
assert type(parser.next_event()).__name__ == "Request"
gshutdown.protocol.encode_head(
    "200 OK", [], http_version="1.1", method="GET", keep_alive=True,
    body_length_hint=0, date="d", server="",
)
"""

REPORT = "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"

FORBIDDEN_ROOTS = ("socket", "_socket", "gevent", "greenlet", "selectors", "select", "ssl", "_ssl")


def modules_after(code: str) -> set[str]:
    """Names in sys.modules after running ``code`` in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", code + REPORT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_baseline_itself_has_no_socket_or_gevent() -> None:
    """If this fails, the comparison below would hide nothing: the stdlib changed."""
    baseline = modules_after(BASELINE)
    assert not {m for m in baseline if m.split(".")[0] in FORBIDDEN_ROOTS}


def test_importing_and_using_the_protocol_package_pulls_in_no_socket_or_gevent() -> None:
    baseline = modules_after(BASELINE)
    loaded = modules_after(ISOLATED)
    added = loaded - baseline
    assert "gshutdown.protocol.parser" in added  # the isolation did load the package
    forbidden = sorted(m for m in added if m.split(".")[0] in FORBIDDEN_ROOTS)
    assert forbidden == []
    # Nothing else of gshutdown came along (e.g. conn.py, which owns the socket).
    ours = sorted(m for m in added if m.split(".")[0] == "gshutdown")
    assert ours == [
        "gshutdown",
        "gshutdown.protocol",
        "gshutdown.protocol.events",
        "gshutdown.protocol.parser",
        "gshutdown.protocol.writer",
    ]


# The PROXY header parser and the forwarding-header rules are I/O-free too
# (the first lives in the protocol package, the second beside it).
PURE_MODULES = f"""
import importlib.machinery, sys, types
parent = types.ModuleType("gshutdown")
parent.__path__ = [{PACKAGE_DIR!r}]
parent.__spec__ = importlib.machinery.ModuleSpec("gshutdown", None, is_package=True)
sys.modules["gshutdown"] = parent
from gshutdown.protocol.proxy_protocol import parse_proxy_header
from gshutdown.protocol.forwarded import TrustedProxies, apply_forwarded
assert parse_proxy_header(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\\r\\n")[0].source == ("10.0.0.1", 1)
env = {{"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9"}}
apply_forwarded(env, TrustedProxies("127.0.0.1"))
assert env["REMOTE_ADDR"] == "203.0.113.9"
"""


def test_the_proxy_header_parser_and_forwarding_rules_pull_in_no_socket_or_gevent() -> None:
    added = modules_after(PURE_MODULES) - modules_after(BASELINE)
    assert {"gshutdown.protocol.proxy_protocol", "gshutdown.protocol.forwarded"} <= added
    assert sorted(m for m in added if m.split(".")[0] in FORBIDDEN_ROOTS) == []
