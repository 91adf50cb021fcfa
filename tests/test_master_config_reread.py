"""A master's SIGHUP re-reads its config file, as gunicorn's does.

The new generation of workers gets the file's settings as they are at the
signal: its worker count, environment, timeouts, logging and hooks. What only
a new master can change (the bound address, ``--chdir`` ...) is kept, with a
warning. A file that cannot be used leaves everything as it was, and the
master serving. The config file is named relative to where the master
started, and its ``chdir`` moves the master elsewhere before any SIGHUP.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

from gshutdown.process.exit_status import ExitStatus
from tests.process_helpers import MASTER_READY, GProcess, free_port, gone, gshutdown_argv, refused, wait_until

APP = """\
import os


def app(environ, start_response):
    body = " ".join([os.environ.get("GREETING", "-"), os.environ.get("ONLY_FIRST", "-"), str(os.getpid())])
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body.encode()]
"""

CONFIG = """\
chdir = "site"
bind = "127.0.0.1:{port}"
workers = {workers}
raw_env = {raw_env!r}
{extra}

def on_reload(server):
    with open({marker!r}, "a") as fh:
        fh.write("{version} %d\\n" % server.cfg.workers)
"""


def _write_config(directory: Path, version: str, port: int, workers: int, raw_env: list[str], extra: str = "") -> None:
    marker = str(directory / "on_reload.txt")
    text = CONFIG.format(port=port, workers=workers, raw_env=raw_env, extra=extra, marker=marker, version=version)
    (directory / "conf.py").write_text(text)


def _start(directory: Path, config: str = "conf.py", env: Optional[dict[str, str]] = None) -> GProcess:
    (directory / "site").mkdir()
    (directory / "site" / "hello.py").write_text(APP)
    argv = gshutdown_argv("-c", config, "--ready-timeout", "10", "hello:app")
    proc = GProcess(argv, directory / "log", cwd=directory, env=env)
    try:
        proc.wait_for_log(MASTER_READY, timeout=20)
    except BaseException:
        proc.stop()
        raise
    return proc


@contextlib.contextmanager
def _new_masters_stopped() -> Iterator[list[int]]:
    """A list for the pids of new masters a SIGUSR2 started; each gets SIGTERM at the end."""
    started: list[int] = []
    try:
        yield started
    finally:
        for pid in started:
            os.kill(pid, signal.SIGTERM)  # started by the test's own child, on its behalf
            wait_until(lambda pid=pid: gone(pid), timeout=20)


def _answer(port: int) -> tuple[str, str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        greeting, only_first, pid = conn.getresponse().read().decode().split()
    finally:
        conn.close()
    return greeting, only_first, int(pid)


def _two_workers_answer(port: int, expected: tuple[str, str]) -> set[int]:
    """The pids of two workers, once both answered (bounded); every answer is ``expected``."""
    pids = set()
    for _ in range(400):
        *answer, pid = _answer(port)
        assert tuple(answer) == expected
        pids.add(pid)
        if len(pids) == 2:
            return pids
    raise AssertionError(f"one worker answered 400 requests: {pids}")


def test_sighup_gives_the_new_workers_the_config_file_as_it_is_now(tmp_path: Path) -> None:
    port, other_port = free_port(), free_port()
    _write_config(tmp_path, "first", port, 1, ["GREETING=one", "ONLY_FIRST=yes"])
    with _start(tmp_path, env={"ONLY_FIRST": "exported"}) as master:
        greeting, only_first, first_pid = _answer(port)
        assert (greeting, only_first) == ("one", "yes")
        error_log = tmp_path / "error.log"
        extra = f"errorlog = {str(error_log)!r}\ngraceful_timeout = 7"
        _write_config(tmp_path, "second", other_port, 2, ["GREETING=two"], extra)
        master.send_signal(signal.SIGHUP)
        wait_until(lambda: error_log.exists() and "reload done" in error_log.read_text(), timeout=20)
        # The master's lines go to the new error log from the re-read on; the old log says so.
        assert f"SIGHUP: config file read again; logging as it now says (error log: {error_log})" in master.log()
        assert "reload done" not in master.log()
        after = error_log.read_text()
        assert "SIGHUP: bind changed, but only a new master can change it (an upgrade, SIGUSR2): kept" in after
        assert "SIGHUP: 2 worker(s) now" in after
        # The new file's on_reload hook ran, the old one's did not.
        assert (tmp_path / "on_reload.txt").read_text() == "second 2\n"
        # Two new workers, with the new environment; the name only the old file set has its value from before.
        assert first_pid not in _two_workers_answer(port, ("two", "exported"))
        assert refused(other_port)  # the address is kept
        master.send_signal(signal.SIGTERM)
        assert master.wait() == ExitStatus.OK
    assert "exit: clean" in error_log.read_text()


def test_a_config_file_that_cannot_be_used_at_sighup_changes_nothing(tmp_path: Path) -> None:
    port = free_port()
    _write_config(tmp_path, "first", port, 1, ["GREETING=one"])
    with _start(tmp_path) as master:
        first_pid = _answer(port)[2]
        (tmp_path / "conf.py").write_text("workers = (\n")  # a half-saved edit
        master.send_signal(signal.SIGHUP)
        master.wait_for_log(r"SIGHUP: the config file cannot be used, so nothing is reloaded: .*conf\.py")
        # A logging configuration that fails is undone, and reported where the log went before.
        bad_logging = "logconfig_dict = {'version': 1, 'handlers': {'h': {'class': 'no.such.Handler'}}}"
        _write_config(tmp_path, "bad", port, 1, ["GREETING=bad"], bad_logging)
        master.send_signal(signal.SIGHUP)
        master.wait_for_log(r"SIGHUP: the config file cannot be used, so nothing is reloaded: --log-config: ")
        # An error log that cannot be opened, and a file that calls sys.exit(): one line each, no exit.
        unwritable = f"errorlog = {str(tmp_path / 'no-such-directory' / 'error.log')!r}"
        _write_config(tmp_path, "bad", port, 1, ["GREETING=bad"], unwritable)
        master.send_signal(signal.SIGHUP)
        master.wait_for_log(r"nothing is reloaded: cannot open the log file .*error\.log: No such file or directory")
        (tmp_path / "conf.py").write_text("import sys\nsys.exit(4)\n")
        master.send_signal(signal.SIGHUP)
        master.wait_for_log(r"nothing is reloaded: config file .*conf\.py failed: SystemExit: 4")
        assert _answer(port) == ("one", "-", first_pid)  # the same worker, the same settings
        assert "reloading" not in master.log() and not (tmp_path / "on_reload.txt").exists()
        _write_config(tmp_path, "fixed", port, 1, ["GREETING=fixed"])
        master.send_signal(signal.SIGHUP)
        master.wait_for_log(r"reload done")
        assert wait_until(lambda: _answer(port)[0] == "fixed", timeout=10)
        assert (tmp_path / "on_reload.txt").read_text() == "fixed 1\n"
        master.send_signal(signal.SIGTERM)
        assert master.wait() == ExitStatus.OK


RELEASE_APP = """\
import os

