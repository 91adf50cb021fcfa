"""writer.encode_head / chunk / error_response: framing and keep-alive decisions."""

from __future__ import annotations

from typing import Optional

import pytest

from gshutdown.protocol import LAST_CHUNK, ResponseHead, chunk, encode_head, error_response, writer

DATE = "Sun, 06 Nov 1994 08:49:37 GMT"


def head(
    status: str = "200 OK",
    headers: Optional[list[tuple[str, str]]] = None,
    *,
    http_version: str = "1.1",
    method: str = "GET",
    keep_alive: bool = True,
    body_length_hint: Optional[int] = None,
    date: str = DATE,
    server: str = "gshutdown",
) -> ResponseHead:
    return encode_head(
        status,
        [] if headers is None else headers,
        http_version=http_version,
        method=method,
        keep_alive=keep_alive,
        body_length_hint=body_length_hint,
        date=date,
        server=server,
    )


def split_head(data: bytes) -> tuple[str, list[tuple[str, str]]]:
    """(status line, header fields) of an encoded head; checks its framing."""
    assert data.endswith(b"\r\n\r\n")
    assert data.count(b"\r\n\r\n") == 1
    text = data[:-4].decode("latin-1")
    status_line, *lines = text.split("\r\n")
    fields = []
    for line in lines:
        name, sep, value = line.partition(": ")
        assert sep, f"malformed field line {line!r}"
        fields.append((name, value))
    return status_line, fields


def values(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in fields if n.lower() == name.lower()]


# -- status line and added fields ------------------------------------------------


@pytest.mark.parametrize("http_version", ["1.0", "1.1"])
def test_status_line_is_always_http11(http_version: str) -> None:
    status_line, _ = split_head(head("404 Not Found", http_version=http_version).data)
    assert status_line == "HTTP/1.1 404 Not Found"


def test_application_fields_come_first_in_order_then_date_and_server() -> None:
    result = head(headers=[("Content-Type", "text/plain"), ("X-B", "2"), ("X-A", "1")], body_length_hint=0)
    _, fields = split_head(result.data)
    assert fields == [
        ("Content-Type", "text/plain"),
        ("X-B", "2"),
        ("X-A", "1"),
        ("Content-Length", "0"),
        ("Date", DATE),
        ("Server", "gshutdown"),
    ]


def test_date_and_server_set_by_the_application_are_not_duplicated() -> None:
    app_headers = [("date", "Mon, 01 Jan 2024 00:00:00 GMT"), ("SERVER", "mine")]
    _, fields = split_head(head(headers=app_headers, body_length_hint=0).data)
    assert values(fields, "Date") == ["Mon, 01 Jan 2024 00:00:00 GMT"]
    assert values(fields, "Server") == ["mine"]


def test_empty_server_value_sends_no_server_field() -> None:
    _, fields = split_head(head(server="", body_length_hint=0).data)
    assert values(fields, "Server") == []
    assert values(fields, "Date") == [DATE]


def test_header_values_are_encoded_latin1() -> None:
    result = head(headers=[("X-Name", "caf\xe9")], body_length_hint=0)
    assert b"X-Name: caf\xe9\r\n" in result.data


# -- framing --------------------------------------------------------------------


def test_http11_without_a_length_is_chunked_and_kept_alive() -> None:
    result = head()
    _, fields = split_head(result.data)
    assert result.chunked is True
    assert result.content_length is None
    assert result.keep_alive is True
    assert result.send_body is True
    assert values(fields, "Transfer-Encoding") == ["chunked"]
    assert values(fields, "Content-Length") == []
    assert values(fields, "Connection") == []


def test_length_hint_becomes_content_length() -> None:
    result = head(body_length_hint=11)
    _, fields = split_head(result.data)
    assert result.chunked is False
    assert result.content_length == 11
    assert values(fields, "Content-Length") == ["11"]
    assert values(fields, "Transfer-Encoding") == []


def test_application_content_length_wins_over_the_hint() -> None:
    result = head(headers=[("Content-Length", "5")], body_length_hint=99)
    _, fields = split_head(result.data)
    assert result.content_length == 5
    assert values(fields, "Content-Length") == ["5"]
    assert result.chunked is False


@pytest.mark.parametrize(
    ("status", "method"),
    [
        ("200 OK", "HEAD"),
        ("100 Continue", "GET"),
        ("103 Early Hints", "GET"),
        ("204 No Content", "GET"),
        ("304 Not Modified", "GET"),
        ("204 No Content", "POST"),
    ],
)
@pytest.mark.parametrize("http_version", ["1.0", "1.1"])
def test_responses_without_a_body_send_none_and_add_no_framing(status: str, method: str, http_version: str) -> None:
    result = head(status, method=method, http_version=http_version, body_length_hint=42)
    _, fields = split_head(result.data)
    assert result.send_body is False
    assert result.chunked is False
    assert values(fields, "Transfer-Encoding") == []
    assert values(fields, "Content-Length") == []
    # No body to delimit, so nothing forces a close.
    assert result.keep_alive is True
    expected_connection = ["keep-alive"] if http_version == "1.0" else []
    assert values(fields, "Connection") == expected_connection


