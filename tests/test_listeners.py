"""Every kind of listener: IPv4, IPv6, unix socket, and a socket bound by the caller."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from tests.helpers import ServerThread, hello_app, read_response
from tests.process_helpers import ROOT


def where_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """Reports what the server knows about the connection, as JSON."""
    sock = environ["gshutdown.connection"].sock
    nodelay = None
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    body = json.dumps(
        {
            "REMOTE_ADDR": environ["REMOTE_ADDR"],
            "REMOTE_PORT": environ.get("REMOTE_PORT"),
            "SERVER_NAME": environ["SERVER_NAME"],
            "SERVER_PORT": environ["SERVER_PORT"],
            "nodelay": nodelay,
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def ask(st: ServerThread) -> tuple[dict[str, Any], Any]:
    """One request on a raw connection: the app's JSON and the client's own address."""
    with st.connect(timeout=2) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = read_response(sock, timeout=2)
        local = sock.getsockname()
    assert status == 200
    return json.loads(body), local


def assert_accepts_without_blocking(st: ServerThread) -> None:
    """The listener is non-blocking, as gevent's accept loop requires.

    gevent calls accept() until it would block; on a blocking listener the
    second call blocks the whole hub, so the server hangs at its first client.
    Checked before connecting, so that such a server fails fast instead of hanging.
    """
    assert st.call(lambda: st.server.socket.getblocking()) is False, "listener is in blocking mode"


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_ipv4_listener_sets_tcp_nodelay_on_accepted_sockets(serve: Callable[..., ServerThread]) -> None:
    st = serve(where_app)
    assert_accepts_without_blocking(st)
    info, local = ask(st)
    assert info["nodelay"]
    assert (info["REMOTE_ADDR"], info["REMOTE_PORT"]) == (local[0], str(local[1]))
    assert (info["SERVER_NAME"], info["SERVER_PORT"]) == ("127.0.0.1", str(st.port))


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback (::1) on this host")
def test_ipv6_listener(serve: Callable[..., ServerThread]) -> None:
    st = serve(where_app, listener=("::1", 0))
    assert st.server.address[0] == "::1"
    info, local = ask(st)
    assert info["REMOTE_ADDR"] == "::1" == local[0]
    assert info["REMOTE_PORT"] == str(local[1])
    assert (info["SERVER_NAME"], info["SERVER_PORT"]) == ("::1", str(st.port))
    assert info["nodelay"]
    with requests.get(st.url("/"), timeout=5) as response:  # http://[::1]:port/
        assert response.status_code == 200
        assert response.json()["REMOTE_ADDR"] == "::1"


def test_unix_socket_listener(serve: Callable[..., ServerThread], tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    st = serve(where_app, listener="unix:" + path)
    assert st.server.address == path
    assert_accepts_without_blocking(st)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect(path)
        for _ in range(2):  # kept alive
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body = read_response(sock, timeout=2)
            assert status == 200
            info = json.loads(body)
            assert info["REMOTE_ADDR"] == ""
            assert info["nodelay"] is None
    result = st.shutdown(5)
    assert result.clean
    assert not os.path.exists(path)  # the server created it, the server removes it


def test_listening_socket_bound_by_the_caller(serve: Callable[..., ServerThread]) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        address = listener.getsockname()
        st = serve(where_app, listener=listener)
        assert st.server.address[:2] == address
        assert_accepts_without_blocking(st)
        info, _ = ask(st)
        assert info["nodelay"]
        assert info["SERVER_PORT"] == str(address[1])
        result = st.shutdown(5)
        assert result.clean
        with pytest.raises(OSError):  # the listener is closed: refused
            socket.create_connection(address, timeout=5).close()
    finally:
        listener.close()


def test_stale_unix_socket_file_is_replaced(serve: Callable[..., ServerThread], tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays behind, as after a crash
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(path)
    st = serve(hello_app, listener="unix:" + path)
    assert st.server.address == path
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert_accepts_without_blocking(st)
    with st.connect(timeout=2) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = read_response(sock, timeout=2)
    assert (status, body) == (200, b"Hello, World!")


def test_unix_socket_in_use_raises_and_is_left_alone(serve: Callable[..., ServerThread], tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(path)
        live.listen(4)
        inode = os.stat(path).st_ino
        with pytest.raises(OSError, match="in use"):
            serve(hello_app, listener="unix:" + path)
        # The file is still the running server's socket: same inode, still connectable.
        assert os.stat(path).st_ino == inode
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            client.connect(path)


def test_regular_file_at_the_unix_path_is_not_deleted(serve: Callable[..., ServerThread], tmp_path: Path) -> None:
    """Only a stale *socket* file may be replaced; any other file is someone's data."""
    path = tmp_path / "precious.txt"
    path.write_text("do not delete")
    with pytest.raises(OSError):
        serve(hello_app, listener=f"unix:{path}")
    assert path.read_text() == "do not delete"


