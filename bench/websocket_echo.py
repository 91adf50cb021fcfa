"""WebSocket figures: gshutdown against gunicorn's GeventWebSocketWorker, measured in the same run.

Three measurements, each against both servers serving the same
``wsgi.websocket`` echo app (this module's ``app``), one process each:

1. echo round trips per second over ``--echo-sockets`` WebSockets (50), for
   ``--seconds`` (5): every socket sends a 32-byte text message and waits for
   its echo, again and again (one message in flight per socket);
2. RSS per idle WebSocket: the server's RSS with ``--idle`` (2,000) open,
   silent WebSockets, minus its RSS with none (after a warm-up), divided by
   the count;
3. SIGTERM to exit with those ``--idle`` WebSockets open, each client
   answering the server's Close (if one comes) as browsers do; how many got
   Close 1001.
4. RSS per idle WebSocket that offered permessage-deflate as browsers do,
   after one echoed message each (``--idle-deflate``, 2,000): the server's
   compressor, if it compresses, is kept for the WebSocket's life.

The client is plain non-blocking sockets and one selector per process (no
threads), frames pre-masked, so it costs the same against both servers. For
the echo, ``--client-processes`` (2) share the WebSockets: one Python client
process is slower than either server, so alone it would measure itself. The
machine's cores are shared by the server and its clients all the same, so the
load-independent figure is the server's CPU time per round trip (user +
system, from /proc), printed with its ratio.

    python bench/websocket_echo.py [--seconds 5] [--echo-sockets 50] [--client-processes 2] [--idle 2000]
                                   [--idle-deflate 2000] [--servers gshutdown,gunicorn]
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MESSAGE = b"0123456789abcdef0123456789abcdef"  # 32 bytes of text
_MASK = b"\x01\x02\x03\x04"
# A masked client text frame of MESSAGE, and the server's unmasked echo of it.
ECHO_FRAME = bytes((0x81, 0x80 | len(MESSAGE))) + _MASK + bytes(b ^ _MASK[i % 4] for i, b in enumerate(MESSAGE))
ECHO_REPLY = bytes((0x81, len(MESSAGE))) + MESSAGE
CLOSE_REPLY = bytes((0x88, 0x82)) + _MASK + bytes(b ^ _MASK[i % 4] for i, b in enumerate(struct.pack("!H", 1001)))


def app(environ: dict[str, Any], start_response: Any) -> Any:
    """A ``wsgi.websocket`` echo: the same app for both servers."""
    ws = environ.get("wsgi.websocket")
    if ws is None:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]
    while True:
        message = ws.receive()
        if message is None:
            break
        ws.send(message)
    return []


# -- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(name: str, port: int) -> list[str]:
    if name == "gshutdown":
        return [
            sys.executable, "-m", "gshutdown", "--log-level", "info", "--readiness-path", "",
            "-b", f"127.0.0.1:{port}", "--graceful-timeout", "10",
            "--max-connections", "12000", "--max-websockets", "11000",
            "bench.websocket_echo:app",
        ]  # fmt: skip
    gunicorn = shutil.which("gunicorn") or os.path.join(os.path.dirname(sys.executable), "gunicorn")
    return [
        gunicorn, "-k", "geventwebsocket.gunicorn.workers.GeventWebSocketWorker", "-w", "1",
        "--worker-connections", "12000", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "10",
        "--log-level", "info", "bench.websocket_echo:app",
    ]  # fmt: skip


class Served:
    """One server process; ``pid`` is the process that serves (gunicorn's worker, not its arbiter)."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            server_command(name, self.port), cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{name} did not start:\n{self.log_path.read_text()}") from None
                time.sleep(0.05)
        self.pid = self.proc.pid
        if name == "gunicorn":
            # The arbiter listens before its worker is forked.
            children: list[str] = []
            while not children:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn's worker did not start:\n{self.log_path.read_text()}")
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
                time.sleep(0.05)
            self.pid = int(children[0])

    def cpu_seconds(self) -> float:
        """User + system CPU time of the serving process so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{self.pid}/status").read_text(), re.MULTILINE)
        assert match
        return int(match[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


# -- clients -------------------------------------------------------------------------------------


def open_websockets(port: int, count: int, *, deflate: bool = False) -> list[socket.socket]:
    socks = []
    # As browsers offer it.
    extensions = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else ""
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extensions}\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            if not data:
                raise RuntimeError("closed during the handshake")
            head += data
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {head[:80]!r}")
        sock.setblocking(False)
        socks.append(sock)
    return socks


def echo_round_trips(port: int, count: int, seconds: float) -> tuple[float, int]:
    """Round trips per second over ``count`` WebSockets, one message in flight each; and their number."""
    socks = open_websockets(port, count)
    selector = selectors.DefaultSelector()
    pending = {}
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
        pending[sock] = b""
        sock.send(ECHO_FRAME)
    done = 0
    started = time.perf_counter()
    end = started + seconds
    while time.perf_counter() < end:
        for key, _ in selector.select(0.5):
            sock = key.fileobj
            data = pending[sock] + sock.recv(65536)  # type: ignore[union-attr]
            while len(data) >= len(ECHO_REPLY):
                assert data[: len(ECHO_REPLY)] == ECHO_REPLY, data[:40]
                data = data[len(ECHO_REPLY) :]
                done += 1
                sock.send(ECHO_FRAME)  # type: ignore[union-attr]
            pending[sock] = data  # type: ignore[index]
    elapsed = time.perf_counter() - started
    for sock in socks:
        sock.close()
    return done / elapsed, done


def _echo_client(port: int, count: int, seconds: float, start: Any, out: Any) -> None:
    start.wait()
    out.send(echo_round_trips(port, count, seconds)[1])
    out.close()


def echo_in_processes(port: int, count: int, seconds: float, processes: int) -> tuple[float, int]:
    """``echo_round_trips`` over ``count`` WebSockets shared by ``processes`` client processes; per second, total."""
    if processes <= 1:
        return echo_round_trips(port, count, seconds)
    context = multiprocessing.get_context("fork")
    start = context.Event()
    children = []
    for index in range(processes):
        receiving, sending = context.Pipe(duplex=False)
        share = count // processes + (1 if index < count % processes else 0)
        child = context.Process(target=_echo_client, args=(port, share, seconds, start, sending))
        child.start()
        sending.close()
        children.append((child, receiving))
    started = time.perf_counter()
    start.set()
    done = sum(receiving.recv() for _, receiving in children)
    elapsed = time.perf_counter() - started
    for child, _ in children:
        child.join(10)
    return done / elapsed, done


def sigterm_to_exit(served: Served, socks: list[socket.socket]) -> dict[str, Any]:
    """SIGTERM the server; answer every Close; seconds to its exit, and the Closes seen per code."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    codes: dict[int, int] = {}
    buffers = {sock: b"" for sock in socks}
    cpu_before = cpu_last = served.cpu_seconds()
    sent = time.monotonic()
    os.kill(served.proc.pid, signal.SIGTERM)
    exited = None
    while selector.get_map():
        for key, _ in selector.select(0.05):
            sock = key.fileobj
            try:
                data = sock.recv(4096)  # type: ignore[union-attr]
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                sock.close()  # type: ignore[union-attr]
                continue
            buffered = buffers[sock] + data  # type: ignore[index]
            buffers[sock] = buffered  # type: ignore[index]
            if len(buffered) >= 4 and buffered[0] == 0x88:
                code = struct.unpack("!H", buffered[2:4])[0]
                codes[code] = codes.get(code, 0) + 1
                buffers[sock] = b"\x00"  # counted: ignore what follows
                try:
                    sock.send(CLOSE_REPLY)  # type: ignore[union-attr]
                except OSError:
                    pass
        if exited is None:
            try:
                cpu_last = served.cpu_seconds()  # the last reading before it exits
            except (OSError, IndexError):
                pass
            if served.proc.poll() is not None:
                exited = time.monotonic() - sent
        if time.monotonic() - sent > 60:
            break
    served.proc.wait(60)
    if exited is None:
        exited = time.monotonic() - sent
    return {
        "seconds": round(exited, 3),
        # CPU the serving process spent meanwhile: the machine is shared, so
        # this is the steadier figure (gunicorn's arbiter is not the worker: None).
        "server_cpu_s": round(cpu_last - cpu_before, 3) if served.pid == served.proc.pid else None,
        "close_codes": codes,
        "exit_status": served.proc.returncode,
    }


def measure(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"server": name}
    served = Served(name, workdir)
    try:
        open_websockets(served.port, 20)  # warm-up (closed again by the GC)
        cpu_before = served.cpu_seconds()
        per_second, done = echo_in_processes(served.port, args.echo_sockets, args.seconds, args.client_processes)
        result["echo_round_trips_per_s"] = round(per_second)
        # The client shares the machine: the server's CPU per round trip is the steadier figure.
        result["server_cpu_us_per_round_trip"] = round((served.cpu_seconds() - cpu_before) / done * 1e6, 1)
    finally:
        served.stop()
    served = Served(name, workdir)
    try:
        for sock in open_websockets(served.port, 50):
            sock.close()
        time.sleep(0.5)  # let the closes land before the baseline
        before = served.rss_kib()
        socks = open_websockets(served.port, args.idle)
        time.sleep(0.5)
        after = served.rss_kib()
        result["idle_websockets"] = args.idle
        result["rss_kib_per_idle_websocket"] = round((after - before) / args.idle, 1)
        result["sigterm"] = sigterm_to_exit(served, socks)
    finally:
        served.stop()
    if args.idle_deflate:
        result["rss_kib_per_idle_deflate_websocket"] = idle_deflate_rss(name, args.idle_deflate, workdir)
    return result


def idle_deflate_rss(name: str, count: int, workdir: Path) -> float:
    """RSS per idle WebSocket that offered permessage-deflate, after one echoed message each."""
    served = Served(name, workdir)
    try:
        for sock in open_websockets(served.port, 50):
            sock.close()
        time.sleep(0.5)
        before = served.rss_kib()
        socks = open_websockets(served.port, count, deflate=True)
        for sock in socks:
            sock.setblocking(True)
            sock.sendall(ECHO_FRAME)
        for sock in socks:
            if not sock.recv(4096):
                raise RuntimeError("no echo")
        time.sleep(0.5)
        return round((served.rss_kib() - before) / count, 1)
    finally:
        served.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--echo-sockets", type=int, default=50)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--idle-deflate", type=int, default=2000, help="0: skip")
    parser.add_argument("--servers", default="gshutdown,gunicorn")
    args = parser.parse_args()
    # The clients' descriptors here, the server's (inherited) in its process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * max(args.idle, args.idle_deflate) + 1000
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    names = args.servers.split(",")
    if "gunicorn" in names:
        try:
            import geventwebsocket  # noqa: F401
        except ImportError:
            print("gunicorn skipped: gevent-websocket is not installed", file=sys.stderr)
            names.remove("gunicorn")
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(name, args, Path(tmp)) for name in names]
    for result in results:
        print(json.dumps(result))
    if len(results) == 2 and results[1]["echo_round_trips_per_s"]:
        ratio = results[0]["echo_round_trips_per_s"] / results[1]["echo_round_trips_per_s"]
        print(f"echo round trips: {names[0]} / {names[1]} = {ratio:.2f}x")
        cpu = results[1]["server_cpu_us_per_round_trip"] / results[0]["server_cpu_us_per_round_trip"]
        print(f"server CPU per round trip: {names[1]} / {names[0]} = {cpu:.2f}x")


if __name__ == "__main__":
    main()
