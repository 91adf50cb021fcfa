"""The shutdown contract over TLS, in real processes stopped by a real SIGTERM.

The children run ``gshutdown.run(..., certfile=...)`` as a library user's
``__main__`` would (``process_helpers.start_embedded``), or the command line
(``--certfile``, ``--forwarded-allow-ips``, ``--proxy-protocol`` ...).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from gshutdown.process.exit_status import ExitStatus
from tests.process_helpers import (
    GProcess,
    free_port,
    get,
    gshutdown_argv,
    recv_eof,
    refused,
    start_embedded,
    wait_until,
)
from tests.tls_helpers import (
    TLSFiles,
    der_of,
    make_server_cert,
    raw_after_close_notify,
    read_until_close_notify,
    served_certificate,
    tls_connect,
)


def cli_with_settings(settings: dict[str, Any], *args: str) -> list[str]:
    """``python -m gshutdown`` with ``settings`` as their command-line flags."""
    flags: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return gshutdown_argv(*flags, *args)


def tls_settings(files: TLSFiles) -> dict[str, Any]:
    return {"certfile": str(files.cert), "keyfile": str(files.key)}


def https_get(files: TLSFiles, port: int, path: str = "/") -> requests.Response:
    return requests.get(f"https://localhost:{port}{path}", verify=str(files.cert), timeout=10)


def test_requests_and_curl_against_a_tls_process(tmp_path: Path, tls_files: TLSFiles) -> None:
    port = free_port()
    with start_embedded(tmp_path / "log", ["127.0.0.1", port], **tls_settings(tls_files)) as proc:
        seen = https_get(tls_files, port, "/client").json()
        curl = subprocess.run(
            ["curl", "-sS", "--cacert", str(tls_files.cert), f"https://localhost:{port}/pid"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        proc.send_signal(signal.SIGTERM)
        status = proc.wait()
    assert seen["wsgi.url_scheme"] == "https" and seen["REMOTE_ADDR"] == "127.0.0.1"
    assert curl.returncode == 0, curl.stderr
    assert curl.stdout == str(proc.pid)
    assert status == ExitStatus.OK


def test_sigterm_drains_tls_connections_exactly_as_plain_ones(tmp_path: Path, tls_files: TLSFiles) -> None:
    port = free_port()
    address = ("127.0.0.1", port)
    with start_embedded(tmp_path / "log", list(address), graceful_timeout=20, **tls_settings(tls_files)) as proc:
        idle = tls_connect(tls_files, address)
        stalled = socket.create_connection(address, timeout=10)
        busy = tls_connect(tls_files, address)
        try:
            idle.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert idle.recv(65536).endswith(b"Hello, World!")
            stalled.sendall(b"\x16\x03\x01")  # a handshake begun, never finished
            busy.sendall(b"GET /slow?s=1 HTTP/1.1\r\nHost: t\r\n\r\n")
            proc.wait_for_log(r"slow request started")
            proc.send_signal(signal.SIGTERM)
            # Idle: close_notify (an SSLEOFError here would mean a bare close), then FIN.
            assert read_until_close_notify(idle) == b""
            assert raw_after_close_notify(idle) == b""
            assert recv_eof(stalled) == b""
            reply = read_until_close_notify(busy)
            status = proc.wait()
        finally:
            for sock in (idle, stalled, busy):
                sock.close()
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"slept 1")
    assert b"\r\nConnection: close\r\n" in reply
    assert status == ExitStatus.OK
    assert "shutdown: clean" in proc.log()
    assert refused(port)


def test_a_tls_request_still_running_at_the_deadline_is_cut_and_the_exit_says_so(
    tmp_path: Path, tls_files: TLSFiles
) -> None:
    port = free_port()
    address = ("127.0.0.1", port)
    with start_embedded(tmp_path / "log", list(address), graceful_timeout=0.5, **tls_settings(tls_files)) as proc:
        with tls_connect(tls_files, address) as busy:
            busy.sendall(b"GET /slow?s=30 HTTP/1.1\r\nHost: t\r\n\r\n")
            proc.wait_for_log(r"slow request started")
            proc.send_signal(signal.SIGTERM)
            with pytest.raises((ssl.SSLEOFError, ConnectionResetError)):
                read_until_close_notify(busy)  # no close_notify: the client knows it was cut off
        status = proc.wait()
    assert status == ExitStatus.FORCED
    assert "forced ACTIVE connection" in proc.log()


def test_tls_with_workers_serves_and_drains_on_sigterm(tmp_path: Path, tls_files: TLSFiles) -> None:
    port = free_port()
    argv = cli_with_settings(
        tls_settings(tls_files), "--workers", "2", "-b", f"127.0.0.1:{port}", "tests.apps.probe:app"
    )
    with GProcess(argv, tmp_path / "log") as proc:
        proc.wait_for_log(r"listening on", timeout=30)
        wait_until(lambda: len({https_get(tls_files, port, "/pid").text for _ in range(20)}) == 2, timeout=30)
        with tls_connect(tls_files, ("127.0.0.1", port)) as busy:
            busy.sendall(b"GET /slow?s=1 HTTP/1.1\r\nHost: t\r\n\r\n")
            proc.wait_for_log(r"slow request started")
            proc.send_signal(signal.SIGTERM)
            reply = read_until_close_notify(busy)
        status = proc.wait()
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"slept 1")
    assert b"\r\nConnection: close\r\n" in reply
    assert status == ExitStatus.OK


def test_sighup_with_workers_serves_a_renewed_certificate_and_keeps_the_old_if_the_new_is_bad(
    tmp_path: Path,
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    cert, key = make_server_cert(live)
    first = der_of(cert)
    port = free_port()
    settings = {"certfile": str(cert), "keyfile": str(key)}
    argv = cli_with_settings(settings, "--workers", "2", "-b", f"127.0.0.1:{port}", "tests.apps.probe:app")
    with GProcess(argv, tmp_path / "log") as proc:
        proc.wait_for_log(r"2 worker\(s\) ready", timeout=30)
        assert served_certificate(("127.0.0.1", port)) == first
        renewed_cert, renewed_key = make_server_cert(tmp_path, "renewed")
        os.replace(renewed_key, key)
        os.replace(renewed_cert, cert)
        proc.send_signal(signal.SIGHUP)
        proc.wait_for_log(r"reload done", timeout=30)
        second = der_of(cert)
        wait_until(lambda: served_certificate(("127.0.0.1", port)) == second, timeout=20)
        cert.write_text("not a certificate\n")
        mark = len(proc.log())
        proc.send_signal(signal.SIGHUP)
        proc.wait_for_log(r"reload failed", timeout=30, start=mark)
        assert [served_certificate(("127.0.0.1", port)) for _ in range(5)] == [second] * 5
        proc.send_signal(signal.SIGTERM)
        status = proc.wait()
    assert second != first
    assert status == ExitStatus.OK


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["single", "workers"])
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"certfile": "/nonexistent/cert.pem"}, "certfile /nonexistent/cert.pem: No such file or directory"),
        ({"forwarded_allow_ips": "10.0.0.0/8,proxy"}, "argument --forwarded-allow-ips: 'proxy' is not an IP address"),
    ],
    ids=["certfile", "forwarded_allow_ips"],
)
def test_an_unusable_setting_is_one_line_and_exit_2(
    tmp_path: Path, settings: dict[str, Any], message: str, workers: list[str]
) -> None:
    argv = cli_with_settings(settings, *workers, "-b", f"127.0.0.1:{free_port()}", "tests.apps.probe:app")
    with GProcess(argv, tmp_path / "log") as proc:
        status = proc.wait()
    assert status == ExitStatus.USAGE
    errors = [line for line in proc.lines() if line.startswith("gshutdown: error: ")]
    assert len(errors) >= 1 and errors[0].startswith(f"gshutdown: error: {message}")
    assert "Traceback" not in proc.log()


def test_the_command_line_takes_the_proxy_settings(tmp_path: Path) -> None:
    port = free_port()
    argv = cli_with_settings(
        {"forwarded_allow_ips": "10.0.0.0/8", "proxy_protocol": True}, "-b", f"127.0.0.1:{port}", "tests.apps.probe:app"
    )
    with GProcess(argv, tmp_path / "log") as proc:
        proc.wait_listening()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            # Loopback is not in 10.0.0.0/8: the header is read, its address not believed.
            sock.sendall(
                b"PROXY TCP4 198.51.100.7 192.0.2.1 1 2\r\nGET /client HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            body = recv_eof(sock).partition(b"\r\n\r\n")[2]
        plain_http = get(port, "/")  # no PROXY header: refused
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == ExitStatus.OK
    assert json.loads(body)["REMOTE_ADDR"] == "127.0.0.1"
    assert plain_http[0] == 400