def test_unix_socket_of_a_server_with_a_full_backlog_is_left_alone(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """Connecting to it fails with EAGAIN, not ECONNREFUSED: someone listens, so it is not stale."""
    path = str(tmp_path / "busy.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.bind(path)
        busy.listen(0)
        queued = []
        try:
            for _ in range(64):  # fill the backlog (never accepted)
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.setblocking(False)
                queued.append(client)
                try:
                    client.connect(path)
                except BlockingIOError:
                    break
            else:
                raise AssertionError("the backlog never filled")
            inode = os.stat(path).st_ino
            with pytest.raises(OSError, match="cannot tell whether a server uses it"):
                serve(hello_app, listener="unix:" + path)
            assert os.stat(path).st_ino == inode
        finally:
            for client in queued:
                client.close()


def test_unix_socket_that_cannot_be_probed_for_lack_of_permission_is_left_alone(tmp_path: Path) -> None:
    """EACCES says nothing about whether a server listens: never unlink on it.

    A real EACCES: as root, the bind is tried by a child that drops to
    ``nobody`` (root would be let through); otherwise the socket file has
    no permissions for its owner either.
    """
    directory = Path(tempfile.mkdtemp(prefix="gshutdown-eacces-"))
    try:
        os.chmod(directory, 0o777)  # anyone could unlink in here: only the code may refuse to
        path = str(directory / "theirs.sock")
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(path)
        other.listen(4)
        try:
            os.chmod(path, 0o700 if os.geteuid() == 0 else 0)
            inode = os.stat(path).st_ino
            probe = (
                "import os, pwd, sys\n"
                "from gshutdown.config.addresses import bind_unix\n"  # imported first: nobody may not read the stdlib
                "if os.geteuid() == 0:\n"
                "    nobody = pwd.getpwnam('nobody'); os.setgid(nobody.pw_gid); os.setuid(nobody.pw_uid)\n"
                "try:\n"
                "    bind_unix(sys.argv[1])\n"
                "except PermissionError as exc:\n"
                "    print('refused:', exc); sys.exit(3)\n"
                "print('bound'); sys.exit(0)\n"
            )
            done = subprocess.run(
                [sys.executable, "-c", probe, path], capture_output=True, text=True, timeout=30, cwd=ROOT
            )
            assert done.returncode == 3, done.stdout + done.stderr
            assert "cannot tell whether a server uses it" in done.stdout
            assert os.stat(path).st_ino == inode
        finally:
            other.close()
    finally:
        shutil.rmtree(directory)


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
def test_unix_socket_mode_sets_the_socket_files_permissions(
    serve: Callable[..., ServerThread], tmp_path: Path, mode: int
) -> None:
    path = str(tmp_path / "mode.sock")
    st = serve(hello_app, listener="unix:" + path, unix_socket_mode=mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    with st.connect(timeout=2) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock, timeout=2)[0] == 200
