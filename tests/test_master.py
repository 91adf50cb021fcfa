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

from tests.process_helpers import PROBE, GProcess, LoadClients, free_port, get, gone, gshutdown_argv, wait_until

READY = r"master (\d+): (\d+) worker\(s\) ready"


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


def _start(tmp_path: Path, app: str, port: int, *extra: str) -> GProcess:
    proc = GProcess(
        gshutdown_argv(app, "-b", f"127.0.0.1:{port}", "-w", "2", "--ready-timeout", "10", *extra),
        tmp_path / "master.log",
    )
    try:
        proc.wait_for_log(READY, timeout=20)
    except BaseException:
        proc.stop()
        raise
    return proc


def test_sigterm_drains_every_worker_and_the_master_exits_0(tmp_path: Path) -> None:
    port = free_port()
    with _start(tmp_path, PROBE, port) as master:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/slow?s=0.5")
            master.wait_for_log("slow request started")
            master.send_signal(signal.SIGTERM)
            response = conn.getresponse()
            assert response.status == 200
            assert response.read() == b"slept 0.5"
            assert response.getheader("Connection") == "close"
        finally:
            conn.close()
        assert master.wait() == 0
        assert len(re.findall(r"worker \d+ exited with status 0", master.log())) == 2


def test_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    port = free_port()
    with _start(tmp_path, PROBE, port) as master:
        victim = int(re.findall(r"worker (\d+) ready", master.log())[0])
        os.kill(victim, signal.SIGKILL)
        master.wait_for_log(rf"worker {victim} died with signal SIGKILL; restarting")
        mark = master.wait_for_log(r"restarting").end()
        master.wait_for_log(r"worker \d+ ready", start=mark)
        assert get(port, "/")[2] == b"Hello, World!"
        master.send_signal(signal.SIGTERM)
        assert master.wait() == 0


def test_sighup_reload_under_load_loses_no_request(tmp_path: Path) -> None:
    app = _app_file(tmp_path, "v1")
    port = free_port()
    with _start(tmp_path, str(app), port) as master:
        with LoadClients(port) as load:
            wait_until(lambda: load.ok > 50)
            app.write_text(app.read_text().replace("'v1 '", "'v2 '"))
            master.send_signal(signal.SIGHUP)
            master.wait_for_log(r"reload done: generation 2 serving")
            mark = len(load.pids)
            wait_until(lambda: any(pid.startswith(b"v2") for pid in load.served_since(mark)))
            wait_until(lambda: len(re.findall(r"exited with status 0", master.log())) == 2)
            wait_until(lambda: len(load.served_since(mark)) > 100)
        master.send_signal(signal.SIGTERM)
        assert master.wait() == 0
    assert load.failures == []
    assert load.ok > 150
    assert all(pid.startswith(b"v2") for pid in load.pids[-20:]), load.pids[-20:]


def test_reload_with_a_broken_app_keeps_the_old_workers(tmp_path: Path) -> None:
    app = _app_file(tmp_path, "v1")
    port = free_port()
    with _start(tmp_path, str(app), port) as master:
        app.write_text("raise RuntimeError('broken deploy')\n")
        master.send_signal(signal.SIGHUP)
        master.wait_for_log(r"reload failed")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for _ in range(5):
                conn.request("GET", "/")
                assert conn.getresponse().read().startswith(b"v1 ")
        finally:
            conn.close()
        master.send_signal(signal.SIGTERM)
        assert master.wait() == 0


def test_sigusr2_upgrade_under_load_hands_over_with_no_request_lost(tmp_path: Path) -> None:
    port = free_port()
    pidfile = tmp_path / "gshutdown.pid"
    with _start(tmp_path, PROBE, port, "--pid", str(pidfile)) as master:
        assert pidfile.read_text().strip() == str(master.pid)
        new_pid = 0
        try:
            with LoadClients(port) as load:
                wait_until(lambda: load.ok > 50)
                master.send_signal(signal.SIGUSR2)
                match = master.wait_for_log(r"upgrade: new master (\d+) is serving", timeout=20)
                new_pid = int(match.group(1))
                assert master.wait() == 0  # the old master drained and left
                mark = len(load.pids)
                wait_until(lambda: len(load.served_since(mark)) > 100)
            assert load.failures == []
            assert pidfile.read_text().strip() == str(new_pid)
        finally:
            if new_pid:
                os.kill(new_pid, signal.SIGTERM)  # started by our master's upgrade
                wait_until(lambda: gone(new_pid), timeout=20)
    assert not pidfile.exists()


def test_single_process_ignores_sighup_and_sigusr2_and_keeps_serving(tmp_path: Path) -> None:
    port = free_port()
    proc = GProcess(gshutdown_argv(PROBE, "-b", f"127.0.0.1:{port}"), tmp_path / "single.log")
    with proc:
        proc.wait_listening(timeout=20)
        for signum, name in ((signal.SIGHUP, "SIGHUP"), (signal.SIGUSR2, "SIGUSR2")):
            proc.send_signal(signum)
            proc.wait_for_log(rf"{name} ignored: reload and upgrade need a master")
        assert get(port, "/")[2] == b"Hello, World!"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == 0
