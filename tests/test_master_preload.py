"""``--preload``: the master imports the app (monkey-patching itself) and still supervises as without it.

The rest of the matrix runs the existing master tests with and without
``--preload`` (``with_and_without_preload``, and the ``preload-*`` topologies
of ``test_shutdown_topologies``). Here: SIGINT (the master treats it as
SIGTERM), a SIGHUP reload, and an app whose import uses gevent's hub, its
resolver and a child process in the master.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
from pathlib import Path

import pytest

from gshutdown.process.exit_status import ExitStatus
from tests.process_helpers import (
    PROBE,
    LoadClients,
    free_port,
    get,
    start_master,
    wait_until,
)


def _ready_workers(text: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"worker (\d+) ready", text)]


@pytest.mark.parametrize("group", [False, True], ids=["pid", "group"])
def test_sigint_drains_every_worker_and_the_master_exits_0(tmp_path: Path, group: bool) -> None:
    port = free_port()
    with start_master(tmp_path / "master.log", PROBE, port, preload=True) as master:
        workers = _ready_workers(master.log())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/slow?s=0.5")
            master.wait_for_log("slow request started")
            master.send_signal(signal.SIGINT, group=group)
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"slept 0.5")
            assert response.getheader("Connection") == "close"
        finally:
            conn.close()
        assert master.wait() == ExitStatus.OK
        log = master.log()
    assert sorted(int(pid) for pid in re.findall(r"worker (\d+) exited with status 0", log)) == sorted(workers)
    assert "master gone" not in log, "a worker drained on its own: the master never ordered it"


def test_sighup_under_preload_forks_a_new_generation_of_the_preloaded_app_losing_nothing(tmp_path: Path) -> None:
    app = tmp_path / "versioned.py"
    app.write_text(
        "import os\n"
        "def app(environ, start_response):\n"
        "    body = ('v1 ' + str(os.getpid())).encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n"
    )
    port = free_port()
    with start_master(tmp_path / "master.log", str(app), port, preload=True) as master:
        old = set(_ready_workers(master.log()))
        with LoadClients(port) as load:
            wait_until(lambda: load.ok > 50)
            # As in gunicorn: the master holds the imported app, so a reload forks
            # new workers from it rather than reading the file again.
            app.write_text(app.read_text().replace("'v1 '", "'v2 '"))
            mark = len(master.log())
            master.send_signal(signal.SIGHUP)
            master.wait_for_log(r"reload done: generation 2 serving", start=mark)
            new = set(_ready_workers(master.log()[mark:]))
            wait_until(lambda: all(f"worker {pid} exited with status 0" in master.log() for pid in old))
            served = len(load.bodies)
            wait_until(lambda: len(load.served_since(served)) > 100)
        master.send_signal(signal.SIGTERM)
        assert master.wait() == ExitStatus.OK
    assert load.failures == []
    assert len(new) == 2 and not new & old
    assert {int(body.split()[1]) for body in load.bodies[-20:]} <= new
    assert all(body.startswith(b"v1 ") for body in load.bodies)


#: An app whose import, in a ``--preload`` master, does what real ones do:
#: resolves a name (gevent's resolver threads), runs a child process (a libev
#: child watcher, and its SIGCHLD handler), and so starts gevent's hub; and
#: whose requests do the same in the worker, on the hub the fork handed down.
HUB_AT_IMPORT = """
import os, socket, subprocess
import gevent

socket.getaddrinfo("localhost", 80)
REVISION = subprocess.run(["echo", "r42"], capture_output=True, check=True).stdout.strip()

def app(environ, start_response):
    socket.getaddrinfo("localhost", 80)
    if environ["PATH_INFO"] == "/child":
        subprocess.run(["true"], check=True)
    body = REVISION + b" " + str(os.getpid()).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def _pids_answering(port: int, wanted: set[int], attempts: int = 400) -> None:
    """Ask ``/`` on new connections until each of ``wanted`` has answered; fail after ``attempts``."""
    seen: set[int] = set()
    for _ in range(attempts):
        status, _, body = get(port, "/")
        assert status == 200 and body.startswith(b"r42 "), body
        seen.add(int(body.split()[1]))
        if wanted <= seen:
            return
    raise AssertionError(f"only {sorted(seen)} of {sorted(wanted)} answered {attempts} requests")


def test_an_app_that_used_the_hub_and_a_child_process_at_import_is_supervised(tmp_path: Path) -> None:
    app = tmp_path / "hub_at_import.py"
    app.write_text(HUB_AT_IMPORT)
    port = free_port()
    with start_master(tmp_path / "master.log", str(app), port, preload=True) as master:
        first = _ready_workers(master.log())
        # Each worker serves on an event loop of its own (re-initialised after the fork).
        _pids_answering(port, set(first))
        victim = first[0]
        os.kill(victim, signal.SIGKILL)
        # Logged once the master has reaped it: no zombie is left behind.
        mark = master.wait_for_log(rf"worker {victim} died with signal SIGKILL; restarting").end()
        replacement = int(master.wait_for_log(r"worker (\d+) ready", start=mark).group(1))
        _pids_answering(port, {first[1], replacement})
        assert get(port, "/child")[0] == 200
        with LoadClients(port, count=4, path=lambda rid: "/") as load:
            wait_until(lambda: load.ok > 200)
        master.send_signal(signal.SIGTERM)
        assert master.wait() == ExitStatus.OK
        log = master.log()
    assert load.failures == []
    assert sorted(int(pid) for pid in re.findall(r"worker (\d+) exited with status 0", log)) == sorted(
        [first[1], replacement]
    )
