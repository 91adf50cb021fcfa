"""Mounting under a prefix, and gunicorn's ``secure_scheme_headers`` and ``forwarder_headers``, in-process.

A real ``gshutdown.Server`` on loopback; 127.0.0.1 is the trusted proxy and
127.0.0.2 anyone else (``forwarded_allow_ips="127.0.0.1"``).
"""

from __future__ import annotations

import json
import socket
from typing import Any, Callable

import pytest

from tests.helpers import ServerThread, read_response

Serve = Callable[..., ServerThread]
TRUSTED, UNTRUSTED = "127.0.0.1", "127.0.0.2"
KEYS = ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "wsgi.url_scheme", "HTTP_SCRIPT_NAME", "HTTP_REMOTE_USER")


def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = json.dumps({key: environ.get(key) for key in KEYS}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def ask(server: ServerThread, path: str, headers: str = "", source: str = TRUSTED) -> tuple[int, dict[str, Any]]:
    port = server.server.address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n".encode())
        status, _, body = read_response(sock)
    return status, json.loads(body) if status == 200 else {}


@pytest.fixture
def mounted(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> ServerThread:
    # As -e SCRIPT_NAME=/app/ or raw_env leaves it: in the environment when the server starts.
    monkeypatch.setenv("SCRIPT_NAME", "/app/")
    return serve(echo, forwarded_allow_ips=TRUSTED)


@pytest.mark.parametrize(
    ("path", "script_name", "path_info"),
    [
        ("/app/users/7?full=1", "/app", "/users/7"),
        ("/app", "/app", ""),
        ("/app/", "/app", "/"),
        ("/app%2Fx", "/app", "/x"),  # PATH_INFO is decoded, and so compared
        ("/application", "", "/application"),  # a segment that only starts like the mount
        ("/other", "", "/other"),
        ("/", "", "/"),
    ],
)
def test_script_name_from_the_environment_mounts_the_app(
    mounted: ServerThread, path: str, script_name: str, path_info: str
) -> None:
    status, seen = ask(mounted, path)
    assert (status, seen["SCRIPT_NAME"], seen["PATH_INFO"]) == (200, script_name, path_info)


@pytest.mark.parametrize("source", [TRUSTED, UNTRUSTED])
def test_a_clients_script_name_header_never_mounts(mounted: ServerThread, source: str) -> None:
    status, seen = ask(mounted, "/app/x", "Script-Name: /evil\r\n", source)
    assert (status, seen["SCRIPT_NAME"], seen["PATH_INFO"], seen["HTTP_SCRIPT_NAME"]) == (200, "/app", "/x", "/evil")


def test_without_script_name_in_the_env_nothing_is_mounted(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCRIPT_NAME", raising=False)
    server = serve(echo, forwarder_headers=("PATH_INFO",))
    seen = ask(server, "/app/x", "SCRIPT_NAME: /app\r\n")[1]  # trusted, but not one of forwarder_headers
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"]) == ("", "/app/x")


def test_forwarder_headers_from_a_trusted_proxy_only(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCRIPT_NAME", raising=False)
    server = serve(echo, forwarded_allow_ips=TRUSTED, forwarder_headers=("SCRIPT_NAME", "REMOTE_USER"))
    headers = "SCRIPT_NAME: /api/\r\nREMOTE_USER: alice\r\n"
    seen = ask(server, "/api/v1", headers, TRUSTED)[1]
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"], seen["HTTP_REMOTE_USER"]) == ("/api", "/v1", "alice")
    # Anyone else's '_' headers are dropped, as every '_' header not listed is.
    seen = ask(server, "/api/v1", headers, UNTRUSTED)[1]
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"], seen["HTTP_REMOTE_USER"]) == ("", "/api/v1", None)
    seen = ask(server, "/api/v1", "PATH_INFO: /x\r\nX_Forwarded_For: 6.6.6.6\r\n", TRUSTED)[1]
    assert seen["PATH_INFO"] == "/api/v1"


def test_no_forwarder_headers_drops_every_underscore_header(serve: Serve) -> None:
    server = serve(echo, forwarded_allow_ips=TRUSTED, forwarder_headers=())
    seen = ask(server, "/api/v1", "SCRIPT_NAME: /api\r\n", TRUSTED)[1]
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"]) == ("", "/api/v1")


SECURE = (("X-FORWARDED-PROTO", "https"), ("X-FORWARDED-SSL", "on"))


@pytest.mark.parametrize(
    ("headers", "trusted_sees", "untrusted_sees"),
    [
        ("", (200, "http"), (200, "http")),
        ("X-Forwarded-Ssl: on\r\n", (200, "https"), (200, "http")),
        ("X-Forwarded-Proto: https\r\nX-Forwarded-Ssl: on\r\n", (200, "https"), (200, "http")),
        ("X-Forwarded-Proto: HTTPS\r\n", (200, "http"), (200, "http")),  # values compare exactly, as gunicorn's
        ("X-Forwarded-Proto: http\r\n", (200, "http"), (200, "http")),
        ("X-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off\r\n", (400, None), (200, "http")),
        # Forwarded's proto is not one of the listed headers: not the scheme any more.
        ("Forwarded: for=203.0.113.9;proto=https\r\n", (200, "http"), (200, "http")),
    ],
)
def test_secure_scheme_headers_as_gunicorn_reads_them(
    serve: Serve, headers: str, trusted_sees: tuple[int, Any], untrusted_sees: tuple[int, Any]
) -> None:
    server = serve(echo, forwarded_allow_ips=TRUSTED, secure_scheme_headers=SECURE)
    for source, expected in ((TRUSTED, trusted_sees), (UNTRUSTED, untrusted_sees)):
        status, seen = ask(server, "/", headers, source)
        assert (status, seen.get("wsgi.url_scheme")) == expected, source