def test_head_response_keeps_the_applications_content_length() -> None:
    result = head(headers=[("Content-Length", "1234")], method="HEAD")
    _, fields = split_head(result.data)
    assert result.send_body is False
    assert values(fields, "Content-Length") == ["1234"]


def test_get_with_200_sends_body() -> None:
    assert head(method="GET").send_body is True
    assert head("201 Created", method="POST").send_body is True


# -- keep-alive -------------------------------------------------------------------


def test_http11_keep_alive_refused_by_the_server_announces_close() -> None:
    result = head(keep_alive=False, body_length_hint=0)
    _, fields = split_head(result.data)
    assert result.keep_alive is False
    assert values(fields, "Connection") == ["close"]


@pytest.mark.parametrize("value", ["close", "Close", "keep-alive, close"])
@pytest.mark.parametrize("http_version", ["1.0", "1.1"])
def test_application_connection_close_ends_keep_alive(value: str, http_version: str) -> None:
    result = head(headers=[("Connection", value)], http_version=http_version, body_length_hint=0)
    _, fields = split_head(result.data)
    assert result.keep_alive is False
    # The application's field is replaced by the server's own (one at most).
    expected = ["close"] if http_version == "1.1" else []
    assert values(fields, "Connection") == expected


def test_application_connection_keep_alive_does_not_override_the_server() -> None:
    result = head(headers=[("Connection", "keep-alive")], keep_alive=False, body_length_hint=0)
    _, fields = split_head(result.data)
    assert result.keep_alive is False
    assert values(fields, "Connection") == ["close"]


def test_application_connection_keep_alive_on_http11_is_dropped() -> None:
    result = head(headers=[("Connection", "keep-alive")], body_length_hint=0)
    _, fields = split_head(result.data)
    assert result.keep_alive is True
    assert values(fields, "Connection") == []


def test_http10_keep_alive_with_a_length_is_announced() -> None:
    result = head(http_version="1.0", keep_alive=True, body_length_hint=3)
    _, fields = split_head(result.data)
    assert result.keep_alive is True
    assert values(fields, "Connection") == ["keep-alive"]
    assert values(fields, "Content-Length") == ["3"]


def test_http10_without_keep_alive_sends_no_connection_field() -> None:
    result = head(http_version="1.0", keep_alive=False, body_length_hint=3)
    _, fields = split_head(result.data)
    assert result.keep_alive is False
    assert values(fields, "Connection") == []


def test_http10_without_a_length_closes_and_is_never_chunked() -> None:
    result = head(http_version="1.0", keep_alive=True)
    _, fields = split_head(result.data)
    assert result.chunked is False
    assert result.content_length is None
    assert result.keep_alive is False
    assert result.send_body is True
    assert values(fields, "Transfer-Encoding") == []
    assert values(fields, "Connection") == []  # HTTP/1.0 closes by default


# -- chunks and error responses ---------------------------------------------------


