"""``gshutdown.gunicorn.Worker`` under a real gunicorn arbiter.

Each test runs ``python -m gunicorn -k gshutdown.gunicorn.Worker`` on a free
loopback port (its own session, signalled by pid), with the probe app and
``tests.apps.gunicorn_conf`` (app log lines to stderr, no control socket).
Workers are counted and told apart by their log lines.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Optional

import pytest
import requests

from tests.process_helpers import (
    PROBE,
    GProcess,
    LoadClients,
    connect,
    free_port,
    gone,
    read_response,
    recv_eof,
    request_bytes,
    wait_until,
)
from tests.tls_helpers import make_server_cert

WORKER = "gshutdown.gunicorn.Worker"
BOOTED = r"Booting worker with pid: (\d+)"
LISTENING = r"\[(\d+)\] \[INFO\] listening on https?://127\.0\.0\.1:"


def start_gunicorn(
    tmp_path: Path,
    port: int,
    *options: str,
    workers: int = 1,
    env: Optional[dict[str, str]] = None,
    app: str = PROBE,
    config: str = "python:tests.apps.gunicorn_conf",
) -> GProcess:
    """The arbiter, once ``workers`` workers serve; the log is ``tmp_path/gunicorn.log``."""
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-k",
        WORKER,
        "-c",
        config,
        "-b",
        f"127.0.0.1:{port}",
        "-w",
        str(workers),
        *options,
        app,
    ]
    proc = GProcess(argv, tmp_path / "gunicorn.log", env=env)
    try:
        wait_until(lambda: len(re.findall(LISTENING, proc.log())) >= workers or proc.proc.poll() is not None, 30)
        assert proc.proc.poll() is None, f"gunicorn exited ({proc.proc.returncode}):\n{proc.log()}"
    except BaseException:
        proc.stop()
        raise
    return proc


def booted(proc: GProcess) -> list[int]:
    return [int(pid) for pid in re.findall(BOOTED, proc.log())]


def all_booted_serve(proc: GProcess) -> bool:
    """Every worker booted so far has started serving (or exited).

    A signal that reaches a worker between the fork and its first line of
    code hits the arbiter's inherited handlers and is lost (gunicorn's race,
    whatever the worker class): tests signal only settled workers.
    """
    log = proc.log()
    started = set(re.findall(LISTENING, log)) | set(re.findall(r"Worker exiting \(pid: (\d+)\)", log))
    return set(re.findall(BOOTED, log)) <= started


def seen_requests(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


def still_silent(sock: socket.socket) -> bool:
    """Nothing to read on ``sock`` right now (no byte, no EOF)."""
    return not select.select([sock], [], [], 0)[0]


def forced_by_signal(arbiter: GProcess, port: int, signum: int, pid: Optional[int] = None) -> None:
    """Signal ``pid`` (the arbiter by default) during a 60 s request; its connection must close unanswered."""
    with connect(port) as slow:
        slow.sendall(request_bytes("/slow?s=60"))
        arbiter.wait_for_log("slow request started")
        os.kill(pid or arbiter.pid, signum)
        assert recv_eof(slow, timeout=20) == b""  # closed, no made-up response


def test_import_gshutdown_never_imports_gunicorn() -> None:
    code = "import sys, gshutdown, gshutdown.cli; print('gunicorn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "False"


def test_serves_keep_alive_chunked_and_request_bodies_with_gunicorns_access_log(tmp_path: Path) -> None:
    port = free_port()
    log_format = "ACCESS %(r)s %(s)s %(b)s ua=%({user-agent}i)s len=%({content-length}o)s"
    with start_gunicorn(tmp_path, port, "--access-logfile", "-", "--access-logformat", log_format) as arbiter:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/", headers={"User-Agent": "probe-client"})
            first = conn.getresponse()
            assert (first.status, first.read()) == (200, b"Hello, World!")
            assert first.getheader("Server") == "gshutdown"  # our worker answered, not gunicorn's
            sock = conn.sock
            conn.request("GET", "/chunked")
            chunked = conn.getresponse()
            assert chunked.getheader("Transfer-Encoding") == "chunked"
            assert chunked.read() == b"first,second,third"
            conn.request("POST", "/echo", body=b"x" * 100_000)
            assert conn.getresponse().read() == b"x" * 100_000
            conn.request("POST", "/echo", body=iter([b"in ", b"pieces"]), encode_chunked=True)
            assert conn.getresponse().read() == b"in pieces"
            assert conn.sock is sock, "the connection was not kept alive"
        finally:
            conn.close()
        arbiter.wait_for_log(r"ACCESS POST /echo HTTP/1\.1 200 9 ")
        arbiter.send_signal(signal.SIGTERM)
        assert arbiter.wait() == 0
    log = arbiter.log()
    assert "ACCESS GET / HTTP/1.1 200 13 ua=probe-client len=13" in log
    assert "ACCESS GET /chunked HTTP/1.1 200 18 ua=-" in log
    assert "Traceback" not in log


def test_keepalive_0_worker_connections_and_limit_request_line_map_to_the_server(tmp_path: Path) -> None:
    port = free_port()
    options = ("--keep-alive", "0", "--worker-connections", "1", "--limit-request-line", "100")
    with start_gunicorn(tmp_path, port, *options) as arbiter:
        with connect(port) as holder, connect(port) as waiting:
            holder.sendall(b"GET / HTTP/1.1\r\n")  # an unfinished head holds the only slot
            waiting.sendall(request_bytes("/"))
            assert not select.select([waiting], [], [], 1.0)[0], "served past worker_connections=1"
            holder.close()
            status, headers, body = read_response(waiting)
            assert (status, body, headers["connection"]) == (200, b"Hello, World!", "close")  # no keep-alive
            assert recv_eof(waiting) == b""
        with connect(port) as sock:
            sock.sendall(request_bytes("/" + "x" * 150))
            assert read_response(sock)[0] == 414
        arbiter.send_signal(signal.SIGTERM)
        assert arbiter.wait() == 0


def test_the_apps_on_shutdown_hooks_run_after_the_drain(tmp_path: Path) -> None:
    port = free_port()
    journal = tmp_path / "journal.log"
    with start_gunicorn(tmp_path, port, env={"JOURNAL_PATH": str(journal)}, app="examples.resources:app") as arbiter:
        with connect(port) as sock:
            for n in range(3):
                sock.sendall(request_bytes(f"/item/{n}"))
                assert read_response(sock)[2] == f"request {n + 1} journaled\n".encode()
        assert journal.read_text() == ""  # buffered until the hook flushes it
        arbiter.send_signal(signal.SIGTERM)
        assert arbiter.wait() == 0
    assert len(journal.read_text().splitlines()) == 3
    log = arbiter.log()
    assert log.index("shutdown: clean") < log.index("pool closed (4 connections)") < log.index("exit: clean")
    assert f"journal flushed: {journal}" in log


def test_sigterm_completes_the_in_flight_request_and_closes_idle_connections_at_once(tmp_path: Path) -> None:
    port = free_port()
    # A long keep-alive: an idle connection that closes can only be the shutdown's doing.
    with start_gunicorn(tmp_path, port, "--keep-alive", "60", "--graceful-timeout", "30") as arbiter:
        with connect(port) as idle, connect(port) as slow:
            idle.sendall(request_bytes("/"))
            assert read_response(idle)[2] == b"Hello, World!"
            slow.sendall(request_bytes("/slow?s=4"))
            arbiter.wait_for_log("slow request started")
            arbiter.send_signal(signal.SIGTERM)
            assert recv_eof(idle) == b""
            assert still_silent(slow), "the idle connection closed only after the slow request ended"
            status, headers, body = read_response(slow)
            assert (status, body) == (200, b"slept 4")
            assert headers["connection"] == "close"
            assert recv_eof(slow) == b""
        assert arbiter.wait() == 0
    log = arbiter.log()
    assert "SIGTERM: graceful shutdown" in log
    assert re.search(r"shutdown: clean in [\d.]+ s \(0 forced, 1 idle closed", log), log


def test_sigterm_under_keep_alive_load_loses_no_request(tmp_path: Path) -> None:
    port = free_port()
    seen = tmp_path / "seen"
    with start_gunicorn(tmp_path, port, workers=2, env={"PROBE_SEEN": str(seen)}) as arbiter:
        with LoadClients(port, count=6, until_refused=True) as load:
            wait_until(lambda: load.ok > 300, timeout=30)
            arbiter.send_signal(signal.SIGTERM)
            load.join(30)
            assert len(load.stops) == 6, load.stops
        assert arbiter.wait() == 0
    assert load.failures == []
    assert set(load.stops) <= {"refused", "closed fresh"}, load.stops
    requests = seen_requests(seen)
    assert set(requests) - load.completed == set(), "requests the app saw whose response never arrived"
    assert [rid for rid, count in requests.items() if count > 1] == [], "a request ran twice"
    assert len(re.findall(r"shutdown: clean in", arbiter.log())) == 2


def test_sighup_reload_under_load_replaces_the_workers_and_loses_no_request(tmp_path: Path) -> None:
    port = free_port()
    seen = tmp_path / "seen"
    with start_gunicorn(tmp_path, port, workers=2, env={"PROBE_SEEN": str(seen)}) as arbiter:
        old = set(booted(arbiter))
        with LoadClients(port, count=4) as load:
            wait_until(lambda: load.ok > 200, timeout=30)
            arbiter.send_signal(signal.SIGHUP)
            wait_until(lambda: all(f"Worker exiting (pid: {pid})" in arbiter.log() for pid in old), timeout=30)
            mark = len(load.bodies)
            wait_until(lambda: len(load.served_since(mark)) > 200, timeout=30)
        after_reload = {int(pid) for pid in load.served_since(mark)}
        wait_until(lambda: all_booted_serve(arbiter), timeout=30)
        replacements = set(booted(arbiter)) - old
        arbiter.send_signal(signal.SIGTERM)
        assert arbiter.wait() == 0
    assert load.failures == []
    requests = seen_requests(seen)
    assert set(requests) - load.completed == set()
    assert [rid for rid, count in requests.items() if count > 1] == []
    assert after_reload and after_reload <= replacements


def test_max_requests_under_load_recycles_workers_and_loses_no_request(tmp_path: Path) -> None:
    port = free_port()
    seen = tmp_path / "seen"
    options = ("--max-requests", "50", "--max-requests-jitter", "10")
    with start_gunicorn(tmp_path, port, *options, workers=2, env={"PROBE_SEEN": str(seen)}) as arbiter:
        with LoadClients(port, count=4) as load:
            wait_until(lambda: len(booted(arbiter)) >= 6 and load.ok > 400, timeout=60)
        wait_until(lambda: all_booted_serve(arbiter), timeout=30)
        arbiter.send_signal(signal.SIGTERM)
        assert arbiter.wait() == 0
    log = arbiter.log()
    assert load.failures == []
    requests = seen_requests(seen)
    assert set(requests) - load.completed == set()
    assert [rid for rid, count in requests.items() if count > 1] == []
    recycled = re.findall(r"max requests \((\d+)\) reached", log)
    assert len(recycled) >= 4
    assert all(50 <= int(limit) <= 60 for limit in recycled), recycled
    assert len(set(load.bodies)) >= 4, "the requests were not spread over the replacements"
    assert "exited with code" not in log and "WORKER TIMEOUT" not in log


def test_the_request_reaching_max_requests_closes_its_connection_and_a_new_worker_serves(tmp_path: Path) -> None:
    port = free_port()
    with start_gunicorn(tmp_path, port, "--max-requests", "3", "--keep-alive", "60") as arbiter:
        first_worker = booted(arbiter)[0]
        with connect(port) as sock:
            for n in range(1, 4):
                sock.sendall(request_bytes("/pid"))
                status, headers, body = read_response(sock)
                assert (status, body) == (200, str(first_worker).encode())
                assert headers.get("connection") == ("close" if n == 3 else None), n
            assert recv_eof(sock) == b""
        arbiter.wait_for_log(rf"Worker exiting \(pid: {first_worker}\)")
        with connect(port) as sock:
            sock.sendall(request_bytes("/pid"))
            replacement = int(read_response(sock)[2])
        assert replacement != first_worker and replacement in booted(arbiter)
        arbiter.send_signal(signal.SIGTERM)
        assert arbiter.wait() == 0


def test_heartbeat_goes_on_through_a_slow_request_and_the_drain_after_max_requests(tmp_path: Path) -> None:
    """``--timeout 3``: a worker silent for 3 s is killed by the arbiter; this one serves a 5 s
    request that is also its last (``--max-requests 1``), so it drains while it beats."""
    port = free_port()
    with start_gunicorn(tmp_path, port, "--timeout", "3", "--max-requests", "1") as arbiter:
        first_worker = booted(arbiter)[0]
        with connect(port) as sock:
            sock.sendall(request_bytes("/slow?s=5"))
            status, headers, body = read_response(sock, timeout=20)
        assert (status, body, headers["connection"]) == (200, b"slept 5", "close")
        arbiter.wait_for_log(rf"Worker exiting \(pid: {first_worker}\)")
        arbiter.send_signal(signal.SIGTERM)
        assert arbiter.wait() == 0
    log = arbiter.log()
    assert "WORKER TIMEOUT" not in log and "SIGABRT" not in log


def test_graceful_timeout_bounds_the_drain_and_the_worker_exits_before_the_arbiters_sigkill(tmp_path: Path) -> None:
    port = free_port()
    with start_gunicorn(tmp_path, port, "--graceful-timeout", "3") as arbiter:
        forced_by_signal(arbiter, port, signal.SIGTERM)
        assert arbiter.wait() == 0
    log = arbiter.log()
    assert "shutdown: started (timeout 2 s)" in log  # 3 s less FORCE_MARGIN
    assert re.search(r"shutdown: forced ACTIVE connection from .* GET /slow\?s=60 HTTP/1\.1", log), log
    assert re.search(r"Worker exiting \(pid: \d+\)", log)
    assert "SIGKILL" not in log and "exited with code" not in log  # forced, yet status 0


@pytest.mark.parametrize("signum", [signal.SIGQUIT, signal.SIGINT], ids=["SIGQUIT", "SIGINT"])
def test_sigquit_and_sigint_to_a_worker_close_at_once_and_the_arbiter_replaces_it(
    tmp_path: Path, signum: signal.Signals
) -> None:
    port = free_port()
    with start_gunicorn(tmp_path, port, "--graceful-timeout", "30") as arbiter:
        worker = booted(arbiter)[0]
        forced_by_signal(arbiter, port, signum, worker)
        arbiter.wait_for_log(rf"\[{worker}\] \[INFO\] {signum.name}: closing every connection now")
        arbiter.wait_for_log(rf"Worker exiting \(pid: {worker}\)")
        wait_until(lambda: len(booted(arbiter)) == 2, timeout=30)
        with connect(port) as sock:
            sock.sendall(request_bytes("/pid"))
            assert int(read_response(sock)[2]) == booted(arbiter)[1]
        arbiter.send_signal(signal.SIGTERM)
        assert arbiter.wait() == 0


def test_sigquit_to_the_arbiter_ends_everything_at_once(tmp_path: Path) -> None:
    port = free_port()
    with start_gunicorn(tmp_path, port, "--graceful-timeout", "30") as arbiter:
        forced_by_signal(arbiter, port, signal.SIGQUIT)
        assert arbiter.wait() == 0
    assert "SIGQUIT: closing every connection now" in arbiter.log()


def test_a_second_sigterm_to_a_draining_worker_changes_nothing(tmp_path: Path) -> None:
    port = free_port()
    with start_gunicorn(tmp_path, port) as arbiter:
        worker = booted(arbiter)[0]
        with connect(port) as slow:
            slow.sendall(request_bytes("/slow?s=2"))
            arbiter.wait_for_log("slow request started")
            os.kill(worker, signal.SIGTERM)
            arbiter.wait_for_log(rf"\[{worker}\] \[INFO\] shutdown: started")
            os.kill(worker, signal.SIGTERM)
            status, headers, body = read_response(slow)
        assert (status, body, headers["connection"]) == (200, b"slept 2", "close")
        arbiter.wait_for_log(rf"Worker exiting \(pid: {worker}\)")
        arbiter.send_signal(signal.SIGTERM)
        assert arbiter.wait() == 0
    assert "closing every connection now" not in arbiter.log()


def test_sigterm_while_the_worker_loads_the_app_stops_it_once_serving(tmp_path: Path) -> None:
    port = free_port()
    with start_gunicorn(tmp_path, port, app="tests.apps.slow_import:app") as arbiter:
        first_worker = booted(arbiter)[0]
        mark = arbiter.log_path.stat().st_size
        os.kill(first_worker, signal.SIGTERM)  # settled: listening, so its handlers are installed
        arbiter.wait_for_log(rf"Worker exiting \(pid: {first_worker}\)", timeout=20)
        arbiter.wait_for_log("slow import started", start=mark, timeout=20)
        replacement = booted(arbiter)[1]
        os.kill(replacement, signal.SIGTERM)  # during its 2 s import
        arbiter.wait_for_log(rf"\[{replacement}\] \[INFO\] SIGTERM: graceful shutdown", timeout=20)
        arbiter.wait_for_log(rf"Worker exiting \(pid: {replacement}\)", timeout=20)
        wait_until(lambda: len(booted(arbiter)) == 3, timeout=20)
        wait_until(lambda: all_booted_serve(arbiter), timeout=20)
        arbiter.send_signal(signal.SIGTERM)
        assert arbiter.wait() == 0


def test_a_worker_whose_arbiter_dies_drains_and_exits(tmp_path: Path) -> None:
    port = free_port()
    with start_gunicorn(tmp_path, port) as arbiter:
        worker = booted(arbiter)[0]
        try:
            with connect(port) as slow:
                slow.sendall(request_bytes("/slow?s=2"))
                arbiter.wait_for_log("slow request started")
                arbiter.send_signal(signal.SIGKILL)
                assert arbiter.wait() == -signal.SIGKILL
                status, headers, body = read_response(slow)
            assert (status, body, headers["connection"]) == (200, b"slept 2", "close")
            wait_until(lambda: gone(worker), timeout=20)
            assert f"[{worker}] [WARNING] arbiter {arbiter.pid} is gone: stopping gracefully" in arbiter.log()
        finally:
            if not gone(worker):
                os.kill(worker, signal.SIGKILL)  # started by our arbiter, orphaned by this test


def test_tls_and_proxy_settings_reach_the_worker(tmp_path: Path) -> None:
    cert, key = make_server_cert(tmp_path)
    port = free_port()
    options = ("--certfile", str(cert), "--keyfile", str(key), "--forwarded-allow-ips", "127.0.0.1")
    with start_gunicorn(tmp_path, port, *options) as arbiter:
        spoofed = requests.get(
            f"https://localhost:{port}/client", verify=str(cert), headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10
        )
        arbiter.send_signal(signal.SIGTERM)
        assert arbiter.wait() == 0
    client = spoofed.json()
    assert (client["REMOTE_ADDR"], client["wsgi.url_scheme"]) == ("203.0.113.9", "https")


#: A gunicorn configuration file: the tests' usual settings, the request hooks
#: of ``tests/apps/hooks_conf.py``, and the app mounted under /mnt.
HOOKS_CONF = """\
from tests.apps.gunicorn_conf import *
from tests.apps.hooks_conf import post_request, pre_request

