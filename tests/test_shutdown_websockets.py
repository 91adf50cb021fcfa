"""WebSockets and real signals: many open WebSockets, a SIGTERM, one Close 1001 each, exit 0.

Each test serves a WebSocket app with the real CLI (single process, or a
master with workers), opens WebSockets with the raw client of
``tests.websocket_helpers`` (every frame visible) or python-socketio's client,
signals the process by pid, and checks that every WebSocket got exactly one
Close frame, 1001, and nothing after it, and that the server exited 0 with a
clean shutdown.
"""

from __future__ import annotations

import re
import resource
import selectors
import signal
import struct
import threading
from pathlib import Path
from typing import Optional

import pytest
import socketio
import websocket

from tests.nginx_helpers import Nginx
from tests.process_helpers import (
    MASTER_READY,
    STARTUP_TIMEOUT,
    GProcess,
    free_port,
    gone,
    gshutdown_argv,
    refused,
    start_gshutdown,
    start_master,
    wait_until,
)
from tests.websocket_helpers import CLOSE, TEXT, RawWebSocket, close_frame, frame

#: Bounded, but enough to show the drain does not go one by one.
MANY = 200
GRACE = "20"


def open_websockets(port: int, count: int, path: str) -> list[RawWebSocket]:
    clients = []
    for n in range(count):
        client = RawWebSocket(("127.0.0.1", port)).open(path)
        clients.append(client)
        if n % 50 == 0:  # each kind of app really echoes
            client.send(frame(TEXT, b"ping %d" % n))
            assert client.read_frame() == (TEXT, b"ping %d" % n)
    return clients


def answer_one_1001_each(clients: list[RawWebSocket]) -> None:
    """Every client: one Close 1001, answered; then nothing but EOF."""
    for client in clients:
        got = client.read_frame()
        assert got is not None and got[0] == CLOSE, got
        assert struct.unpack("!H", got[1][:2])[0] == 1001
        client.send(close_frame(1001))
    for client in clients:
        assert client.frames_until_eof() == []
        client.close()


def shutdown_counts(server: GProcess) -> tuple[int, int]:
    told = sum(int(n) for n in re.findall(r"shutdown: (\d+) WebSocket\(s\) told to go away", server.log()))
    forced = sum(int(n) for n in re.findall(r"shutdown: (\d+) WebSocket\(s\) still open", server.log()))
    return told, forced


def test_sigterm_with_many_wsgi_websockets(tmp_path: Path) -> None:
    port = free_port()
    args = ("--bind", f"127.0.0.1:{port}", "--graceful-timeout", GRACE, "tests.apps.websockets:raw_echo")
    with start_gshutdown(tmp_path / "log", *args) as server:
        clients = open_websockets(port, MANY, "/")
        server.send_signal(signal.SIGTERM)
        answer_one_1001_each(clients)
        assert server.wait() == 0
        server.wait_for_log(r"shutdown: clean in")
        assert shutdown_counts(server) == (MANY, 0)
        assert server.log().count("handler done") == MANY


def test_sigterm_with_many_flask_sock_websockets(tmp_path: Path) -> None:
    port = free_port()
    args = ("--bind", f"127.0.0.1:{port}", "--graceful-timeout", GRACE, "tests.apps.websockets:flask_sock_app")
    with start_gshutdown(tmp_path / "log", *args) as server:
        clients = open_websockets(port, MANY, "/echo")
        server.send_signal(signal.SIGTERM)
        answer_one_1001_each(clients)
        assert server.wait() == 0
        server.wait_for_log(r"shutdown: clean in")
        assert shutdown_counts(server) == (MANY, 0)
        assert server.log().count("handler done") == MANY
        assert "Traceback" not in server.log()


def test_sigterm_to_a_master_drains_every_workers_websockets(tmp_path: Path) -> None:
    port = free_port()
    with start_master(
        tmp_path / "log", "tests.apps.websockets:raw_echo", port, "--graceful-timeout", GRACE, workers=2
    ) as server:
        clients = open_websockets(port, 40, "/")
        server.send_signal(signal.SIGTERM)
        answer_one_1001_each(clients)
        assert server.wait() == 0
        assert shutdown_counts(server) == (40, 0)


