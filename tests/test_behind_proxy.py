"""Behind a proxy: forwarding headers and the PROXY protocol, from trusted and untrusted peers.

Two loopback addresses play the two kinds of peer: with
``forwarded_allow_ips="127.0.0.1"``, a client bound to 127.0.0.1 is the
trusted proxy and one bound to 127.0.0.2 is anyone else. The matrix runs
against real ``gshutdown.run()`` processes; the PROXY protocol's finer
points (split headers, deadlines, shutdown, TLS after it) against an
in-process server.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import struct
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

from gshutdown import ConnState
from gshutdown.protocol.proxy_protocol import PP2_TYPE_AUTHORITY, PP2_TYPE_AWS, V2_SIGNATURE
from tests.helpers import ServerThread, read_response, recv_until_closed, wait_until
from tests.process_helpers import GProcess, free_port, start_embedded
from tests.tls_helpers import TLSFiles, tls_connect

Serve = Callable[..., ServerThread]
TRUSTED, UNTRUSTED = "127.0.0.1", "127.0.0.2"


def request(headers: str = "", path: str = "/client") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n".encode()


def ask(port: int, source: str, data: bytes, *, host: str = "127.0.0.1") -> tuple[int, dict[str, Any]]:
    """Send ``data`` from ``source`` on a new connection; the status and the JSON answer."""
    with socket.create_connection((host, port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(data)
        status, _, body = read_response(sock, timeout=10)
    return status, json.loads(body) if status == 200 else {}


def v1(source: str, port: int) -> bytes:
    return f"PROXY TCP4 {source} 192.0.2.1 {port} 443\r\n".encode()


def v2(source: str, port: int, tlvs: bytes = b"", *, command: int = 1) -> bytes:
    block = ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address("192.0.2.1").packed
    block += struct.pack("!HH", port, 443) + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, 0x11]) + struct.pack("!H", len(block)) + block


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


# -- the header matrix, in a real process ------------------------------------------------


@pytest.fixture(scope="module")
def header_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    log = tmp_path_factory.mktemp("headers") / "log"
    with start_embedded(log, ["127.0.0.1", port], forwarded_allow_ips=TRUSTED):
        yield port


SPOOFED_FORWARDED = "Forwarded: for=6.6.6.6;proto=https\r\n"

# (headers, what the trusted peer gets: REMOTE_ADDR, REMOTE_PORT given?, scheme)
HEADER_CASES = {
    "x-forwarded-for": ("X-Forwarded-For: 203.0.113.9\r\n", ("203.0.113.9", False, "http")),
    "x-forwarded-for with port": ("X-Forwarded-For: 203.0.113.9:5555\r\n", ("203.0.113.9", True, "http")),
    "x-forwarded-proto": ("X-Forwarded-Proto: https\r\n", (TRUSTED, True, "https")),
    "both": ("X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n", ("203.0.113.9", False, "https")),
    "forwarded": ('Forwarded: for="[2001:db8::9]:4711";proto=https\r\n', ("2001:db8::9", True, "https")),
    # The client wrote the left part: the walk stops at the first untrusted hop.
    "spoofed chain": ("X-Forwarded-For: 6.6.6.6, 203.0.113.9\r\n", ("203.0.113.9", False, "http")),
    # The proxy set X-Forwarded-For and passed the client's Forwarded on: not believed.
    "spoofed forwarded": (SPOOFED_FORWARDED + "X-Forwarded-For: 203.0.113.9\r\n", ("203.0.113.9", False, "http")),
    "malformed forwarded": ('Forwarded: for="203.0.113.9\r\n', (TRUSTED, True, "http")),
    "not an address": ("X-Forwarded-For: unknown\r\n", (TRUSTED, True, "http")),
    # Underscores would alias X-Forwarded-For in the environ: dropped outright.
    "underscore alias": ("X_Forwarded_For: 6.6.6.6\r\n", (TRUSTED, True, "http")),
}


@pytest.mark.parametrize("peer", [TRUSTED, UNTRUSTED])
@pytest.mark.parametrize("case", HEADER_CASES)
def test_forwarding_headers_are_believed_only_from_trusted_peers(header_server: int, case: str, peer: str) -> None:
    headers, (addr, has_port, scheme) = HEADER_CASES[case]
    status, seen = ask(header_server, peer, request(headers))
    assert status == 200
    if peer == UNTRUSTED:
        # Whatever the headers say, the peer is who it is.
        assert (seen["REMOTE_ADDR"], seen["wsgi.url_scheme"]) == (UNTRUSTED, "http")
        assert seen["REMOTE_PORT"] is not None
        return
    assert (seen["REMOTE_ADDR"], seen["REMOTE_PORT"] is not None, seen["wsgi.url_scheme"]) == (addr, has_port, scheme)
    if case == "x-forwarded-for with port":
        assert seen["REMOTE_PORT"] == "5555"


def test_a_unix_socket_peer_is_trusted_even_when_no_address_is(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    with (
        start_embedded(tmp_path / "log", f"unix:{path}", forwarded_allow_ips=""),
        socket.socket(socket.AF_UNIX) as sock,
    ):
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(request("X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n"))
        status, _, body = read_response(sock)
    assert status == 200
    assert json.loads(body) == {"REMOTE_ADDR": "203.0.113.9", "REMOTE_PORT": None, "wsgi.url_scheme": "https"}


def test_star_trusts_every_peer_and_proxy_headers_off_trusts_none(tmp_path: Path) -> None:
    headers = request("X-Forwarded-For: 203.0.113.9\r\n")
    everyone, nobody = free_port(), free_port()
    with start_embedded(tmp_path / "star", ["127.0.0.1", everyone], forwarded_allow_ips="*"):
        assert ask(everyone, UNTRUSTED, headers)[1]["REMOTE_ADDR"] == "203.0.113.9"
    with start_embedded(tmp_path / "off", ["127.0.0.1", nobody], proxy_headers=False):
        assert ask(nobody, TRUSTED, headers)[1]["REMOTE_ADDR"] == TRUSTED


# -- the PROXY protocol, in a real process -------------------------------------------------


@pytest.fixture(scope="module")
def proxy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, GProcess]]:
    port = free_port()
    log = tmp_path_factory.mktemp("proxy") / "log"
    with start_embedded(
        log, ["127.0.0.1", port], forwarded_allow_ips=f"{TRUSTED},10.0.0.0/8", proxy_protocol=True
    ) as proc:
        yield port, proc


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_from_the_trusted_proxy_names_the_client(
    proxy_server: tuple[int, GProcess], version: str
) -> None:
    port, _ = proxy_server
    header = (
        v1("198.51.100.7", 40001) if version == "v1" else v2("198.51.100.7", 40001, tlv(PP2_TYPE_AWS, b"\x01vpce-1"))
    )
    status, seen = ask(port, TRUSTED, header + request())
    assert status == 200
    assert seen == {"REMOTE_ADDR": "198.51.100.7", "REMOTE_PORT": "40001", "wsgi.url_scheme": "http"}


def test_proxy_protocol_local_and_unknown_keep_the_real_peer(proxy_server: tuple[int, GProcess]) -> None:
    port, _ = proxy_server
    for header in (b"PROXY UNKNOWN\r\n", v2("0.0.0.0", 0, command=0)):
        status, seen = ask(port, TRUSTED, header + request())
        assert (status, seen["REMOTE_ADDR"]) == (200, TRUSTED)


def test_proxy_protocol_from_an_untrusted_peer_is_read_but_not_believed(proxy_server: tuple[int, GProcess]) -> None:
    port, proc = proxy_server
    status, seen = ask(port, UNTRUSTED, v1("198.51.100.7", 40001) + request("X-Forwarded-For: 6.6.6.6\r\n"))
    assert (status, seen["REMOTE_ADDR"]) == (200, UNTRUSTED)
    proc.wait_for_log(r"PROXY protocol addresses from 127\.0\.0\.2 ignored \(logged once\)")
    ask(port, UNTRUSTED, v1("198.51.100.7", 40001) + request())
    assert proc.log().count("ignored (logged once)") == 1


def test_proxy_protocol_address_is_the_peer_the_forwarding_headers_are_judged_by(
    proxy_server: tuple[int, GProcess],
) -> None:
    port, _ = proxy_server
    via_trusted = v1("10.1.2.3", 40001) + request("X-Forwarded-For: 203.0.113.9\r\n")
    assert ask(port, TRUSTED, via_trusted)[1]["REMOTE_ADDR"] == "203.0.113.9"
    via_client = v1("198.51.100.7", 40001) + request("X-Forwarded-For: 6.6.6.6\r\n")
    assert ask(port, TRUSTED, via_client)[1]["REMOTE_ADDR"] == "198.51.100.7"


@pytest.mark.parametrize(
    "start",
    [
        b"",
        b"PROXY TCP4 198.51.100.7 192.0.2.1 40001\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        V2_SIGNATURE + b"\x31\x11\x00\x00",
    ],
    ids=["missing", "short v1", "bare LF", "v2 of version 3"],
)
def test_a_bad_proxy_header_gets_400_and_nothing_reaches_the_app(
    proxy_server: tuple[int, GProcess], start: bytes
) -> None:
    port, proc = proxy_server
    marker = f"bad-proxy-{len(start)}-{time.monotonic_ns()}"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(start + request(path=f"/echo/{marker}"))
        reply = recv_until_closed(sock, timeout=10)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request (invalid PROXY protocol header)\r\n")
    assert b"\r\nConnection: close\r\n" in reply
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(v1("198.51.100.7", 1) + request(path=f"/echo/{marker}-after"))
        assert read_response(sock, timeout=10)[2] == f"{marker}-after".encode()
    # The app logs "echo ID" for each request it gets: only the good one got there.
    proc.wait_for_log(rf"echo {marker}-after")
    assert f"echo {marker}\n" not in proc.log()


# -- the PROXY protocol's finer points, in-process ----------------------------------------------


def client_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    header = environ.get("gshutdown.proxy_header")
    body = json.dumps(
        {
            "REMOTE_ADDR": environ["REMOTE_ADDR"],
            "REMOTE_PORT": environ.get("REMOTE_PORT"),
            "scheme": environ["wsgi.url_scheme"],
            "tlvs": [[kind, value.decode()] for kind, value in header.tlvs] if header else None,
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def test_the_header_may_arrive_in_pieces_and_holds_for_every_request(serve: Serve) -> None:
    st = serve(client_app, proxy_protocol=True)
    header = v2("198.51.100.7", 40001, tlv(PP2_TYPE_AUTHORITY, b"example.com"))
    answers = []
    with st.connect() as sock:
        for piece in (header[:7], header[7:20], header[20:]):
            sock.sendall(piece)
            time.sleep(0.05)  # not synchronisation: only makes separate segments likely
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            answers.append(json.loads(read_response(sock)[2]))
    assert (
        answers[0]
        == answers[1]
        == {
            "REMOTE_ADDR": "198.51.100.7",
            "REMOTE_PORT": "40001",
            "scheme": "http",
            "tlvs": [[PP2_TYPE_AUTHORITY, "example.com"]],
        }
    )


def test_an_unfinished_header_is_closed_at_the_read_header_deadline(serve: Serve) -> None:
    st = serve(client_app, proxy_protocol=True, read_header_timeout=0.5, idle_timeout=30)
    with st.connect(timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 198.51")
        began = time.monotonic()
        assert recv_until_closed(sock, timeout=10) == b""
    assert time.monotonic() - began < 8, "closed by the 0.5 s deadline, not the 30 s idle timeout"
    wait_until(lambda: st.states_of(st.conn_ids()[0]) == [ConnState.NEW, ConnState.CLOSED])


def test_shutdown_closes_a_connection_waiting_for_its_header_at_idle_grace(serve: Serve) -> None:
    st = serve(client_app, proxy_protocol=True, read_header_timeout=60)
    with st.connect(timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 ")
        wait_until(lambda: st.conn_ids())
        result = st.shutdown(30)
        assert recv_until_closed(sock) == b""
    assert result.clean and result.idle_closed == 1 and result.duration < 20


def test_a_header_arriving_inside_the_grace_is_served(serve: Serve) -> None:
    st = serve(client_app, proxy_protocol=True, idle_grace=5.0)
    with st.connect(timeout=10) as sock:
        wait_until(lambda: st.conn_ids())
        pending = st.shutdown_async(30)
        wait_until(lambda: st.server.shutdown_started)
        sock.sendall(v1("198.51.100.7", 1) + b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = read_response(sock)
    assert (status, json.loads(body)["REMOTE_ADDR"], headers["connection"]) == (200, "198.51.100.7", "close")
    assert pending.result(30).clean


def test_tls_after_the_proxy_header(serve: Serve, tls_files: TLSFiles) -> None:
    st = serve(client_app, proxy_protocol=True, certfile=str(tls_files.cert), keyfile=str(tls_files.key))
    plain = socket.create_connection(("127.0.0.1", st.port), timeout=10)
    plain.sendall(v1("198.51.100.7", 40001))
    with tls_connect(tls_files, ("127.0.0.1", st.port), sock=plain) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        seen = json.loads(read_response(sock)[2])
    assert (seen["REMOTE_ADDR"], seen["REMOTE_PORT"], seen["scheme"]) == ("198.51.100.7", "40001", "https")


def test_a_trusted_proxy_may_say_the_client_used_http_to_reach_it_over_tls(serve: Serve, tls_files: TLSFiles) -> None:
    st = serve(client_app, certfile=str(tls_files.cert), keyfile=str(tls_files.key))
    with tls_connect(tls_files, ("127.0.0.1", st.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-Proto: http\r\nConnection: close\r\n\r\n")
        assert json.loads(read_response(sock)[2])["scheme"] == "http"


def test_untrusted_proxy_header_warning_names_the_setting(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    st = serve(client_app, proxy_protocol=True, forwarded_allow_ips="10.0.0.0/8")
    with caplog.at_level(logging.WARNING, logger="gshutdown"):
        seen: Optional[dict[str, Any]] = None
        with st.connect() as sock:
            sock.sendall(v1("198.51.100.7", 1) + b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            seen = json.loads(read_response(sock)[2])
    assert seen["REMOTE_ADDR"] == "127.0.0.1"
    assert any("not in forwarded_allow_ips (10.0.0.0/8)" in record.getMessage() for record in caplog.records)