raw_env = ["SCRIPT_NAME=/mnt"]
"""


def test_pre_and_post_request_hooks_and_script_name_work_as_in_gunicorns_own_workers(tmp_path: Path) -> None:
    port, hook_log = free_port(), tmp_path / "hooks.jsonl"
    conf = tmp_path / "hooks.conf.py"
    conf.write_text(HOOKS_CONF)
    env = {"HOOK_LOG": str(hook_log)}
    with start_gunicorn(tmp_path, port, config=str(conf), env=env, app="tests.apps.hooks_app:app") as arbiter:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/mnt/env?x=1", headers={"Script-Name": "/evil"})  # a client cannot mount
            response = conn.getresponse()
            seen = json.loads(response.read())
            assert response.status == 200
            assert (seen["SCRIPT_NAME"], seen["PATH_INFO"]) == ("/mnt", "/env")
            assert seen["HTTP_X_HOOKED_BY"] == f"pre_request {seen['pid']}"  # appended by pre_request
            conn.request("GET", "/env")  # outside the prefix: unmounted, as the CLI serves it
            response = conn.getresponse()
            outside = json.loads(response.read())
            assert (outside["SCRIPT_NAME"], outside["PATH_INFO"]) == ("", "/env")
        finally:
            conn.close()
        with connect(port) as sock:
            sock.sendall(b"GET /mnt/boom HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[0] == 500  # pre_request raised
            assert recv_eof(sock) == b""
        assert requests.get(f"http://127.0.0.1:{port}/mnt/late", timeout=10).status_code == 200
        wait_until(lambda: hook_log.read_text().count('"post_request"') == 4)
        arbiter.send_signal(signal.SIGTERM)
        assert arbiter.wait() == 0
    recorded = [json.loads(line) for line in hook_log.read_text().splitlines()]
    pre = [call for call in recorded if call["hook"] == "pre_request"]
    post = [call for call in recorded if call["hook"] == "post_request"]
    assert [call["path"] for call in pre] == ["/mnt/env", "/env", "/mnt/boom", "/mnt/late"]
    assert (pre[0]["query"], pre[0]["uri"], pre[0]["version"]) == ("x=1", "/mnt/env?x=1", [1, 1])
    assert ["SCRIPT-NAME", "/evil"] in pre[0]["headers"]
    assert all(call["worker_pid"] == call["pid"] == seen["pid"] for call in pre + post)  # gunicorn's worker
    assert [(call["path"], call["status_code"]) for call in post] == [
        ("/mnt/env", 200),
        ("/env", 200),
        ("/mnt/boom", None),  # gunicorn calls post_request even when pre_request raised
        ("/mnt/late", 200),
    ]
    assert post[0]["environ_path"] == "/env" and post[0]["sent"] == len(json.dumps(seen))
    log = arbiter.log()
    assert "RuntimeError: pre_request refused /boom" in log
    assert "Exception in post_request hook" in log and "RuntimeError: post_request failed for /late" in log
