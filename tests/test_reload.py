"""``--reload``: a real edit of the app's file restarts it, in one process and under a master.

The app is a file in the test's directory, imported from there; the tests
rewrite it and poll (bounded) until the answer changes. Bytecode caching is
off in the children: two versions written within one second, of one size,
would otherwise share a ``.pyc``.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
from pathlib import Path
from typing import Optional

import pytest

from gshutdown.process import reload
from gshutdown.process.exit_status import ExitStatus
from gshutdown.process.reload import FilePattern
from tests.process_helpers import MASTER_READY, GProcess, free_port, get, gone, gshutdown_argv, wait_until

APP = """\
import os

with open(os.path.join(os.path.dirname(__file__), "settings.toml")) as fh:
    SETTING = fh.read().strip()


def app(environ, start_response):
    body = f"{VERSION} {SETTING} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


VERSION = "%s"
"""
ENV = {"PYTHONDONTWRITEBYTECODE": "1"}
#: Bounded wait for a restart to serve the new code: a debounce, a drain and an import.
RELOADED_WITHIN = 20.0


def _write_app(directory: Path, version: str) -> None:
    (directory / "hello.py").write_text(APP % version)


def _answer(port: int) -> Optional[tuple[str, str, int]]:
    try:
        status, _, body = get(port, "/")
    except OSError:
        return None  # between the drain and the re-exec's listener
    if status != 200:
        return None
    version, setting, pid = body.decode().split()
    return version, setting, int(pid)


def _serves(port: int, version: str, setting: str = "a=1") -> int:
    """The pid that answered, once the app answers with ``version`` and ``setting``."""
    found = wait_until(
        lambda: (answer := _answer(port)) is not None and answer[:2] == (version, setting) and answer,
        timeout=RELOADED_WITHIN,
        interval=0.05,
    )
    return int(found[2])


def _one_process(directory: Path, port: int, extra_file: str) -> GProcess:
    """The app, version "one", served by one process with ``--reload``, once it listens."""
    _write_app(directory, "one")
    (directory / "settings.toml").write_text("a=1\n")
    argv = ["-b", f"127.0.0.1:{port}", "--reload", "--reload-extra-file", extra_file, "hello:app"]
    return GProcess(gshutdown_argv(*argv), directory / "log", env=ENV, cwd=directory).listening()


def test_one_process_drains_and_re_executes_itself_on_a_code_change(tmp_path: Path) -> None:
    port = free_port()
    with _one_process(tmp_path, port, "settings.toml") as proc:
        assert _serves(port, "one") == proc.pid
        _write_app(tmp_path, "two")
        assert _serves(port, "two") == proc.pid  # the same process, re-executed
        assert re.search(r"--reload: hello\.py changed: draining, then restarting", proc.log())
        assert "exit: clean" in proc.log()  # the drain before the re-exec
        (tmp_path / "settings.toml").write_text("a=2\n")  # an extra file, not Python: restarts too
        assert _serves(port, "two", "a=2") == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == ExitStatus.OK


TREE = [
    "settings.toml",
    "templates/index.html",
    "templates/mail/welcome.html",
    "templates/mail/deep/er.html",
    "templates/.hidden/secret.html",
    "templates/.dot.html",
    "templates/notes.txt",
    "ui/a/config.json",
    "ui/b/config.json",
    "ui/b/c/config.json",
    "ui/config.json",
    "ui/[x].json",
]


@pytest.mark.parametrize(
    "pattern",
    [
        "templates/**/*.html",
        "templates/*.html",
        "templates/**",
        "templates/.*",
        "templates/.*/*.html",
        "**/*.json",
        "ui/*/config.json",
        "ui/?/config.json",
        "ui/[ab]/config.json",
        "ui/[!a]/config.json",
        "ui/**/config.json",
        "*.toml",
    ],
)
def test_a_reload_pattern_matches_the_files_glob_finds(tmp_path: Path, pattern: str) -> None:
    for name in TREE:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    file_pattern = FilePattern(str(tmp_path / pattern))
    found = {path for path in file_pattern.expand() if os.path.isfile(path)}
    assert found  # every pattern here matches something, so equality below is not empty == empty
    assert {str(tmp_path / name) for name in TREE if file_pattern.matches(str(tmp_path / name))} == found
    assert not file_pattern.matches(str(tmp_path.parent / "elsewhere" / pattern.replace("*", "x")))


def test_a_file_created_after_the_start_that_matches_a_reload_pattern_restarts(tmp_path: Path) -> None:
    port = free_port()
    with _one_process(tmp_path, port, "templates/**/*.html") as proc:
        assert _serves(port, "one") == proc.pid
        assert re.search(r"WARNING\].*templates/\*\*/\*\.html matches no file yet", proc.log())
        (tmp_path / "templates" / "mail").mkdir(parents=True)  # templates/ did not exist at the start
        (tmp_path / "templates" / "notes.txt").write_text("not a template\n")
        (tmp_path / "templates" / "mail" / "welcome.html").write_text("<p>hello</p>\n")
        proc.wait_for_log(r"--reload: welcome\.html changed: draining, then restarting", timeout=RELOADED_WITHIN)
        proc.wait_for_log(r"listening on [\s\S]*listening on ")  # the re-executed one, not the old one draining
        assert _serves(port, "one") == proc.pid  # re-executed in the same process
        assert "notes.txt" not in proc.log()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == ExitStatus.OK


SLOW_APP = """\
import os
import time