@pytest.mark.parametrize("gevent_websocket", [True, False], ids=["wsgi.websocket", "simple-websocket"])
def test_socketio_client_sees_the_server_go_away(tmp_path: Path, gevent_websocket: bool) -> None:
    """python-engineio speaks through wsgi.websocket with gevent-websocket installed, else simple-websocket."""
    env = None
    if gevent_websocket:
        import geventwebsocket  # noqa: F401 - the test extra installs it: engineio's first choice
    else:
        hidden = tmp_path / "hide" / "geventwebsocket"
        hidden.mkdir(parents=True)
        (hidden / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
        env = {"PYTHONPATH": str(hidden.parent)}
    port = free_port()
    args = ("--bind", f"127.0.0.1:{port}", "--graceful-timeout", GRACE, "examples.socketio_chat:app")
    with start_gshutdown(tmp_path / "log", *args, env=env) as server:
        client = socketio.Client(reconnection=False)
        said: list[str] = []
        disconnected = threading.Event()
        client.on("said", said.append)
        client.on("disconnect", lambda *reason: disconnected.set())
        client.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=10)
        try:
            assert client.transport() == "websocket"
            assert client.call("say", "hello", timeout=10) == {"ok": True}
            assert said == ["hello"]
            server.send_signal(signal.SIGTERM)
            assert disconnected.wait(15)
        finally:
            client.disconnect()
        assert server.wait() == 0
        server.wait_for_log(r"shutdown: clean in")
        assert shutdown_counts(server) == (1, 0)


def test_sighup_reload_sends_the_old_workers_websockets_1001(tmp_path: Path) -> None:
    port = free_port()
    with start_master(
        tmp_path / "log", "tests.apps.websockets:raw_echo", port, "--graceful-timeout", GRACE, workers=2
    ) as server:
        old = open_websockets(port, 20, "/")
        server.send_signal(signal.SIGHUP)
        answer_one_1001_each(old)  # the clients' cue to reconnect: to the new workers
        server.wait_for_log(r"reload done: generation 2 serving")
        again = RawWebSocket(("127.0.0.1", port)).open()
        again.send(frame(TEXT, b"after the reload"))
        assert again.read_frame() == (TEXT, b"after the reload")
        again.send(close_frame(1000))
        assert again.read_close_code() == 1000
        assert shutdown_counts(server) == (20, 0)
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0


def test_flask_sock_example_echoes_and_drains(tmp_path: Path) -> None:
    port = free_port()
    args = ("--bind", f"127.0.0.1:{port}", "examples.flask_sock_echo:app")
    with start_gshutdown(tmp_path / "log", *args) as server:
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/echo", timeout=10)
        ws.send("hello")
        assert ws.recv() == "hello"
        server.send_signal(signal.SIGTERM)
        opcode, payload = ws.recv_data(control_frame=True)
        assert (opcode, struct.unpack("!H", payload[:2])[0]) == (websocket.ABNF.OPCODE_CLOSE, 1001)
        ws.close()
        assert server.wait() == 0
        server.wait_for_log(r"shutdown: clean in")


def test_sigterm_to_gunicorn_with_the_gshutdown_worker_drains_websockets(tmp_path: Path) -> None:
    from tests.test_gunicorn import start_gunicorn

    port = free_port()
    with start_gunicorn(
        tmp_path, port, "--graceful-timeout", GRACE, workers=2, app="tests.apps.websockets:raw_echo"
    ) as server:
        clients = open_websockets(port, 40, "/")
        server.send_signal(signal.SIGTERM)
        answer_one_1001_each(clients)
        assert server.wait() == 0
        assert shutdown_counts(server) == (40, 0)


