"""systemd integration of the real CLI: sd_notify and socket activation.

``NOTIFY_SOCKET``: the test is the service manager, a datagram socket in
``tmp_path`` (or the abstract namespace) that receives READY=1 once the server
listens and STOPPING=1 when SIGTERM arrives. ``LISTEN_FDS``: the test binds the
listening socket and hands it over as descriptor 3, as systemd does.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.process_helpers import PROBE, GProcess, free_port, get, gshutdown_argv, start_gshutdown

#: Puts descriptor argv[1] on 3, sets LISTEN_PID to its own pid (kept across
#: exec), then execs the rest: systemd's hand-over in one small step.
ACTIVATE = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "os.dup2(fd, 3)\n"
    "os.close(fd)\n"
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def receive(sock: socket.socket, timeout: float = 20.0) -> str:
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


@pytest.mark.parametrize("namespace", ["path", "abstract"])
def test_notify_socket_gets_ready_once_listening_and_stopping_on_sigterm(tmp_path: Path, namespace: str) -> None:
    port = free_port()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        if namespace == "path":
            address = str(tmp_path / "notify.sock")
            manager.bind(address)
        else:
            address = f"@gshutdown-test-{os.getpid()}-{time.monotonic_ns()}"
            manager.bind("\0" + address[1:])
        with start_gshutdown(
            tmp_path / "log", "--bind", f"127.0.0.1:{port}", PROBE, env={"NOTIFY_SOCKET": address}, wait=False
        ) as server:
            assert receive(manager) == "READY=1"
            # READY=1 means "serving": no retry needed for the first request.
            assert get(port, "/")[2] == b"Hello, World!"
            server.send_signal(signal.SIGTERM)
            assert receive(manager) == "STOPPING=1"
            assert server.wait() == 0


@pytest.mark.parametrize("monkey_patch", [True, False], ids=["patched", "no-monkey-patch"])
def test_listen_fds_serves_on_the_socket_passed_as_descriptor_3(tmp_path: Path, monkey_patch: bool) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        options = [] if monkey_patch else ["--no-monkey-patch"]
        # --bind names a port nobody listens on: the passed socket must win.
        unused = free_port()
        argv = [
            sys.executable,
            "-c",
            ACTIVATE,
            str(listener.fileno()),
            *gshutdown_argv(*options, "--bind", f"127.0.0.1:{unused}", PROBE),
        ]
        with GProcess(argv, tmp_path / "log", pass_fds=[listener.fileno()]) as server:
            server.wait_listening()
            answers = [get(port, "/", timeout=5)[2] for _ in range(3)]
            server.send_signal(signal.SIGTERM)
            assert server.wait() == 0
    assert answers == [b"Hello, World!"] * 3
    log = server.log()
    assert f"listening on http://127.0.0.1:{port}" in log
    assert str(unused) not in log


def test_unreachable_notify_socket_does_not_stop_the_server(tmp_path: Path) -> None:
    """sd_notify is best effort: a stale NOTIFY_SOCKET (inherited, manager gone) is no reason to die."""
    port = free_port()
    env = {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}
    with start_gshutdown(tmp_path / "log", "--bind", f"127.0.0.1:{port}", PROBE, env=env) as server:
        assert get(port, "/")[2] == b"Hello, World!"
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert "Traceback" not in server.log()
