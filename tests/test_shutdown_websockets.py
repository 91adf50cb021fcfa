"""WebSockets and real signals: many open WebSockets, a SIGTERM, one Close 1001 each, exit 0.

Each test serves a WebSocket app with the real CLI (single process, or a
master with workers), opens WebSockets with the raw client of
``tests.websocket_helpers`` (every frame visible) or python-socketio's client,
signals the process by pid, and checks that every WebSocket got exactly one
Close frame, 1001, and nothing after it, and that the server exited 0 with a
clean shutdown.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import threading
from pathlib import Path

import pytest
import socketio
import websocket

from tests.process_helpers import GProcess, free_port, refused, start_gshutdown, start_master, wait_until
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


NGINX_WEBSOCKET_CONF = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


def test_websockets_through_nginx_get_1001_on_sigterm(tmp_path: Path) -> None:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.path.exists(binary), "nginx is not installed (Debian: apt-get install nginx-light)"
    upstream, port = free_port(), free_port()
    (tmp_path / "nginx.conf").write_text(NGINX_WEBSOCKET_CONF.format(dir=tmp_path, port=port, upstream=upstream))
    args = ("--bind", f"127.0.0.1:{upstream}", "--graceful-timeout", GRACE, "tests.apps.websockets:raw_echo")
    with start_gshutdown(tmp_path / "log", *args) as server:
        nginx = GProcess(
            [binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
            tmp_path / "nginx.out",
        )
        with nginx:
            wait_until(lambda: not refused(port))
            clients = [websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=10) for _ in range(10)]
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
            os.kill(nginx.pid, signal.SIGTERM)
            nginx.wait()
