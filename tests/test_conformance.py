"""Data-driven parser conformance: tests/conformance/{valid,invalid}/NNN.http + NNN.py.

See tests/conformance/README.md for the file format. Every case is fed whole,
byte by byte, and in 7-byte pieces; all three must give the same result.
"""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any, Optional

import pytest

from gshutdown.protocol import ConnectionClosed, Data, EndOfMessage, Event, ProtocolError, Request, RequestParser

CORPUS = Path(__file__).parent / "conformance"
VALID = sorted((CORPUS / "valid").glob("*.http"))
INVALID = sorted((CORPUS / "invalid").glob("*.http"))
STEPS = [None, 1, 7]


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def expectation(path: Path) -> dict[str, Any]:
    return runpy.run_path(str(path.with_suffix(".py")))


def feed(
    data: bytes, step: Optional[int], limits: Optional[dict[str, int]] = None
) -> tuple[list[Event], RequestParser]:
    parser = RequestParser(**(limits or {}))
    events: list[Event] = []
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        parser.feed(piece)
        while (event := parser.next_event()) is not None:
            events.append(event)
    return events, parser


def requests_of(events: list[Event]) -> tuple[list[dict[str, Any]], list[Event]]:
    """Complete requests as dicts shaped like the corpus's, and the events left after them."""
    out: list[dict[str, Any]] = []
    current: Optional[dict[str, Any]] = None
    start = 0  # where the request being assembled began
    for i, event in enumerate(events):
        kind = type(event)
        if kind is Request and current is None:
            start = i
            current = {
                "method": event.method,
                "target": event.target,
                "version": event.http_version,
                "headers": event.headers,
                "keep_alive": event.keep_alive,
                "body": b"",
                "has_body": event.has_body,
                "expect_continue": event.expect_continue,
                "upgrade": event.upgrade,
            }
        elif kind is Data and current is not None:
            current["body"] += event.data
        elif kind is EndOfMessage and current is not None:
            out.append(current)
            current = None
        else:
            return out, events[i if current is None else start :]
    return out, [] if current is None else events[start:]


def normalised(expected: dict[str, Any]) -> dict[str, Any]:
    body = expected.get("body", b"")
    return {
        "method": expected["method"],
        "target": expected["target"],
        "version": expected["version"],
        "headers": expected["headers"],
        "keep_alive": expected["keep_alive"],
        "body": body,
        "has_body": expected.get("has_body", bool(body)),
        "expect_continue": expected.get("expect_continue", False),
        "upgrade": expected.get("upgrade", False),
    }


def test_corpus_is_present_and_paired() -> None:
    assert len(VALID) >= 20
    assert len(INVALID) >= 30
    for path in VALID + INVALID:
        assert path.with_suffix(".py").is_file(), f"{path.name} has no expectation file"
    for sub in ("valid", "invalid"):
        for py in (CORPUS / sub).glob("*.py"):
            assert py.with_suffix(".http").is_file(), f"{py.name} has no .http file"


@pytest.mark.parametrize("path", VALID, ids=_ids(VALID))
def test_valid_files_use_crlf_line_ends(path: Path) -> None:
    """Catches a .http file whose CRLFs an editor or checkout turned into LF."""
    data = path.read_bytes()
    assert b"\r\n" in data
    assert data.count(b"\n") == data.count(b"\r\n"), "bare LF in a valid request file"


@pytest.mark.parametrize("step", STEPS, ids=["whole", "bytewise", "by7"])
@pytest.mark.parametrize("path", VALID, ids=_ids(VALID))
def test_valid_request(path: Path, step: Optional[int]) -> None:
    expected = expectation(path)
    events, parser = feed(path.read_bytes(), step)
    got, rest = requests_of(events)
    assert rest == []
    assert got == [normalised(r) for r in expected["requests"]]
    tunnel = expected.get("tunnel")
    if tunnel is not None:
        assert parser.finished
        assert parser.tunnel_bytes == tunnel
    else:
        assert not parser.finished
        assert not parser.in_message
        parser.feed(b"")
        assert parser.next_event() == ConnectionClosed(mid_message=False)


@pytest.mark.parametrize("step", STEPS, ids=["whole", "bytewise", "by7"])
@pytest.mark.parametrize("path", INVALID, ids=_ids(INVALID))
def test_invalid_request(path: Path, step: Optional[int]) -> None:
    expected = expectation(path)
    events, parser = feed(path.read_bytes(), step, expected.get("limits"))
    got, rest = requests_of(events)
    assert len(got) == expected.get("complete", 0)
    if expected.get("head_accepted", False):
        assert [type(e) for e in rest if type(e) is not Data][:1] == [Request], rest
        rest = [e for e in rest[1:] if type(e) is not Data]
    assert rest == [ProtocolError(expected["status"], rest[-1].reason if rest else "")], rest
    assert rest[0].reason
    assert parser.finished
    # Nothing more is parsed once the error is out.
    parser.feed(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
    parser.feed(b"")
    assert parser.next_event() is None