VERSION = {version!r}


def app(environ, start_response):
    body = " ".join([VERSION, os.environ.get("RELEASE", "-"), str(os.getpid())]).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def _release(directory: Path, version: str) -> Path:
    release = directory / "releases" / version
    release.mkdir(parents=True)
    (release / "hello.py").write_text(RELEASE_APP.format(version=version))
    (release / "gunicorn.conf.py").write_text(f"workers = 1\nraw_env = ['RELEASE={version}']\n")
    return release


def _switch(current: Path, release: Path) -> None:
    """Point ``current`` at ``release`` atomically, as deploy tools do."""
    staged = current.with_name("current.next")
    staged.symlink_to(release)
    os.replace(staged, current)


def test_after_a_deploy_switches_a_symlink_sighup_and_sigusr2_serve_the_new_release(tmp_path: Path) -> None:
    # Started in /srv/app/current as a shell would start it ($PWD says so): the
    # master enters it again on SIGHUP, and a new master starts there, as gunicorn's do.
    current = tmp_path / "current"
    current.symlink_to(_release(tmp_path, "1"))
    _release(tmp_path, "2")
    _release(tmp_path, "3")
    port = free_port()
    argv = gshutdown_argv("-b", f"127.0.0.1:{port}", "--ready-timeout", "10", "hello:app")
    with (
        _new_masters_stopped() as new_masters,
        GProcess(argv, tmp_path / "log", cwd=current, env={"PWD": str(current)}) as master,
    ):
        master.wait_for_log(MASTER_READY, timeout=20)
        assert _answer(port)[:2] == ("1", "1")  # ./gunicorn.conf.py read, as gunicorn reads it
        _switch(current, tmp_path / "releases" / "2")
        shutil.rmtree(tmp_path / "releases" / "1")  # a deploy's clean-up: the master's directory is gone
        master.send_signal(signal.SIGHUP)
        master.wait_for_log(r"reload done")
        assert _answer(port)[:2] == ("2", "2")  # the new code and the new release's config file
        # A release whose config file is broken: nothing reloads, and a worker
        # started meanwhile (SIGTTIN) still starts in release 2.
        broken = _release(tmp_path, "broken")
        (broken / "gunicorn.conf.py").write_text("workers = (\n")
        _switch(current, broken)
        master.send_signal(signal.SIGHUP)
        master.wait_for_log(r"SIGHUP: the config file cannot be used")
        master.send_signal(signal.SIGTTIN)
        master.wait_for_log(r"SIGTTIN: 2 worker\(s\) now")
        _two_workers_answer(port, ("2", "2"))  # the new worker too
        _switch(current, tmp_path / "releases" / "3")
        master.send_signal(signal.SIGUSR2)
        new_masters.append(int(master.wait_for_log(r"upgrading: new master (\d+) started")[1]))
        assert master.wait() == ExitStatus.OK  # it hands over once the new master is ready
        assert _answer(port)[:2] == ("3", "3")


