"""gunicorn's server hooks in real ``gshutdown -c FILE`` processes, single and with ``--workers``.

``tests/apps/hooks_conf.py`` defines every hook; each appends a JSON line
(its name, its process, what it read of its arguments) to ``$HOOK_LOG``, so
the tests check order and arguments from the hooks' effects. Hooks named in
``$HOOK_RAISE`` raise after recording.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import ssl
from pathlib import Path
from typing import Any, Optional

import pytest

from gshutdown.process.exit_status import ExitStatus
from tests.process_helpers import (
    MASTER_READY,
    STARTUP_TIMEOUT,
    GProcess,
    connect,
    free_port,
    gone,
    gshutdown_argv,
    read_response,
    recv_eof,
    refused,
    run_cli,
    start_gshutdown,
    wait_until,
)
from tests.tls_helpers import make_server_cert

CONF = "tests/apps/hooks_conf.py"
APP = "tests.apps.hooks_app:app"
#: The hooks a single process calls from start to a graceful exit, none failing.
SINGLE_PROCESS_HOOKS = [
    "nworkers_changed",
    "on_starting",
    "pre_fork",
    "post_fork",
    "when_ready",
    "post_worker_init",
]
SINGLE_PROCESS_EXIT_HOOKS = ["worker_int", "worker_exit", "child_exit", "on_exit"]


def calls(hook_log: Path, name: Optional[str] = None) -> list[dict[str, Any]]:
    """The hook calls recorded so far (only ``name``'s, if given), in order."""
    if not hook_log.exists():
        return []
    recorded = [json.loads(line) for line in hook_log.read_text().splitlines()]
    return [call for call in recorded if name is None or call["hook"] == name]


def names(hook_log: Path) -> list[str]:
    return [call["hook"] for call in calls(hook_log)]


def start_single(tmp_path: Path, port: int, *args: str, env: Optional[dict[str, str]] = None) -> GProcess:
    hook_env = {"HOOK_LOG": str(tmp_path / "hooks.jsonl"), **(env or {})}
    return start_gshutdown(tmp_path / "log", "-c", CONF, "-b", f"127.0.0.1:{port}", *args, APP, env=hook_env)


def start_workers(
    tmp_path: Path, port: int, *args: str, workers: int = 2, env: Optional[dict[str, str]] = None
) -> GProcess:
    argv = gshutdown_argv("-c", CONF, "-b", f"127.0.0.1:{port}", "-w", str(workers), "--ready-timeout", "10", *args)
    argv.append(APP)
    proc = GProcess(argv, tmp_path / "log", env={"HOOK_LOG": str(tmp_path / "hooks.jsonl"), **(env or {})})
    try:
        proc.wait_for_log(MASTER_READY, timeout=STARTUP_TIMEOUT)
    except BaseException:
        proc.stop()
        raise
    return proc


def start(tmp_path: Path, port: int, workers: int, env: dict[str, str]) -> GProcess:
    """A single process (``workers`` 0) or a master of ``workers``, serving."""
    if workers:
        return start_workers(tmp_path, port, workers=workers, env=env)
    return start_single(tmp_path, port, env=env)


def get_json(conn: http.client.HTTPConnection, path: str, **headers: str) -> dict[str, Any]:
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    assert response.status == 200
    result: dict[str, Any] = json.loads(response.read())
    return result


def get_text(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


# -- every hook, at its moment, with its arguments ------------------------------------------


def test_the_single_process_calls_the_master_and_worker_hooks_in_gunicorns_order(tmp_path: Path) -> None:
    port, hook_log = free_port(), tmp_path / "hooks.jsonl"
    with start_single(tmp_path, port) as proc:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            seen = get_json(conn, "/env?q=1", **{"X-Client": "c1"})
            assert seen["HTTP_X_HOOKED_BY"] == f"pre_request {proc.pid}"  # appended by pre_request
            conn.request("GET", "/pieces")
            assert conn.getresponse().read() == b"one,two,three"  # the same keep-alive connection
            conn.request("GET", "/wait-callback")
            # Without psycogreen's post_fork (test below), psycopg2 would block the event loop.
            assert conn.getresponse().read() == f"{proc.pid} None".encode()
        finally:
            conn.close()
        wait_until(lambda: len(calls(hook_log, "post_request")) == 3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait() == ExitStatus.OK
    assert names(hook_log) == [
        *SINGLE_PROCESS_HOOKS,
        *["pre_request", "post_request"] * 3,
        *SINGLE_PROCESS_EXIT_HOOKS,
    ]
    by_name = {call["hook"]: call for call in calls(hook_log)}
    assert {call["pid"] for call in calls(hook_log)} == {proc.pid}
    assert by_name["nworkers_changed"] | {"pid": 0} == {
        "hook": "nworkers_changed",
        "pid": 0,
        "new": 1,
        "old": None,
        "num_workers": 1,
    }
    on_starting = by_name["on_starting"]
    # gunicorn's meanings: one worker, "HOST:PORT" strings; a setting that means nothing here reads None.
    assert (on_starting["workers"], on_starting["bind"], on_starting["proc_name"]) == (1, [f"127.0.0.1:{port}"], None)
    assert by_name["pre_fork"]["worker_pid"] == "[booting]"
    post_fork = by_name["post_fork"]
    assert (post_fork["worker_pid"], post_fork["age"], post_fork["app_imported"]) == (proc.pid, 1, False)
    assert (by_name["post_worker_init"]["booted"], by_name["post_worker_init"]["app_imported"]) == (True, True)
    first_pre = calls(hook_log, "pre_request")[0]
    assert (first_pre["method"], first_pre["path"], first_pre["query"], first_pre["uri"], first_pre["version"]) == (
        "GET",
        "/env",
        "q=1",
        "/env?q=1",
        [1, 1],
    )
    assert ["X-CLIENT", "c1"] in first_pre["headers"]  # gunicorn's upper-case names
    first_post, second_post, _ = calls(hook_log, "post_request")
    assert (first_post["status"], first_post["status_code"]) == ("200 OK", 200)
    assert first_post["sent"] == len(json.dumps(seen))
    assert ["Content-Type", "text/plain"] in first_post["headers"]
    assert (second_post["path"], second_post["sent"]) == ("/pieces", len(b"one,two,three"))
    assert by_name["worker_exit"]["worker_pid"] == by_name["child_exit"]["worker_pid"] == proc.pid


def test_with_workers_each_hook_runs_in_the_master_or_the_worker_at_its_moment(tmp_path: Path) -> None:
    port, hook_log = free_port(), tmp_path / "hooks.jsonl"
    with start_workers(tmp_path, port) as master:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            seen = get_json(conn, "/env")
        finally:
            conn.close()
        assert seen["HTTP_X_HOOKED_BY"] == f"pre_request {seen['pid']}"
        wait_until(lambda: calls(hook_log, "post_request"))
        master.send_signal(signal.SIGTTIN)
        wait_until(lambda: len(calls(hook_log, "post_worker_init")) == 3)
        master.send_signal(signal.SIGTTOU)
        wait_until(lambda: len(calls(hook_log, "child_exit")) == 1)
        master.send_signal(signal.SIGHUP)
        master.wait_for_log(r"reload done")
        wait_until(lambda: len(calls(hook_log, "child_exit")) == 3)  # the old generation retired
        master.send_signal(signal.SIGQUIT)
        assert master.wait() == ExitStatus.FORCED  # SIGQUIT: workers close everything now
    all_calls = calls(hook_log)
    order = names(hook_log)
    in_master = [call["hook"] for call in all_calls if call["pid"] == master.pid]
    assert in_master == [
        "nworkers_changed",
        "on_starting",
        "when_ready",
        "pre_fork",
        "pre_fork",
        "nworkers_changed",  # SIGTTIN
        "pre_fork",
        "nworkers_changed",  # SIGTTOU
        "child_exit",
        "on_reload",  # SIGHUP: before the new generation forks
        "pre_fork",
        "pre_fork",
        "child_exit",
        "child_exit",
        "child_exit",  # SIGQUIT
        "child_exit",
        "on_exit",
    ]
    assert order[-1] == "on_exit"
    changes = [(call["new"], call["old"]) for call in calls(hook_log, "nworkers_changed")]
    assert changes == [(2, None), (3, 2), (2, 3)]
    assert [call["age"] for call in calls(hook_log, "pre_fork")] == [1, 2, 3, 4, 5]
    assert all(call["worker_pid"] == "[booting]" for call in calls(hook_log, "pre_fork"))
    worker_pids = {call["worker_pid"] for call in calls(hook_log, "post_fork")}
    assert len(worker_pids) == 5 and master.pid not in worker_pids
    for worker_pid in worker_pids:
        mine = [call for call in all_calls if call["pid"] == worker_pid]
        assert mine[0]["hook"] == "post_fork"  # the first thing a worker does
        assert (mine[0]["ppid"], mine[0]["server_pid"], mine[0]["app_imported"]) == (master.pid, master.pid, False)
        assert mine[1]["hook"] == "post_worker_init" and mine[1]["app_imported"]
        assert mine[-1]["hook"] == "worker_exit" and mine[-1]["server_pid"] == master.pid
        child_exits = [call for call in all_calls if call["hook"] == "child_exit" and call["worker_pid"] == worker_pid]
        assert len(child_exits) == 1
        assert order.index("post_fork") < all_calls.index(child_exits[0])
    # The oldest worker went at SIGTTOU; the last two went at SIGQUIT, through worker_int.
    assert calls(hook_log, "child_exit")[0]["age"] == 1
    assert sorted(call["pid"] for call in calls(hook_log, "worker_int")) == sorted(
        call["worker_pid"] for call in calls(hook_log, "child_exit")[-2:]
    )
    (pre,) = calls(hook_log, "pre_request")
    (post,) = calls(hook_log, "post_request")
    assert pre["pid"] == post["pid"] == seen["pid"] in worker_pids
    assert (post["status_code"], post["sent"]) == (200, len(json.dumps(seen)))


def test_worker_abort_runs_when_the_timeout_finds_the_worker_blocked(tmp_path: Path) -> None:
    port, hook_log = free_port(), tmp_path / "hooks.jsonl"
    with start_workers(tmp_path, port, "--timeout", "1", workers=1) as master:
        (first,) = [call["worker_pid"] for call in calls(hook_log, "post_fork")]
        with connect(port) as sock:
            sock.sendall(b"GET /spin?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert recv_eof(sock, timeout=20) == b""  # killed mid-request
        wait_until(lambda: calls(hook_log, "child_exit"))
        master.wait_for_log(r"worker \d+ ready \(generation 1\)", start=master.log().index("no heartbeat"))
        master.send_signal(signal.SIGTERM)
        assert master.wait() == ExitStatus.FORCED  # the stuck worker's connection was forced
    (abort,) = calls(hook_log, "worker_abort")
    assert abort["pid"] == abort["worker_pid"] == first
    assert calls(hook_log, "child_exit")[0]["worker_pid"] == first
    assert "worker_exit" not in [call["hook"] for call in calls(hook_log) if call["pid"] == first]  # SIGKILLed


def test_pre_exec_runs_in_the_new_master_before_it_execs(tmp_path: Path) -> None:
    port, hook_log = free_port(), tmp_path / "hooks.jsonl"
    with start_workers(tmp_path, port, workers=1) as old:
        old.send_signal(signal.SIGUSR2)
        new_pid = int(old.wait_for_log(r"SIGUSR2: upgrading: new master (\d+) started", timeout=20).group(1))
        try:
            old.wait_for_log(rf"upgrade: new master {new_pid} is serving", timeout=20)
            assert old.wait() == ExitStatus.OK
            assert get_text(port, "/env")[0] == 200  # the new master serves
            (pre_exec,) = calls(hook_log, "pre_exec")
            assert pre_exec["pid"] == new_pid and pre_exec["server_pid"] == old.pid
            # exec kept the pid: the new master starts over with on_starting.
            starts = [call["pid"] for call in calls(hook_log, "on_starting")]
            assert starts == [old.pid, new_pid]
            order = names(hook_log)
            assert order.index("pre_exec") < len(order) - 1 - order[::-1].index("on_starting")
        finally:
            if not gone(new_pid):
                os.kill(new_pid, signal.SIGTERM)
                wait_until(lambda: gone(new_pid), timeout=20)


# -- what hooks do to the process -------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2], ids=["single", "workers"])
def test_a_psycogreen_post_fork_makes_psycopg2_cooperative_before_the_first_request(
    tmp_path: Path, workers: int
) -> None:
    port = free_port()
    env = {"HOOK_PSYCOGREEN": "1"}
    callbacks: dict[int, str] = {}
    with start(tmp_path, port, workers, env) as proc:

        def every_worker_answered() -> bool:
            status, body = get_text(port, "/wait-callback")  # a new connection each: any worker may take it
            assert status == 200
            pid, callback = body.split()
            callbacks[int(pid)] = callback
            return len(callbacks) == max(1, workers)

        wait_until(every_worker_answered, interval=0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == ExitStatus.OK
    assert set(callbacks.values()) == {"psycogreen.gevent.gevent_wait_callback"}


def test_the_ssl_context_hook_shapes_the_tls_context(tmp_path: Path) -> None:
    port, hook_log = free_port(), tmp_path / "hooks.jsonl"
    cert, key = make_server_cert(tmp_path)
    with start_single(tmp_path, port, "--certfile", str(cert), "--keyfile", str(key)) as proc:
        (call,) = calls(hook_log, "ssl_context")
        assert call["certfile"] == str(cert)
        tls12_only = ssl.create_default_context(cafile=str(cert))
        tls12_only.maximum_version = ssl.TLSVersion.TLSv1_2
        with connect(port) as raw, pytest.raises(ssl.SSLError):
            tls12_only.wrap_socket(raw, server_hostname="localhost")  # the hook's minimum: TLS 1.3
        client = ssl.create_default_context(cafile=str(cert))
        with connect(port) as raw, client.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.3"
            tls.sendall(b"GET /env HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_response(tls)[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == ExitStatus.OK


# -- hooks that raise -------------------------------------------------------------------------------

#: Hooks whose failure gunicorn logs and goes on.
CARRY_ON = "nworkers_changed,pre_fork,post_fork,post_worker_init,worker_int,worker_exit,child_exit,on_exit"


@pytest.mark.parametrize("workers", [0, 2], ids=["single", "workers"])
def test_hooks_that_raise_are_logged_and_the_server_goes_on(tmp_path: Path, workers: int) -> None:
    port, hook_log = free_port(), tmp_path / "hooks.jsonl"
    env = {"HOOK_RAISE": CARRY_ON}
    with start(tmp_path, port, workers, env) as proc:
        with connect(port) as sock:
            sock.sendall(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = read_response(sock)
            assert status == 500  # a raising pre_request: that request fails
            assert recv_eof(sock) == b""
        assert get_text(port, "/late")[0] == 200  # a raising post_request: logged after the response
        assert get_text(port, "/env")[0] == 200
        wait_until(lambda: len(calls(hook_log, "post_request")) == 3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait() == ExitStatus.OK
    log = proc.log()
    assert "RuntimeError: pre_request refused /boom" in log
    assert re.search(r"Exception in post_request hook\nTraceback .*\n(.*\n)*RuntimeError: post_request failed", log)
    for name in CARRY_ON.split(","):
        if name == "worker_int" and workers:
            continue  # SIGINT to the master alone: its workers drain on its order
        assert f"RuntimeError: {name} hook failed on purpose" in log, name
        assert name in names(hook_log)
    # gunicorn calls post_request even for the request pre_request refused.
    assert calls(hook_log, "post_request")[0]["path"] == "/boom"


@pytest.mark.parametrize("hook", ["on_starting", "when_ready"])
@pytest.mark.parametrize("workers", ["0", "2"], ids=["single", "workers"])
def test_on_starting_or_when_ready_raising_aborts_the_start(tmp_path: Path, hook: str, workers: str) -> None:
    port, hook_log = free_port(), tmp_path / "hooks.jsonl"
    result = run_cli(
        "-c", CONF, "-b", f"127.0.0.1:{port}", "-w", workers, APP, env={"HOOK_LOG": str(hook_log), "HOOK_RAISE": hook}
    )
    assert result.returncode == ExitStatus.START_FAILED
    assert f"RuntimeError: {hook} hook failed on purpose" in result.stderr  # the traceback is logged
    assert f"gshutdown: error: the {hook} hook raised RuntimeError: {hook} hook failed on purpose\n" in result.stderr
    assert names(hook_log)[-1] == hook  # nothing after it: no worker, no on_exit
    assert "pre_request" not in names(hook_log)
    assert refused(port)


# -- the configuration file -------------------------------------------------------------------------


def test_a_hook_of_the_wrong_arity_is_a_one_line_usage_error(tmp_path: Path) -> None:
    conf = tmp_path / "bad.py"
    conf.write_text("def post_fork(worker):\n    pass\n")
    result = run_cli("-c", str(conf), APP)
    assert result.returncode == ExitStatus.USAGE
    assert result.stderr.strip().splitlines() == [
        f"gshutdown: error: config file {conf}: post_fork takes 1 parameter(s); gunicorn calls it with (server, worker)"
    ]


def test_a_hook_named_by_import_string_is_called(tmp_path: Path) -> None:
    port, hook_log = free_port(), tmp_path / "hooks.jsonl"
    conf = tmp_path / "by_name.py"
    conf.write_text('when_ready = "tests.apps.hooks_conf.when_ready"\npost_request = lambda worker, req: None\n')
    with start_gshutdown(
        tmp_path / "log", "-c", str(conf), "-b", f"127.0.0.1:{port}", APP, env={"HOOK_LOG": str(hook_log)}
    ) as proc:
        assert get_text(port, "/env")[0] == 200  # a two-parameter post_request, as gunicorn allows
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == ExitStatus.OK
    assert names(hook_log) == ["when_ready"]