def test_websockets_through_nginx_get_1001_on_sigterm(tmp_path: Path) -> None:
    upstream = free_port()
    args = ("--bind", f"127.0.0.1:{upstream}", "--graceful-timeout", GRACE, "tests.apps.websockets:raw_echo")
    with start_gshutdown(tmp_path / "log", *args) as server:
        nginx = Nginx(tmp_path, free_port(), [upstream])
        try:
            wait_until(lambda: not refused(nginx.port))
            clients = [websocket.create_connection(f"ws://127.0.0.1:{nginx.port}/", timeout=10) for _ in range(10)]
            for n, ws in enumerate(clients):
                ws.send(f"through nginx {n}")
                assert ws.recv() == f"through nginx {n}"
            server.send_signal(signal.SIGTERM)
            for ws in clients:
                opcode, payload = ws.recv_data(control_frame=True)
                assert (opcode, struct.unpack("!H", payload[:2])[0]) == (websocket.ABNF.OPCODE_CLOSE, 1001)
                ws.close()
            assert server.wait() == 0
            assert shutdown_counts(server) == (10, 0)
        finally:
            nginx.stop()


# -- a thousand at once ----------------------------------------------------------------

#: The issue's figure: every one gets its 1001, and the server exits 0 in its budget.
THOUSAND = 1000


def _raised_nofile(needed: int) -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE (the server inherits it) to ``needed``; the limits before."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard >= needed, f"RLIMIT_NOFILE hard limit {hard} < {needed}"
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return soft, hard


def _server_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """The whole frames at the start of ``buffer`` (removed from it)."""
    frames = []
    while len(buffer) >= 2:
        length, offset = buffer[1] & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                break
            length, offset = struct.unpack("!H", buffer[2:4])[0], 4
        elif length == 127:
            if len(buffer) < 10:
                break
            length, offset = struct.unpack("!Q", buffer[2:10])[0], 10
        if len(buffer) < offset + length:
            break
        frames.append((buffer[0] & 0x0F, bytes(buffer[offset : offset + length])))
        del buffer[: offset + length]
    return frames


def every_frame_until_eof(clients: list[RawWebSocket], timeout: float) -> list[list[tuple[int, bytes]]]:
    """All clients at once (one selector): each one's frames until EOF, a Close answered as browsers do."""
    selector = selectors.DefaultSelector()
    seen: list[list[tuple[int, bytes]]] = [[] for _ in clients]
    buffers = [bytearray(client.buffer) for client in clients]
    for index, client in enumerate(clients):
        client.sock.setblocking(False)
        selector.register(client.sock, selectors.EVENT_READ, index)
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        while selector.get_map() and not deadline.is_set():
            for key, _ in selector.select(0.5):
                index = key.data
                sock = clients[index].sock
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(sock)
                    continue
                buffers[index] += data
                for got in _server_frames(buffers[index]):
                    seen[index].append(got)
                    if got[0] == CLOSE and len(seen[index]) == 1:
                        sock.setblocking(True)
                        sock.sendall(close_frame(1001))
                        sock.setblocking(False)
    finally:
        timer.cancel()
        selector.close()
    assert not deadline.is_set(), f"{sum(1 for frames in seen if not frames)} WebSocket(s) still open"
    return seen


def test_sigterm_with_a_thousand_websockets_gives_each_one_1001_and_exits_0(tmp_path: Path) -> None:
    before = _raised_nofile(3 * THOUSAND)  # the clients' descriptors here, the server's in the child
    clients: list[RawWebSocket] = []
    try:
        port = free_port()
        args = (
            "--bind", f"127.0.0.1:{port}", "--graceful-timeout", GRACE,
            "--max-connections", str(THOUSAND + 100), "--max-websockets", str(THOUSAND),
            "tests.apps.websockets:raw_echo",
        )  # fmt: skip
        with start_gshutdown(tmp_path / "log", *args) as server:
            clients = open_websockets(port, THOUSAND, "/")
            server.send_signal(signal.SIGTERM)
            seen = every_frame_until_eof(clients, timeout=60)
            codes = [
                [
                    struct.unpack("!H", payload[:2])[0] if opcode == CLOSE else f"opcode {opcode}"
                    for opcode, payload in frames
                ]
                for frames in seen
            ]
            assert codes == [[1001]] * THOUSAND, [c for c in codes if c != [1001]][:5]
            assert server.wait() == 0
            server.wait_for_log(r"shutdown: clean in")
            assert shutdown_counts(server) == (THOUSAND, 0)
            assert server.log().count("handler done (close code 1001)") == THOUSAND
    finally:
        for client in clients:
            client.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