def test_a_new_master_reads_the_command_line_where_the_first_one_was_started(tmp_path: Path) -> None:
    # -c conf.py and the file's relative chdir = "site" mean what they meant at the start,
    # though the old master works in site/ by the time it starts the new one.
    port = free_port()
    _write_config(tmp_path, "first", port, 1, ["GREETING=one"])
    with _new_masters_stopped() as new_masters, _start(tmp_path) as master:
        first_pid = _answer(port)[2]
        master.send_signal(signal.SIGUSR2)
        new_masters.append(int(master.wait_for_log(r"upgrading: new master (\d+) started")[1]))
        assert master.wait() == ExitStatus.OK
        greeting, _, pid = _answer(port)
        assert greeting == "one" and pid != first_pid


def test_a_python_module_config_is_run_again_on_sighup(tmp_path: Path) -> None:
    # gunicorn's -c python:MODULE: imported once, so it must be reloaded, not taken from sys.modules.
    port = free_port()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "hello.py").write_text(APP)
    (tmp_path / "deployconf.py").write_text("workers = 1\nraw_env = ['GREETING=one']\n")
    argv = gshutdown_argv("-c", "python:deployconf", "-b", f"127.0.0.1:{port}", "--chdir", "site", "hello:app")
    with GProcess(argv, tmp_path / "log", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}) as master:
        master.wait_for_log(MASTER_READY, timeout=20)
        assert _answer(port)[0] == "one"
        (tmp_path / "deployconf.py").write_text("workers = 1\nraw_env = ['GREETING=two']\n")
        master.send_signal(signal.SIGHUP)
        master.wait_for_log(r"reload done")
        assert _answer(port)[0] == "two"
        master.send_signal(signal.SIGTERM)
        assert master.wait() == ExitStatus.OK


def test_configuring_the_logs_again_replaces_the_handlers_a_dict_config_added(tmp_path: Path) -> None:
    # In a process of its own: the test process's logging stays as pytest set it.
    handler = {"class": "logging.FileHandler", "filename": str(tmp_path / "dict.log")}
    dict_config = {"version": 1, "handlers": {"h": handler}, "root": {"handlers": ["h"], "level": "INFO"}}
    script = f"""
import logging
from gshutdown.process import logs
dict_config = {dict_config!r}
logs.configure("info", error_log_path={str(tmp_path / "first.log")!r}, dict_config=dict_config)
logging.getLogger("gshutdown").info("one")
logs.configure("info", error_log_path={str(tmp_path / "second.log")!r})
logging.getLogger("gshutdown").info("two")
print(len(logging.getLogger().handlers))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.strip() == "1"
    assert "two" not in (tmp_path / "dict.log").read_text() and "one" in (tmp_path / "dict.log").read_text()
    assert "two" in (tmp_path / "second.log").read_text()
