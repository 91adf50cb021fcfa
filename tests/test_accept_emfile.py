"""Out of file descriptors at accept (EMFILE), in a real process with a low RLIMIT_NOFILE.

The server must pause accepting (not spin), keep serving the connections it
has, log the condition once per interval (no traceback per retry), and accept
the waiting clients once descriptors are free again.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

from tests.process_helpers import (
    GProcess,
    connect,
    free_port,
    gshutdown_argv,
    read_response,
    request_bytes,
)

#: Room for the interpreter's own descriptors plus about 30 connections.
NOFILE = 40
EXHAUSTED = r"accept: Too many open files \(EMFILE\)"


def limited_gshutdown(log_path: Path, port: int) -> GProcess:
    """``gshutdown`` with RLIMIT_NOFILE lowered to NOFILE before it starts."""
    argv = gshutdown_argv(
        "-b", f"127.0.0.1:{port}", "--no-monkey-patch", "--idle-timeout", "60", "tests.apps.probe:app"
    )
    code = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, {NOFILE})); "
        "sys.argv = ['gshutdown', *sys.argv[1:]]; runpy.run_module('gshutdown', run_name='__main__')"
    )
    return GProcess([sys.executable, "-c", code, *argv[3:]], log_path)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_fds_pauses_accept_keeps_serving_and_recovers(tmp_path: Path) -> None:
    port = free_port()
    with limited_gshutdown(tmp_path / "log", port) as server:
        server.wait_listening()
        capacity = NOFILE - open_fds(server.pid)
        served = []
        waiting = []
        try:
            for _ in range(capacity):
                sock = connect(port)
                sock.sendall(request_bytes("/"))
                assert read_response(sock)[0] == 200
                served.append(sock)
            # Every descriptor is taken: these stay in the listen backlog.
            for _ in range(3):
                sock = connect(port)
                sock.sendall(request_bytes("/"))
                waiting.append(sock)
            first = server.wait_for_log(EXHAUSTED)
            assert "Traceback" not in server.log()

            # Paused, not spinning: a busy accept loop would burn a whole core.
            before, started = cpu_seconds(server.pid), time.monotonic()
            served[0].sendall(request_bytes("/"))  # open connections are still served
            assert read_response(served[0])[0] == 200
            time.sleep(1.0)  # the measuring window, not a wait for an event
            used = cpu_seconds(server.pid) - before
            window = time.monotonic() - started
            print(f"\nCPU while out of fds: {used:.3f} s in {window:.2f} s ({100 * used / window:.1f}%)")
            assert used < 0.25 * window, f"{used:.2f} s of CPU in {window:.2f} s"
            assert len(re.findall(EXHAUSTED, server.log())) == 1  # once per interval, not per retry

            # Descriptors free again: the waiting clients are accepted and served.
            freed_at = time.monotonic()
            for sock in served[-5:]:
                sock.close()
            del served[-5:]
            for sock in waiting:
                assert read_response(sock)[0] == 200
            print(f"recovered {time.monotonic() - freed_at:.3f} s after descriptors were freed")
            server.wait_for_log(r"accept: resumed after [0-9.]+ s", start=first.end())
            assert "Traceback" not in server.log()
        finally:
            for sock in served + waiting:
                sock.close()
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert "ERROR" not in server.log()