def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        open("slow-started", "w").close()
        while not os.path.exists("slow-release"):
            time.sleep(0.01)  # monkey-patched: the server goes on meanwhile
    start_response("200 OK", [("Content-Length", "4")])
    return [b"done"]
"""


def test_sigterm_during_a_reload_drain_exits_after_it_instead_of_restarting(tmp_path: Path) -> None:
    # A developer's Ctrl-C (or a stop) right after saving: the drain goes on, and no restart follows.
    (tmp_path / "slow.py").write_text(SLOW_APP)
    port = free_port()
    argv = ["-b", f"127.0.0.1:{port}", "--reload", "slow:app"]
    with GProcess(gshutdown_argv(*argv), tmp_path / "log", env=ENV, cwd=tmp_path).listening() as proc:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=RELOADED_WITHIN)
        conn.request("GET", "/slow")
        wait_until(lambda: (tmp_path / "slow-started").exists())
        (tmp_path / "slow.py").write_text(SLOW_APP + "\n# edited\n")
        proc.wait_for_log(r"--reload: slow\.py changed: draining, then restarting", timeout=RELOADED_WITHIN)
        proc.wait_for_log(r"shutdown: started")
        proc.send_signal(signal.SIGTERM)
        proc.wait_for_log(r"SIGTERM: exiting after this drain, not as code changed \(--reload\) meant")
        (tmp_path / "slow-release").touch()
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"done")  # the drain finished the request
        conn.close()
        assert proc.wait() == ExitStatus.OK
        assert "--reload: restarting" not in proc.log() and "closing every connection now" not in proc.log()


def test_sigquit_during_a_reload_drain_closes_now_and_does_not_restart(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(SLOW_APP)
    port = free_port()
    argv = ["-b", f"127.0.0.1:{port}", "--reload", "slow:app"]
    with GProcess(gshutdown_argv(*argv), tmp_path / "log", env=ENV, cwd=tmp_path).listening() as proc:
        conn = socket.create_connection(("127.0.0.1", port), timeout=RELOADED_WITHIN)
        conn.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: (tmp_path / "slow-started").exists())
        (tmp_path / "slow.py").write_text(SLOW_APP + "\n# edited\n")
        proc.wait_for_log(r"shutdown: started")
        proc.send_signal(signal.SIGQUIT)
        assert proc.wait() == ExitStatus.FORCED  # the slow request was cut
        assert conn.recv(1024) == b""
        conn.close()
        assert "--reload: restarting" not in proc.log()


def test_a_launch_directory_whose_name_looks_like_a_pattern_is_taken_literally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launch = tmp_path / "proj[1]"
    (launch / "templates").mkdir(parents=True)
    monkeypatch.setattr(reload, "_launch_dir", str(launch))
    watcher = reload.CodeWatcher(str(launch), ["settings.toml", "templates/*.html"], lambda paths: None)
    assert watcher.extra_files == {str(launch / "settings.toml")}  # a file, not a pattern
    (pattern,) = watcher.patterns
    assert pattern.root == str(launch / "templates")
    assert pattern.matches(str(launch / "templates" / "a.html"))
    assert not pattern.matches(str(tmp_path / "proj1" / "templates" / "a.html"))
    (launch / "templates" / "a.html").write_text("")
    assert pattern.expand() == [str(launch / "templates" / "a.html")]


def test_a_missing_directory_is_watched_from_an_existing_one_only_under_the_launch_directory(tmp_path: Path) -> None:
    assert reload._watchable(str(tmp_path / "templates" / "mail"), str(tmp_path)) == str(tmp_path)
    assert reload._watchable(str(tmp_path), str(tmp_path / "elsewhere")) == str(tmp_path)  # it exists
    # A mistyped absolute path: not the whole file system from "/".
    assert reload._watchable("/no-such-directory/templates", str(tmp_path)) is None


def test_a_master_reloads_its_workers_and_keeps_the_old_ones_when_the_new_code_fails(tmp_path: Path) -> None:
    _write_app(tmp_path, "one")
    (tmp_path / "settings.toml").write_text("a=1\n")
    port = free_port()
    argv = ["-b", f"127.0.0.1:{port}", "-w", "1", "--ready-timeout", "10", "--reload", "hello:app"]
    with GProcess(gshutdown_argv(*argv), tmp_path / "log", env=ENV, cwd=tmp_path) as proc:
        proc.wait_for_log(MASTER_READY, timeout=20)
        first = _serves(port, "one")
        (tmp_path / "hello.py").write_text("def app(:\n")  # a half-saved edit
        proc.wait_for_log(r"reload failed: new worker \d+ exited", timeout=RELOADED_WITHIN)
        assert _serves(port, "one") == first  # the old worker still serves
        _write_app(tmp_path, "two")
        second = _serves(port, "two")
        assert second not in (first, proc.pid)
        assert re.search(r"--reload: hello\.py changed: SIGHUP", proc.log())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == ExitStatus.OK


def test_with_preload_a_new_master_takes_over_and_the_patched_old_one_exits(tmp_path: Path) -> None:
    # --preload: the master imported (and monkey-patched for) the old code, so a reload is an upgrade.
    _write_app(tmp_path, "one")
    (tmp_path / "settings.toml").write_text("a=1\n")
    port = free_port()
    argv = ["-b", f"127.0.0.1:{port}", "-w", "1", "--preload", "--ready-timeout", "15", "--reload", "hello:app"]
    new_master = None
    try:
        with GProcess(gshutdown_argv(*argv), tmp_path / "log", env=ENV, cwd=tmp_path) as proc:
            proc.wait_for_log(MASTER_READY, timeout=20)
            _serves(port, "one")
            _write_app(tmp_path, "two")
            new_master = int(proc.wait_for_log(r"upgrading: new master (\d+) started", timeout=RELOADED_WITHIN)[1])
            _serves(port, "two")
            # The old master hands over, drains its worker, reaps it and exits.
            assert proc.wait() == ExitStatus.OK
            assert re.search(rf"\[{proc.pid}\] \[INFO\] worker \d+ exited with status 0", proc.log())
    finally:
        if new_master is not None:
            os.kill(new_master, signal.SIGTERM)  # started by the test's own child, on its behalf
            wait_until(lambda: gone(new_master), timeout=20)