# -- socket.io through a reload ------------------------------------------------------------


class RecordingClient:
    """A python-socketio client (reconnection on) that sends numbered ``record`` events and keeps what was acked."""

    def __init__(self, port: int) -> None:
        self.client = socketio.Client(reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.5)
        self.connected = threading.Event()
        self.connects = 0
        self.disconnects = 0
        #: Message id -> the pid of the worker that acknowledged it.
        self.acked: dict[int, int] = {}
        self.unacked: list[int] = []
        self.client.on("connect", self._on_connect)
        self.client.on("disconnect", self._on_disconnect)
        self.client.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=10)

    def _on_connect(self) -> None:
        self.connects += 1
        self.connected.set()

    def _on_disconnect(self, *reason: object) -> None:
        self.disconnects += 1
        self.connected.clear()

    def send(self, message_id: int) -> Optional[int]:
        """Send one message, waiting (bounded) for a connection first; the acking pid, or None."""
        assert self.connected.wait(15), "the client did not reconnect"
        try:
            pid = self.client.call("record", message_id, timeout=5)
        except (
            socketio.exceptions.TimeoutError,
            socketio.exceptions.BadNamespaceError,
            socketio.exceptions.DisconnectedError,
        ):
            self.unacked.append(message_id)
            return None
        self.acked[message_id] = pid
        return int(pid)


def test_socketio_client_reconnects_to_the_new_workers_after_sighup_and_no_acked_message_is_lost(
    tmp_path: Path,
) -> None:
    records = tmp_path / "records"
    records.touch()
    port = free_port()
    argv = gshutdown_argv(
        "tests.apps.websockets:socketio_app", "-b", f"127.0.0.1:{port}", "-w", "2",
        "--ready-timeout", "10", "--graceful-timeout", GRACE,
    )  # fmt: skip
    with GProcess(argv, tmp_path / "log", env={"RECORD_FILE": str(records)}) as server:
        server.wait_for_log(MASTER_READY, timeout=STARTUP_TIMEOUT)
        sender = RecordingClient(port)
        try:
            old_pids = {sender.send(n) for n in range(20)}
            assert None not in old_pids and len(old_pids) == 1, old_pids  # one WebSocket: one worker
            # Messages keep going out through the reload, from another thread.
            stop = threading.Event()

            def keep_sending() -> None:
                n = 1000
                while not stop.is_set():
                    sender.send(n)
                    n += 1

            during = threading.Thread(target=keep_sending)
            during.start()
            try:
                server.send_signal(signal.SIGHUP)
                server.wait_for_log(r"reload done: generation 2 serving", timeout=STARTUP_TIMEOUT)
                # The old worker's 1001 made the client reconnect: to a new worker.
                wait_until(lambda: sender.connects >= 2 and sender.connected.is_set(), timeout=STARTUP_TIMEOUT)
            finally:
                stop.set()
                during.join(30)
            assert not during.is_alive()
            new_pids = {sender.send(n) for n in range(2000, 2020)}
            assert None not in new_pids and not new_pids & old_pids, (old_pids, new_pids)
            assert sender.disconnects >= 1
            wait_until(lambda: all(gone(pid) for pid in old_pids if pid is not None), timeout=STARTUP_TIMEOUT)
        finally:
            sender.client.disconnect()
        recorded = {int(line.split()[0]) for line in records.read_text().splitlines()}
        lost = sorted(set(sender.acked) - recorded)
        assert not lost, f"acknowledged but never processed: {lost}"
        assert set(range(20)) | set(range(2000, 2020)) <= set(sender.acked)
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