@pytest.mark.parametrize("size", [1, 9, 10, 15, 16, 255, 256, 4096, 65537])
def test_chunk_frames_data_with_its_hex_size(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    framed = chunk(data)
    assert framed == f"{size:x}".encode() + b"\r\n" + data + b"\r\n"


def test_last_chunk_ends_a_chunked_body_without_trailers() -> None:
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_error_response_is_complete_and_closes() -> None:
    data = error_response(431, "Request Header Fields Too Large", date=DATE, server="gshutdown")
    head_bytes, sep, body = data.partition(b"\r\n\r\n")
    assert sep
    status_line, fields = split_head(head_bytes + sep)
    assert status_line == "HTTP/1.1 431 Request Header Fields Too Large"
    assert body == b"431 Request Header Fields Too Large\n"
    assert values(fields, "Content-Length") == [str(len(body))]
    assert values(fields, "Connection") == ["close"]
    assert values(fields, "Date") == [DATE]
    assert values(fields, "Server") == ["gshutdown"]
    assert values(fields, "Content-Type") == ["text/plain; charset=utf-8"]


def test_error_response_without_server_value_has_no_server_field() -> None:
    data = error_response(400, "Bad Request", date=DATE, server="")
    _, fields = split_head(data.partition(b"\r\n\r\n")[0] + b"\r\n\r\n")
    assert values(fields, "Server") == []
    assert data.endswith(b"\r\n\r\n400 Bad Request\n")


# -- the cache of prepared heads -------------------------------------------------


def test_a_repeated_head_is_encoded_the_same_and_follows_each_calls_framing() -> None:
    fields = [("Content-Type", "text/plain"), ("Content-Length", "5")]
    first = head(headers=list(fields))
    again = head(headers=list(fields))
    closing = head(headers=list(fields), keep_alive=False)
    http10 = head(headers=list(fields), http_version="1.0")
    later = head(headers=list(fields), date="Mon, 07 Nov 1994 08:49:37 GMT")
    assert first == again
    assert values(split_head(closing.data)[1], "Connection") == ["close"]
    assert not closing.keep_alive
    assert values(split_head(http10.data)[1], "Connection") == ["keep-alive"]
    assert values(split_head(later.data)[1], "Date") == ["Mon, 07 Nov 1994 08:49:37 GMT"]


def test_the_server_value_is_part_of_what_is_remembered() -> None:
    fields = [("Content-Length", "0")]
    assert values(split_head(head(headers=fields, server="a").data)[1], "Server") == ["a"]
    assert values(split_head(head(headers=fields, server="b").data)[1], "Server") == ["b"]
    assert values(split_head(head(headers=fields, server="").data)[1], "Server") == []


def test_unhashable_fields_are_encoded_without_the_cache() -> None:
    fields = [["X-Pair", "list"]]
    data = head(headers=fields, body_length_hint=0).data  # type: ignore[arg-type]
    assert values(split_head(data)[1], "X-Pair") == ["list"]


def test_the_cache_stays_bounded_with_per_response_values() -> None:
    for n in range(writer._MAX_PREPARED * 2):
        head(headers=[("ETag", f'"{n}"'), ("Content-Length", "0")])
        assert len(writer._PREPARED) <= writer._MAX_PREPARED


# -- fields the writer keeps out ----------------------------------------------------------


@pytest.mark.parametrize("status", ["204 No Content"])
def test_content_length_from_the_app_is_dropped_on_204(status: str) -> None:
    """RFC 9110 8.6: never in a 1xx or 204 (1xx never reaches the writer from an app)."""
    result = head(status, [("Content-Length", "0"), ("ETag", '"x"')])
    _, fields = split_head(result.data)
    assert values(fields, "Content-Length") == []
    assert values(fields, "ETag") == ['"x"']
    assert result.content_length is None and result.keep_alive


def test_content_length_is_kept_on_304_and_head() -> None:
    """A 304 or a HEAD response may say how long the body would be."""
    for result in (
        head("304 Not Modified", [("Content-Length", "42")]),
        head(headers=[("Content-Length", "42")], method="HEAD"),
    ):
        _, fields = split_head(result.data)
        assert values(fields, "Content-Length") == ["42"]
        assert result.send_body is False


@pytest.mark.parametrize("http_version", ["1.0", "1.1"])
def test_hop_by_hop_fields_from_the_app_are_dropped(http_version: str) -> None:
    fields_in = [
        ("Keep-Alive", "timeout=99"),
        ("Upgrade", "h2c"),
        ("Connection", "Upgrade, X-Private"),
        ("Proxy-Connection", "close"),
        ("TE", "trailers"),
        ("Trailer", "X-Sum"),
        ("X-Private", "1"),
        ("Content-Length", "0"),
    ]
    result = head(headers=fields_in, http_version=http_version)
    _, fields = split_head(result.data)
    names = [name.lower() for name, _ in fields]
    for name in ("keep-alive", "upgrade", "proxy-connection", "te", "trailer"):
        assert name not in names, result.data
    assert values(fields, "X-Private") == ["1"]
    # The server's own Connection field only: none on HTTP/1.1 keep-alive.
    assert values(fields, "Connection") == ([] if http_version == "1.1" else ["keep-alive"])
    assert result.keep_alive


@pytest.mark.parametrize(
    ("http_version", "keep_alive", "connection"),
    [
        ("1.1", True, "upgrade"),
        ("1.1", False, "close, upgrade"),
        ("1.0", True, "keep-alive, upgrade"),
        ("1.0", False, "upgrade"),
    ],
)
def test_426_keeps_upgrade_and_lists_it_in_connection(http_version: str, keep_alive: bool, connection: str) -> None:
    result = head(
        "426 Upgrade Required",
        [("Upgrade", "websocket"), ("Content-Length", "0")],
        http_version=http_version,
        keep_alive=keep_alive,
    )
    _, fields = split_head(result.data)
    assert values(fields, "Upgrade") == ["websocket"]
    assert values(fields, "Connection") == [connection]
