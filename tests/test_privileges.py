"""``--user``/``--group``: the application is imported as that user, never as root.

Run as root (the suite runs as root here) with ``--user nobody``: an
application module records ``os.getuid()`` at import time in a file of a
directory anyone may write, and the test reads which user imported it, and
who owns the file the import created.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.process_helpers import MASTER_READY, ROOT, STARTUP_TIMEOUT, GProcess, free_port, get, gone, wait_until

if os.geteuid() != 0:  # pragma: no cover - the suite runs as root in CI
    pytest.fail("tests/test_privileges.py switches users: run it as root", pytrace=False)

USER = "nobody"
ACCOUNT = pwd.getpwnam(USER)

#: Writes who imported it into $UID_SEEN_DIR/import.PID, at import time; answers who serves.
UID_APP = """
import os

with open(os.path.join(os.environ["UID_SEEN_DIR"], f"import.{os.getpid()}"), "w") as seen:
    seen.write(f"{os.getuid()} {os.getgid()}\\n")


def app(environ, start_response):
    body = str(os.getuid()).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def _readable_by_anyone(path: str) -> bool:
    """Every directory from / down to ``path`` searchable by others, and ``path`` readable."""
    current = Path(path).resolve()
    if not os.stat(current).st_mode & stat.S_IROTH:
        return False
    return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in current.parents)


def python_for_anyone() -> tuple[list[str], dict[str, str]]:
    """A Python, and its environment, whose standard library ``nobody`` can read.

    After the switch, gevent and the app import modules from the standard
    library. This interpreter's may sit where only root can read (pyenv under
    /root here): then the system's Python of the same version runs the same
    packages (its ABI is the same), which is what a real deployment has.
    """
    if _readable_by_anyone(sysconfig.get_paths()["stdlib"]):
        return [sys.executable], {}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for directory in ("/usr/bin", "/usr/local/bin"):
        candidate = os.path.join(directory, version)
        if os.access(candidate, os.X_OK) and Path(candidate).resolve() != Path(sys.executable).resolve():
            packages = sysconfig.get_paths()["purelib"]
            return [candidate], {"PYTHONPATH": os.pathsep.join([str(ROOT), packages])}
    pytest.fail(f"no {version} whose standard library {USER} can read (this one is under a private directory)")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory ``nobody`` can reach (tmp_path's parents are root's only), with ``seen/`` writable by all."""
    path = Path(tempfile.mkdtemp(prefix="gshutdown-privileges-"))
    try:
        path.chmod(0o755)
        (path / "seen").mkdir()
        (path / "seen").chmod(0o777)
        (path / "uid_app.py").write_text(UID_APP)
        (path / "uid_app.py").chmod(0o644)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def start_as_nobody(shared_dir: Path, log_path: Path, port: int, *args: str) -> GProcess:
    """``gshutdown uid_app.py --user nobody ARGS`` run as root, waited for until it serves."""
    python, env = python_for_anyone()
    app = str(shared_dir / "uid_app.py")
    argv = [*python, "-m", "gshutdown", app, "-b", f"127.0.0.1:{port}", "--user", USER, *args]
    proc = GProcess(argv, log_path, env={**env, "UID_SEEN_DIR": str(shared_dir / "seen")})
    try:
        proc.wait_for_log(MASTER_READY if "--workers" in args else r"listening on ", timeout=STARTUP_TIMEOUT)
    except BaseException:
        proc.stop()
        raise
    return proc


def assert_imported_as_nobody(shared_dir: Path, processes: int, log: str) -> None:
    """``processes`` imports of the app happened, each as nobody, each creating a file nobody owns."""
    imports = sorted((shared_dir / "seen").glob("import.*"))
    assert len(imports) == processes, log
    for seen in imports:
        assert seen.read_text() == f"{ACCOUNT.pw_uid} {ACCOUNT.pw_gid}\n", log
        assert (seen.stat().st_uid, seen.stat().st_gid) == (ACCOUNT.pw_uid, ACCOUNT.pw_gid)


@pytest.mark.parametrize("workers", [(), ("--workers", "2")], ids=["single", "workers"])
def test_the_app_is_imported_as_the_user_it_switches_to(
    shared_dir: Path, tmp_path: Path, workers: tuple[str, ...]
) -> None:
    port = free_port()
    pid_file = shared_dir / "seen" / "gshutdown.pid"
    with start_as_nobody(shared_dir, tmp_path / "log", port, "--pid", str(pid_file), *workers) as proc:
        assert get(port)[::2] == (200, str(ACCOUNT.pw_uid).encode())  # it serves as nobody
        # Once in each process that imports it: the single process, or each worker.
        assert_imported_as_nobody(shared_dir, 2 if workers else 1, proc.log())
        # The pid file is written after the switch too (README, Privileges).
        assert pid_file.stat().st_uid == ACCOUNT.pw_uid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.log()
    assert not pid_file.exists()


def test_preload_imports_the_app_in_the_master_as_the_user(shared_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    with start_as_nobody(shared_dir, tmp_path / "log", port, "--workers", "2", "--preload") as proc:
        assert get(port)[::2] == (200, str(ACCOUNT.pw_uid).encode())
        # Once, in the master, before it forks: the workers inherit the module.
        assert_imported_as_nobody(shared_dir, 1, proc.log())
        assert (shared_dir / "seen" / f"import.{proc.pid}").exists()
        workers = [int(pid) for pid in re.findall(r"worker (\d+) started", proc.log())]
        # (Whether a --preload master then exits on its own is not this test's business: it is killed on exit.)
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: all(gone(pid) for pid in workers), timeout=20)
