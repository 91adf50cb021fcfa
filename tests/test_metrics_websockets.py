"""WebSockets in ``--metrics-path``: open ones, messages in and out, close codes; per worker and summed.

Real servers (the CLI, single process or a master with two workers) serve the
WebSocket apps of ``tests.apps.websockets``; raw clients
(``tests.websocket_helpers``) send and close exactly as each case needs, and
the metrics path is scraped over loopback with ``http.client``. A worker
copies its numbers into the shared files every ``FLUSH_INTERVAL`` seconds and
when it is scraped, so with workers the test polls (bounded) until the sum
has caught up, then compares exactly.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Callable

from tests.metrics_helpers import METRICS_PATH, Scrape, scrape
from tests.process_helpers import free_port, start_gshutdown, start_master, wait_until
from tests.websocket_helpers import BINARY, CLOSE, TEXT, RawWebSocket, close_frame, frame

#: Long enough for a flush from every worker, on a loaded machine.
SETTLE = 15.0


def closes(found: Scrape) -> dict[str, float]:
    return found.by_label("gshutdown_websocket_closes_total", "code")


def messages(found: Scrape) -> dict[str, float]:
    return found.by_label("gshutdown_websocket_messages_total", "direction")


def echo(client: RawWebSocket, opcode: int, payload: bytes) -> None:
    client.send(frame(opcode, payload))
    assert client.read_frame() == (opcode, payload)


def test_wsgi_websockets_are_counted_open_by_message_and_by_close_code(tmp_path: Path) -> None:
    port = free_port()
    args = ("--bind", f"127.0.0.1:{port}", "--metrics-path", METRICS_PATH, "tests.apps.websockets:raw_echo")
    with start_gshutdown(tmp_path / "log", *args) as server:
        before = scrape(port)
        assert before.value("gshutdown_websockets") == 0
        assert messages(before) == {"in": 0, "out": 0}
        assert closes(before) == {"1000": 0, "1001": 0, "1006": 0}
        assert before.type_of("gshutdown_websocket_messages") == "counter"

        clients = [RawWebSocket(("127.0.0.1", port)).open() for _ in range(4)]
        for n, client in enumerate(clients):
            for m in range(n + 1):  # 1 + 2 + 3 + 4 = 10 echoed messages
                echo(client, TEXT if m % 2 else BINARY, b"message %d of %d" % (m, n))
        # A message in two fragments is one message each way.
        clients[0].send(frame(TEXT, b"two ", fin=False) + frame(0x0, b"parts"))
        assert clients[0].read_frame() == (TEXT, b"two parts")
        # A ping is no message.
        clients[1].send(frame(0x9, b"ping"))
        assert clients[1].read_frame() == (0xA, b"ping")
        open_now = scrape(port)
        assert open_now.value("gshutdown_websockets") == 4
        assert messages(open_now) == {"in": 11, "out": 11}

        clients[0].send(close_frame(1000))
        assert clients[0].read_close_code() == 1000
        clients[1].send(close_frame(4001, b"app-defined"))
        assert clients[1].read_close_code() == 4001
        clients[2].send(frame(TEXT, b"\xff\xfe not UTF-8"))  # the server fails it: 1007
        assert clients[2].read_close_code() == 1007
        clients[3].sock.close()  # no Close frame at all: 1006
        for client in clients[:3]:
            assert client.frames_until_eof() == []
            client.close()

        def ended() -> Scrape | None:
            found = scrape(port)
            return found if found.value("gshutdown_websockets") == 0 else None

        after = wait_until(ended, timeout=SETTLE)
        assert closes(after) == {"1000": 1, "1001": 0, "1006": 1, "1007": 1, "4001": 1}
        assert messages(after) == {"in": 11, "out": 11}
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0


def test_simple_websocket_apps_are_counted_too(tmp_path: Path) -> None:
    """flask-sock speaks the protocol itself on gunicorn.socket: the server counts the frames it relays."""
    port = free_port()
    args = ("--bind", f"127.0.0.1:{port}", "--metrics-path", METRICS_PATH, "tests.apps.websockets:flask_sock_app")
    with start_gshutdown(tmp_path / "log", *args) as server:
        first, second = (RawWebSocket(("127.0.0.1", port)).open("/echo") for _ in range(2))
        for n in range(5):
            echo(first, TEXT, b"first %d" % n)
        # Split one frame's head across two writes, and send two frames in one:
        # the counter reads frame heads across reads.
        whole = frame(TEXT, b"x" * 300)
        second.send(whole[:3])
        second.send(whole[3:] + frame(TEXT, b"next"))
        assert second.read_frame() == (TEXT, b"x" * 300)
        assert second.read_frame() == (TEXT, b"next")
        assert scrape(port).value("gshutdown_websockets") == 2
        assert messages(scrape(port)) == {"in": 7, "out": 7}

        first.send(close_frame(1000))
        assert first.read_close_code() == 1000
        first.close()
        server.send_signal(signal.SIGTERM)  # second gets the server's 1001 and echoes it
        assert second.read_close_code() == 1001
        second.send(close_frame(1001))
        assert second.frames_until_eof() == []
        second.close()
        assert server.wait() == 0
        server.wait_for_log(r"shutdown: clean in")


def _until(port: int, check: Callable[[Scrape], bool]) -> Scrape:
    last: list[Scrape] = []

    def caught_up() -> Scrape | None:
        found = scrape(port)
        last[:] = [found]
        return found if check(found) else None

    try:
        return wait_until(caught_up, timeout=SETTLE, interval=0.2)
    except AssertionError:
        raise AssertionError(f"the sum never caught up:\n{last[0].text if last else ''}") from None


def test_workers_sum_websockets_and_a_reload_counts_the_old_workers_1001(tmp_path: Path) -> None:
    port = free_port()
    with start_master(
        tmp_path / "log", "tests.apps.websockets:raw_echo", port, "--metrics-path", METRICS_PATH, workers=2
    ) as server:
        clients = [RawWebSocket(("127.0.0.1", port)).open() for _ in range(12)]
        for n, client in enumerate(clients):
            echo(client, TEXT, b"hello %d" % n)
        summed = _until(
            port, lambda found: found.value("gshutdown_websockets") == 12 and messages(found) == {"in": 12, "out": 12}
        )
        per_worker = summed.by_label("gshutdown_worker_websockets", "pid")
        assert len(per_worker) == 2 and sum(per_worker.values()) == 12, per_worker

        server.send_signal(signal.SIGHUP)  # the old workers tell every WebSocket to go away
        for client in clients:
            assert client.read_close_code() == 1001
            client.send(close_frame(1001))
            assert client.frames_until_eof() == []
            client.close()
        server.wait_for_log(r"reload done: generation 2 serving", timeout=SETTLE)
        # The old workers are gone: their counters stay in the sum, their gauges leave it.
        after = _until(port, lambda found: closes(found).get("1001") == 12)
        assert after.value("gshutdown_websockets") == 0
        assert messages(after) == {"in": 12, "out": 12}
        assert closes(after) == {"1000": 0, "1001": 12, "1006": 0}
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0


def test_a_websocket_close_frame_seen_by_the_counter_is_read_across_writes(tmp_path: Path) -> None:
    """The Close code of a simple-websocket app's client, split byte by byte, is still counted."""
    port = free_port()
    args = ("--bind", f"127.0.0.1:{port}", "--metrics-path", METRICS_PATH, "tests.apps.websockets:flask_sock_app")
    with start_gshutdown(tmp_path / "log", *args) as server:
        client = RawWebSocket(("127.0.0.1", port)).open("/echo")
        echo(client, TEXT, b"hi")
        for byte in close_frame(4321, b"bye"):
            client.send(bytes((byte,)))
        got = client.read_frame()
        assert got is not None and got[0] == CLOSE
        client.close()
        found = _until(port, lambda found: found.value("gshutdown_websockets") == 0)
        assert closes(found).get("4321") == 1
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
