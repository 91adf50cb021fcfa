"""The master's supervision of its workers, with real processes and signals.

A master that dies leaves no orphans (nor does a new master killed during an
upgrade); SIGUSR1 reopens the logs everywhere; SIGTTIN/SIGTTOU change the
worker count under load; ``--max-requests`` recycles workers under load without
a failed request; ``--timeout`` replaces a worker whose event loop is blocked,
with its stack in the log; a worker killed by any signal, real-time ones
included, is replaced.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

from gshutdown.process.exit_status import ExitStatus
from tests.process_helpers import (
    MASTER_READY,
    PROBE,
    GProcess,
    LoadClients,
    connect,
    free_port,
    get,
    gone,
    gshutdown_argv,
    read_response,
    recv_eof,
    request_bytes,
    start_master,
    wait_until,
    with_and_without_preload,
)


def _master(tmp_path: Path, port: int, *extra: str, preload: bool = False) -> GProcess:
    return start_master(tmp_path / "master.log", PROBE, port, *extra, preload=preload)


def _ready_workers(text: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"worker (\d+) ready", text)]


def _pids_answering(port: int, wanted: int, attempts: int = 400) -> tuple[set[bytes], int]:
    """Pids that answered ``/pid`` on new connections until ``wanted`` distinct ones did, and the request count."""
    seen: set[bytes] = set()
    for count in range(1, attempts + 1):
        seen.add(get(port, "/pid")[2])
        if len(seen) >= wanted:
            return seen, count
    raise AssertionError(f"only {len(seen)} of {wanted} workers answered {attempts} requests")


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _lines(path: Path) -> list[str]:
    return _text(path).splitlines()


def test_kill_9_of_the_master_leaves_no_orphan_serving(tmp_path: Path) -> None:
    port = free_port()
    with _master(tmp_path, port) as master:
        workers = _ready_workers(master.log())
        assert len(workers) == 2
        with connect(port) as idle, connect(port) as slow:
            idle.sendall(request_bytes("/"))
            assert read_response(idle)[0] == 200
            slow.sendall(request_bytes("/slow?s=1.5"))
            master.wait_for_log(r"slow request started")
            os.kill(master.pid, signal.SIGKILL)
            assert recv_eof(idle, timeout=5) == b""
            status, headers, body = read_response(slow)
            drained = time.monotonic()
            wait_until(lambda: all(gone(pid) for pid in workers), timeout=5)
            gone_after = time.monotonic() - drained
        log = master.log()
    print(f"\nworkers gone {gone_after * 1000:.0f} ms after the last request drained")
    assert (status, body) == (200, b"slept 1.5")
    assert headers["connection"] == "close"
    assert gone_after < 1.0
    assert log.count("master gone: graceful shutdown") == 2, log
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "an orphan still accepts connections"


def test_the_workers_of_a_new_master_killed_in_an_aborted_upgrade_exit(tmp_path: Path) -> None:
    marker = tmp_path / "slow-import"
    app = tmp_path / "slowstart.py"
    app.write_text(
        "import os, time\n"
        f"if os.path.exists({str(marker)!r}):\n"
        "    time.sleep(3)  # the new code takes longer to start than --ready-timeout allows\n"
        "def app(environ, start_response):\n"
        "    body = str(os.getpid()).encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n"
    )
    port = free_port()
    proc = GProcess(
        gshutdown_argv(str(app), "-b", f"127.0.0.1:{port}", "-w", "2", "--ready-timeout", "1"), tmp_path / "master.log"
    )
    with proc:
        proc.wait_for_log(MASTER_READY, timeout=20)
        old_workers = set(_ready_workers(proc.log()))
        marker.write_text("")
        proc.send_signal(signal.SIGUSR2)
        upgrade = proc.wait_for_log(r"upgrading: new master (\d+) started")
        proc.wait_for_log(r"upgrade failed: new master \d+ not ready within 1 s; killed", timeout=10)
        new_master = int(upgrade.group(1))
        orphans = [int(pid) for pid in re.findall(rf"\[{new_master}\] \[INFO\] worker (\d+) started", proc.log())]
        assert len(orphans) == 2, proc.log()
        # They finish importing, find their master gone, drain and exit.
        wait_until(lambda: all(gone(pid) for pid in orphans), timeout=15)
        assert {int(pid) for pid in _pids_answering(port, 2)[0]} == old_workers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == ExitStatus.OK
    assert proc.log().count("master gone: graceful shutdown") == 2


def test_sigusr1_reopens_the_access_and_error_logs_of_the_master_and_every_worker(tmp_path: Path) -> None:
    port = free_port()
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    proc = GProcess(
        gshutdown_argv(
            PROBE, "-b", f"127.0.0.1:{port}", "-w", "2", "--access-log", str(access), "--error-log", str(errors)
        ),
        tmp_path / "stdout.log",
    )
    with proc:
        wait_until(lambda: re.search(MASTER_READY, _text(errors)), timeout=20)
        assert get(port, "/multiprocess")[2] == b"True"
        pids, count = _pids_answering(port, 2)
        wait_until(lambda: len(_lines(access)) == count + 1)  # each request once, from either worker
        access.rename(tmp_path / "access.log.1")
        errors.rename(tmp_path / "error.log.1")
        proc.send_signal(signal.SIGUSR1)
        # The master, then each worker, says so in the new error log.
        wait_until(lambda: len(re.findall(r"SIGUSR1: reopened 2 log file\(s\)", _text(errors))) == 3)
        again, count_after = _pids_answering(port, 2)
        assert again == pids
        wait_until(lambda: len(_lines(access)) == count_after)
        assert len(_lines(tmp_path / "access.log.1")) == count + 1, "lines still went to the renamed file"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == ExitStatus.OK
    assert "exit" in errors.read_text()
    assert proc.log() == "", "with --error-log, nothing goes to stderr"


@with_and_without_preload
def test_sigttin_and_sigttou_change_the_worker_count_under_load_losing_nothing(tmp_path: Path, preload: bool) -> None:
    port = free_port()
    with _master(tmp_path, port, preload=preload) as master, LoadClients(port, count=4) as load:
        wait_until(lambda: load.ok > 100)
        mark = len(master.log())
        master.send_signal(signal.SIGTTIN)
        master.wait_for_log(r"SIGTTIN: 3 worker\(s\) now", start=mark)
        master.wait_for_log(r"worker \d+ ready", start=mark)
        assert len(_pids_answering(port, 3)[0]) == 3
        mark = len(master.log())
        master.send_signal(signal.SIGTTOU)
        removed = int(master.wait_for_log(r"worker (\d+): removed by SIGTTOU; it drains", start=mark).group(1))
        master.wait_for_log(rf"worker {removed} exited with status 0", start=mark)
        served = load.ok
        wait_until(lambda: load.ok > served + 100)
        load.stop()
        master.send_signal(signal.SIGTERM)
        assert master.wait() == ExitStatus.OK
    assert load.failures == []
    assert str(removed).encode() not in load.bodies[-50:]


@with_and_without_preload
def test_max_requests_recycles_workers_under_keep_alive_load_losing_nothing(tmp_path: Path, preload: bool) -> None:
    port = free_port()
    with (
        _master(tmp_path, port, "--max-requests", "200", "--max-requests-jitter", "50", preload=preload) as master,
        LoadClients(port, count=8, limit=60) as load,
    ):
        wait_until(lambda: len(re.findall(r"exited with status 0", master.log())) >= 5, timeout=60)
        load.stop()
        master.send_signal(signal.SIGTERM)
        assert master.wait() == ExitStatus.OK
    log = master.log()
    recycles = len(re.findall(r"replaced after --max-requests; it drains", log))
    limits = [int(n) for n in re.findall(r"(\d+) requests served \(--max-requests\)", log)]
    print(f"\n--max-requests 200 (+0..50): {recycles} recycles, {load.ok} ok, {load.retries} retried (reused conn)")
    assert load.failures == []
    assert recycles >= 5
    assert limits and all(200 <= n <= 250 for n in limits), limits
    assert len(set(limits)) > 1, "the jitter gave every worker the same limit"


@with_and_without_preload
def test_a_worker_blocked_past_timeout_is_replaced_with_its_stack_logged(tmp_path: Path, preload: bool) -> None:
    port = free_port()
    with _master(tmp_path, port, "--timeout", "2", preload=preload) as master, connect(port) as spinning:
        spinning.sendall(request_bytes("/spin?s=30"))
        stuck = int(master.wait_for_log(r"\[(\d+)\] \[INFO\] spin started").group(1))
        # Meanwhile the other worker serves every new connection.
        others = {get(port, "/pid")[2] for _ in range(10)}
        assert others and str(stuck).encode() not in others
        master.wait_for_log(rf"worker {stuck}: no heartbeat for .* its stack follows", timeout=10)
        master.wait_for_log(r"in spin_the_cpu")
        master.wait_for_log(rf"worker {stuck} exited with signal SIGKILL")
        assert recv_eof(spinning) == b""
        mark = master.log().index(f"worker {stuck}: no heartbeat")
        master.wait_for_log(r"worker \d+ ready", start=mark)
        assert len(_pids_answering(port, 2)[0]) == 2
        master.send_signal(signal.SIGTERM)
        # A worker killed for --timeout had its connections forced.
        assert master.wait() == ExitStatus.FORCED


def test_a_worker_killed_by_a_real_time_signal_is_replaced(tmp_path: Path) -> None:
    port = free_port()
    with _master(tmp_path, port) as master:
        victim = _ready_workers(master.log())[0]
        os.kill(victim, signal.SIGRTMIN + 6)
        master.wait_for_log(rf"worker {victim} died with signal SIGRTMIN\+6; restarting")
        mark = master.log().index("SIGRTMIN+6")
        master.wait_for_log(r"worker \d+ ready", start=mark)
        assert len(_pids_answering(port, 2)[0]) == 2
        master.send_signal(signal.SIGTERM)
        assert master.wait() == ExitStatus.OK


def test_max_blocking_time_logs_the_greenlet_that_blocks_the_hub(tmp_path: Path) -> None:
    port = free_port()
    proc = GProcess(
        gshutdown_argv(PROBE, "-b", f"127.0.0.1:{port}", "--max-blocking-time", "200"), tmp_path / "server.log"
    )
    with proc:
        proc.wait_listening()
        assert get(port, "/spin?s=0.8")[2] == b"spun"
        proc.wait_for_log(r"the hub was blocked for over 200 ms")
        proc.wait_for_log(r"spin_the_cpu")
        assert get(port, "/")[0] == 200  # logged, not killed
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == ExitStatus.OK


def _listening_sockets(port: int) -> int:
    """LISTEN entries for ``port`` in the kernel's IPv4 TCP table."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1].endswith(f":{port:04X}") and row.split()[3] == "0A")


def test_reuse_port_gives_each_worker_its_own_listener_and_the_kernel_spreads_connections(tmp_path: Path) -> None:
    port = free_port()
    with _master(tmp_path, port, "--reuse-port") as master:
        assert _listening_sockets(port) == 2
        pids = [get(port, "/pid")[2] for _ in range(60)]
        assert len(set(pids)) == 2
        master.send_signal(signal.SIGTTIN)
        master.wait_for_log(r"SIGTTIN: 3 worker\(s\) now")
        wait_until(lambda: _listening_sockets(port) == 3)
        master.send_signal(signal.SIGTERM)
        assert master.wait() == ExitStatus.OK
    assert _listening_sockets(port) == 0


def test_shared_listener_by_default(tmp_path: Path) -> None:
    port = free_port()
    with _master(tmp_path, port) as master:
        assert _listening_sockets(port) == 1
        master.send_signal(signal.SIGTERM)
        assert master.wait() == ExitStatus.OK
