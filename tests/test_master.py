"""The master (``--workers``): drain, worker replacement, SIGHUP reload, SIGUSR2 upgrade.

Real processes, real signals, real clients on loopback; the load clients
(``LoadClients``) retry once only a request on a reused keep-alive connection.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
from pathlib import Path

import pytest

from tests.process_helpers import (
    PROBE,
    GProcess,
    LoadClients,
    free_port,
    get,
    gone,
    gshutdown_argv,
    start_master,
    wait_until,
)

#: Each master test runs twice: signals to the master's pid, and to its whole
#: process group (systemd's KillMode=control-group, tini -g, Ctrl-C).
by_pid_and_group = pytest.mark.parametrize("group", [False, True], ids=["pid", "group"])
#: Those that supervise workers also run once with ``--preload``: the master
#: imported the app, and so was monkey-patched (the process group case is the
#: topology tests' ``preload-group``).
by_pid_and_group_and_preloaded = pytest.mark.parametrize(
    "group, preload", [(False, False), (True, False), (False, True)], ids=["pid", "group", "pid-preload"]
)


def _app_file(tmp_path: Path, body: str = "v1") -> Path:
    path = tmp_path / "reloadable.py"
    path.write_text(
        "import os\n"
        "def app(environ, start_response):\n"
        f"    body = ('{body} ' + str(os.getpid())).encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n"
    )
    return path


def _start(tmp_path: Path, app: str, port: int, *extra: str, preload: bool = False) -> GProcess:
    return start_master(tmp_path / "master.log", app, port, *extra, preload=preload)


@by_pid_and_group
def test_sigterm_drains_every_worker_and_the_master_exits_0(tmp_path: Path, group: bool) -> None:
    port = free_port()
    with _start(tmp_path, PROBE, port) as master:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/slow?s=0.5")
            master.wait_for_log("slow request started")
            master.send_signal(signal.SIGTERM, group=group)
            response = conn.getresponse()
            assert response.status == 200
            assert response.read() == b"slept 0.5"
            assert response.getheader("Connection") == "close"
        finally:
            conn.close()
        assert master.wait() == 0
        assert len(re.findall(r"worker \d+ exited with status 0", master.log())) == 2


def test_a_stop_signal_crossing_a_drained_workers_exit_does_not_count_as_forced(tmp_path: Path) -> None:
    # A process-group SIGTERM that reaches a worker after its drain, as it
    # exits (a --max-requests worker finishing as systemd stops the unit), is
    # sent here from worker_exit, which runs in that moment.
    conf = tmp_path / "conf.py"
    conf.write_text(
        "import os, signal\n"
        "def worker_exit(server, worker):\n"
        "    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):\n"
        "        os.kill(os.getpid(), signum)\n"
    )
    port = free_port()
    with _start(tmp_path, PROBE, port, "-c", str(conf)) as master:
        assert get(port, "/")[0] == 200
        master.send_signal(signal.SIGTERM)
        assert master.wait() == 0
    assert len(re.findall(r"worker \d+ exited with status 0", master.log())) == 2


@by_pid_and_group_and_preloaded
def test_a_killed_worker_is_replaced(tmp_path: Path, group: bool, preload: bool) -> None:
    port = free_port()
    with _start(tmp_path, PROBE, port, preload=preload) as master:
        victim = int(re.findall(r"worker (\d+) ready", master.log())[0])
        os.kill(victim, signal.SIGKILL)
        master.wait_for_log(rf"worker {victim} died with signal SIGKILL; restarting")
        mark = master.wait_for_log(r"restarting").end()
        master.wait_for_log(r"worker \d+ ready", start=mark)
        assert get(port, "/")[2] == b"Hello, World!"
        master.send_signal(signal.SIGTERM, group=group)
        assert master.wait() == 0


@by_pid_and_group
def test_sighup_reload_under_load_loses_no_request(tmp_path: Path, group: bool) -> None:
    app = _app_file(tmp_path, "v1")
    port = free_port()
    with _start(tmp_path, str(app), port) as master:
        with LoadClients(port) as load:
            wait_until(lambda: load.ok > 50)
            app.write_text(app.read_text().replace("'v1 '", "'v2 '"))
            master.send_signal(signal.SIGHUP, group=group)
            master.wait_for_log(r"reload done: generation 2 serving")
            mark = len(load.bodies)
            wait_until(lambda: any(pid.startswith(b"v2") for pid in load.served_since(mark)))
            wait_until(lambda: len(re.findall(r"exited with status 0", master.log())) == 2)
            wait_until(lambda: len(load.served_since(mark)) > 100)
        master.send_signal(signal.SIGTERM, group=group)
        assert master.wait() == 0
    assert load.failures == []
    assert load.ok > 150
    assert all(pid.startswith(b"v2") for pid in load.bodies[-20:]), load.bodies[-20:]


@by_pid_and_group
def test_reload_with_a_broken_app_keeps_the_old_workers(tmp_path: Path, group: bool) -> None:
    app = _app_file(tmp_path, "v1")
    port = free_port()
    with _start(tmp_path, str(app), port) as master:
        app.write_text("raise RuntimeError('broken deploy')\n")
        master.send_signal(signal.SIGHUP, group=group)
        master.wait_for_log(r"reload failed")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for _ in range(5):
                conn.request("GET", "/")
                assert conn.getresponse().read().startswith(b"v1 ")
        finally:
            conn.close()
        master.send_signal(signal.SIGTERM, group=group)
        assert master.wait() == 0


@by_pid_and_group_and_preloaded
def test_sigusr2_upgrade_under_load_hands_over_with_no_request_lost(tmp_path: Path, group: bool, preload: bool) -> None:
    port = free_port()
    pidfile = tmp_path / "gshutdown.pid"
    with _start(tmp_path, PROBE, port, "--pid", str(pidfile), preload=preload) as master:
        assert pidfile.read_text().strip() == str(master.pid)
        new_pid = 0
        try:
            with LoadClients(port) as load:
                wait_until(lambda: load.ok > 50)
                master.send_signal(signal.SIGUSR2, group=group)
                match = master.wait_for_log(r"upgrade: new master (\d+) is serving", timeout=20)
                new_pid = int(match.group(1))
                assert master.wait() == 0  # the old master drained and left
                mark = len(load.bodies)
                wait_until(lambda: len(load.served_since(mark)) > 100)
            assert load.failures == []
            assert pidfile.read_text().strip() == str(new_pid)
        finally:
            if new_pid:
                os.kill(new_pid, signal.SIGTERM)  # started by our master's upgrade
                wait_until(lambda: gone(new_pid), timeout=20)
    assert not pidfile.exists()


def test_single_process_ignores_the_master_signals_and_keeps_serving(tmp_path: Path) -> None:
    port = free_port()
    proc = GProcess(gshutdown_argv(PROBE, "-b", f"127.0.0.1:{port}"), tmp_path / "single.log")
    with proc:
        proc.wait_listening(timeout=20)
        for signum in (signal.SIGHUP, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU):
            proc.send_signal(signum)
            proc.wait_for_log(rf"{signum.name} ignored: reload, upgrade and worker counts need a master")
        assert get(port, "/")[2] == b"Hello, World!"
        assert get(port, "/multiprocess")[2] == b"False"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == 0


def test_single_process_sigusr1_reopens_the_access_log(tmp_path: Path) -> None:
    port = free_port()
    access = tmp_path / "access.log"
    proc = GProcess(gshutdown_argv(PROBE, "-b", f"127.0.0.1:{port}", "--access-log", str(access)), tmp_path / "log")
    with proc:
        proc.wait_listening(timeout=20)
        get(port, "/first")
        wait_until(lambda: access.exists() and "/first" in access.read_text())
        access.rename(tmp_path / "access.log.1")
        proc.send_signal(signal.SIGUSR1)
        proc.wait_for_log(r"SIGUSR1: reopened 1 log file\(s\)")
        get(port, "/second")
        wait_until(lambda: access.exists() and "/second" in access.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == 0
    assert "/second" not in (tmp_path / "access.log.1").read_text()
