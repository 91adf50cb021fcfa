"""HTTPS: a real server with a certificate made for the run, real TLS clients.

``requests`` and ``curl`` verify against the self-signed certificate; raw
``ssl`` sockets (``suppress_ragged_eofs=False``) show whether the server ended
the TLS session cleanly (``close_notify``) or cut it.
"""

from __future__ import annotations

import gc
import json
import re
import signal
import socket
import ssl
import subprocess
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import gevent
import pytest
import requests

from gshutdown import ConnState, Server
from gshutdown.server.tls import TLSConfigError
from tests.helpers import ServerThread, read_response, recv_until_closed, wait_until
from tests.process_helpers import PROBE, free_port, start_gshutdown, start_master
from tests.test_connection import cyclic_garbage_from_gshutdown
from tests.tls_helpers import TLSFiles, raw_after_close_notify, read_until_close_notify, tls_connect

Serve = Callable[..., ServerThread]


def tls_options(files: TLSFiles, **options: Any) -> dict[str, Any]:
    return {"certfile": str(files.cert), "keyfile": str(files.key), **options}


def https_url(st: ServerThread, path: str = "/", host: str = "localhost") -> str:
    return f"https://{host}:{st.port}{path}"


def info_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The request as the application sees it; POST bodies are counted, ``/big`` is 4 MiB."""
    if environ["PATH_INFO"] == "/big":
        body = b"x" * (4 * 1024 * 1024)
    else:
        received = len(environ["wsgi.input"].read())
        conn = environ["gshutdown.connection"]
        body = json.dumps(
            {
                "scheme": environ["wsgi.url_scheme"],
                "REMOTE_ADDR": environ["REMOTE_ADDR"],
                "REMOTE_PORT": environ.get("REMOTE_PORT"),
                "SERVER_PORT": environ["SERVER_PORT"],
                "received": received,
                "tls_version": conn.sock.version(),
                "alpn": conn.sock.selected_alpn_protocol(),
                "client_cert": bool(conn.sock.getpeercert()),
            }
        ).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def test_requests_over_tls_on_one_kept_alive_connection(serve: Serve, tls_files: TLSFiles) -> None:
    st = serve(info_app, **tls_options(tls_files))
    with requests.Session() as session:
        answers = [session.get(https_url(st), verify=str(tls_files.cert), timeout=10).json() for _ in range(3)]
    assert {answer["scheme"] for answer in answers} == {"https"}
    assert len({answer["REMOTE_PORT"] for answer in answers}) == 1, "the session reused its connection"
    assert answers[0]["REMOTE_ADDR"] == "127.0.0.1"
    assert answers[0]["SERVER_PORT"] == str(st.port)
    assert answers[0]["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert answers[0]["alpn"] == "http/1.1"  # urllib3 offers it
    assert st.states_of(st.conn_ids()[0])[:2] == [ConnState.NEW, ConnState.ACTIVE]


def test_curl_over_tls_with_alpn_and_a_body_sent_after_100_continue(serve: Serve, tls_files: TLSFiles) -> None:
    st = serve(info_app, **tls_options(tls_files))
    body = b"y" * (3 * 1024 * 1024 + 7)  # many TLS records; curl sends Expect: 100-continue
    result = subprocess.run(
        ["curl", "-sS", "--cacert", str(tls_files.cert), "--data-binary", "@-", https_url(st, "/upload")],
        input=body,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["received"] == len(body)
    assert answer["scheme"] == "https"
    assert answer["alpn"] == "http/1.1"


def test_a_large_response_arrives_whole_over_tls(serve: Serve, tls_files: TLSFiles) -> None:
    st = serve(info_app, **tls_options(tls_files))
    response = requests.get(https_url(st, "/big"), verify=str(tls_files.cert), timeout=30)
    assert response.status_code == 200
    assert response.content == b"x" * (4 * 1024 * 1024)


def test_pipelined_requests_over_tls_are_answered_in_order(serve: Serve, tls_files: TLSFiles) -> None:
    st = serve(info_app, **tls_options(tls_files))
    with tls_connect(tls_files, ("127.0.0.1", st.port)) as sock:
        sock.sendall(
            b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n" * 2 + b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        replies = read_until_close_notify(sock)
    assert replies.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert replies.count(b'"scheme": "https"') == 3


def test_plain_http_on_the_https_port_gets_a_plain_400(serve: Serve, tls_files: TLSFiles) -> None:
    st = serve(info_app, **tls_options(tls_files))
    with st.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        reply = recv_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request (plain HTTP sent to the HTTPS port)\r\n")
    assert b"\r\nConnection: close\r\n" in reply


def test_a_client_that_fails_verification_is_refused_and_the_server_keeps_serving(
    serve: Serve, tls_files: TLSFiles
) -> None:
    st = serve(info_app, **tls_options(tls_files))
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(https_url(st), timeout=10)  # the system CAs do not know our certificate
    assert requests.get(https_url(st), verify=str(tls_files.cert), timeout=10).status_code == 200


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01\x02\x00"], ids=["nothing", "half a ClientHello"])
def test_a_handshake_never_finished_is_closed_at_the_read_header_deadline(
    serve: Serve, tls_files: TLSFiles, sent: bytes
) -> None:
    st = serve(info_app, **tls_options(tls_files, read_header_timeout=0.5, idle_timeout=30))
    with st.connect(timeout=10) as sock:
        sock.sendall(sent)
        began = time.monotonic()
        assert recv_until_closed(sock, timeout=10) == b""
        waited = time.monotonic() - began
    assert waited < 8, "closed by the 0.5 s handshake deadline, not the 30 s idle timeout"
    wait_until(lambda: st.states_of(st.conn_ids()[0]) == [ConnState.NEW, ConnState.CLOSED])


def test_shutdown_closes_a_stalled_handshake_at_idle_grace_as_a_new_connection(
    serve: Serve, tls_files: TLSFiles
) -> None:
    st = serve(info_app, **tls_options(tls_files, read_header_timeout=60))
    with st.connect(timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01")  # the handshake has begun and stalls
        wait_until(lambda: st.conn_ids())
        result = st.shutdown(30)
        assert recv_until_closed(sock) == b""
    assert result.clean and result.forced == ()
    assert result.idle_closed == 1
    assert result.duration < 20, "it did not wait for the 60 s handshake deadline"


def test_an_idle_tls_connection_gets_close_notify_then_fin_at_shutdown(serve: Serve, tls_files: TLSFiles) -> None:
    st = serve(info_app, **tls_options(tls_files))
    with tls_connect(tls_files, ("127.0.0.1", st.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[0] == 200
        wait_until(lambda: st.server.registry.counts()["idle"] == 1)
        result = st.shutdown(10)
        assert read_until_close_notify(sock) == b""  # SSLEOFError here: closed without close_notify
        assert raw_after_close_notify(sock) == b"", "FIN after the close_notify"
    assert result.clean and result.idle_closed == 1


def test_an_in_flight_tls_request_finishes_with_connection_close_and_close_notify(
    serve: Serve, tls_files: TLSFiles
) -> None:
    def slow_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        gevent.sleep(0.5)
        start_response("200 OK", [("Content-Length", "4")])
        return [b"done"]

    st = serve(slow_app, **tls_options(tls_files))
    with tls_connect(tls_files, ("127.0.0.1", st.port)) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: st.server.registry.counts()["active"] == 1)
        pending = st.shutdown_async(10)
        reply = read_until_close_notify(sock)
    result = pending.result(30)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"\r\n\r\ndone")
    assert b"\r\nConnection: close\r\n" in reply
    assert result.clean and result.forced == ()


def test_a_tls_response_cut_at_the_deadline_ends_without_close_notify(serve: Serve, tls_files: TLSFiles) -> None:
    def stuck_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", [("Content-Length", "1000")])
        yield b"half"
        gevent.sleep(60)

    st = serve(stuck_app, **tls_options(tls_files))
    with tls_connect(tls_files, ("127.0.0.1", st.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: st.server.registry.counts()["active"] == 1)
        result = st.shutdown(0.3)
        with pytest.raises((ssl.SSLEOFError, ConnectionResetError)):
            read_until_close_notify(sock)  # the client can tell it was cut off
    assert not result.clean and [item.state for item in result.forced] == [ConnState.ACTIVE]


def test_hijacked_tls_socket_speaks_tls(serve: Serve, tls_files: TLSFiles) -> None:
    def echo_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        sock, already = environ["gshutdown.hijack"]()
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n")
        data = already or sock.recv(100)
        sock.sendall(data.upper())
        sock.close()
        return []

    st = serve(echo_app, **tls_options(tls_files))
    with tls_connect(tls_files, ("127.0.0.1", st.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += sock.recv(1)
        sock.sendall(b"ping")
        assert sock.recv(100) == b"PING"
    assert head.startswith(b"HTTP/1.1 101 ")


def test_client_certificates_are_required_with_ca_certs(serve: Serve, tls_files: TLSFiles) -> None:
    st = serve(info_app, **tls_options(tls_files, ca_certs=str(tls_files.client_ca)))
    with tls_connect(tls_files, ("127.0.0.1", st.port), client_cert=True) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        status, _, body = read_response(sock)
    assert status == 200 and json.loads(body)["client_cert"] is True
    # TLS 1.3: the refusal arrives with the first read after the handshake.
    with (
        pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)),
        tls_connect(tls_files, ("127.0.0.1", st.port)) as sock,
    ):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.recv(100)


def test_optional_client_certificates(serve: Serve, tls_files: TLSFiles) -> None:
    st = serve(info_app, **tls_options(tls_files, ca_certs=str(tls_files.client_ca), cert_reqs="optional"))
    answers = []
    for with_cert in (False, True):
        with tls_connect(tls_files, ("127.0.0.1", st.port), client_cert=with_cert) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            answers.append(json.loads(read_response(sock)[2])["client_cert"])
    assert answers == [False, True]


def test_ipv6_over_tls(serve: Serve, tls_files: TLSFiles) -> None:
    st = serve(info_app, listener=("::1", 0), **tls_options(tls_files))
    answer = requests.get(f"https://[::1]:{st.port}/", verify=str(tls_files.cert), timeout=10).json()
    assert (answer["REMOTE_ADDR"], answer["scheme"]) == ("::1", "https")


def test_tls_connections_are_freed_without_the_cycle_collector(serve: Serve, tls_files: TLSFiles) -> None:
    refs: list[weakref.ref[Any]] = []

    def keep_a_weak_ref(conn: Any, state: ConnState) -> None:
        if state is ConnState.NEW:
            refs.append(weakref.ref(conn))

    st = serve(info_app, conn_state=keep_a_weak_ref, **tls_options(tls_files))
    gc.collect()
    gc.disable()
    try:
        with tls_connect(tls_files, ("127.0.0.1", st.port)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert read_until_close_notify(sock).startswith(b"HTTP/1.1 200 ")
        with st.connect() as sock:  # a failed handshake
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            recv_until_closed(sock)
        assert len(refs) == 2
        wait_until(lambda: all(ref() is None for ref in refs))
        assert cyclic_garbage_from_gshutdown() == []
    finally:
        gc.enable()


# -- settings that cannot be used fail the construction, in one line -------------------------


def test_a_missing_certfile_is_named(tls_files: TLSFiles) -> None:
    with pytest.raises(TLSConfigError, match=r"^certfile /nonexistent/cert.pem: No such file or directory$"):
        Server(("127.0.0.1", 0), info_app, certfile="/nonexistent/cert.pem")


def test_a_key_that_does_not_match_the_certificate_is_refused(tls_files: TLSFiles) -> None:
    with pytest.raises(TLSConfigError, match=r"^certfile/keyfile .*server.pem: .*"):
        Server(("127.0.0.1", 0), info_app, certfile=str(tls_files.cert), keyfile=str(tls_files.client_key))


def test_an_encrypted_key_is_refused_without_prompting(tls_files: TLSFiles) -> None:
    with pytest.raises(TLSConfigError, match="keyfile is encrypted"):
        Server(("127.0.0.1", 0), info_app, certfile=str(tls_files.cert), keyfile=str(tls_files.encrypted_key))


def test_a_cipher_list_that_selects_nothing_is_named(tls_files: TLSFiles) -> None:
    with pytest.raises(TLSConfigError, match=r"^ciphers NO-SUCH-CIPHER: "):
        Server(("127.0.0.1", 0), info_app, **tls_options(tls_files, ciphers="NO-SUCH-CIPHER"))


def test_a_bad_ca_file_is_named(tls_files: TLSFiles) -> None:
    with pytest.raises(TLSConfigError, match=r"^ca_certs /nonexistent/ca.pem: "):
        Server(("127.0.0.1", 0), info_app, **tls_options(tls_files, ca_certs="/nonexistent/ca.pem"))


def test_ciphers_restrict_tls_1_2(serve: Serve, tls_files: TLSFiles) -> None:
    st = serve(info_app, **tls_options(tls_files, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))
    context = ssl.create_default_context(cafile=str(tls_files.cert))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with context.wrap_socket(
        socket.create_connection(("127.0.0.1", st.port), timeout=10), server_hostname="localhost"
    ) as sock:
        assert sock.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    context.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384")
    with socket.create_connection(("127.0.0.1", st.port), timeout=10) as plain, pytest.raises(ssl.SSLError):
        context.wrap_socket(plain, server_hostname="localhost")


@pytest.mark.parametrize("workers", [0, 1])
def test_an_https_listener_is_logged_as_https(tmp_path: Path, tls_files: TLSFiles, workers: int) -> None:
    """The address logged at start-up is the URL to use: https:// for a TLS listener, from the master too."""
    port = free_port()
    tls = ("--certfile", str(tls_files.cert), "--keyfile", str(tls_files.key))
    if workers:
        server = start_master(tmp_path / "log", PROBE, port, *tls, workers=workers)
    else:
        server = start_gshutdown(tmp_path / "log", *tls, "--bind", f"127.0.0.1:{port}", PROBE)
    with server:
        assert requests.get(f"https://localhost:{port}/", verify=str(tls_files.cert), timeout=10).ok
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    logged = re.findall(r"listening on (\S+)$", server.log(), re.MULTILINE)
    assert logged == [f"https://127.0.0.1:{port}"] * (1 + workers)  # the master's line, then each worker's
