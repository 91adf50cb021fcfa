"""``gshutdown.process.pidfile``: the pid file is written without trusting names others could plant.

A pid file often lives in a directory other users can write (``/tmp``), and is
often written by root. The temporary file it is renamed from must not be
reachable in advance: neither a symlink nor a file planted at a guessable name
may be followed, truncated or kept.
"""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path
from typing import Iterator

import pytest

from gshutdown.process import pidfile
from tests.process_helpers import PROBE, GProcess, free_port, start_gshutdown, start_master


def predictable_tmp(path: Path) -> Path:
    """The name the temporary file had before it was made random: ``PIDFILE.<pid>.tmp``."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def test_a_symlink_planted_at_the_old_temp_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "app.pid"
    predictable_tmp(path).symlink_to(victim)

    pidfile.write(str(path))

    assert victim.read_text() == "precious\n"
    assert not path.is_symlink()
    assert path.read_text() == f"{os.getpid()}\n"


def test_a_temp_file_planted_by_someone_else_does_not_become_the_pid_file(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    planted = predictable_tmp(path)
    planted.write_text("1\n")
    planted_inode = planted.stat().st_ino
    # The planter keeps a descriptor: were the pid file their inode, they could
    # rewrite it at will, and choose what `kill $(cat app.pid)` signals.
    with open(planted, "r+") as planters_handle:
        pidfile.write(str(path))
        planters_handle.seek(0)
        planters_handle.write("1\n")
        planters_handle.truncate()
        planters_handle.flush()

        assert path.stat().st_ino != planted_inode
        assert path.read_text() == f"{os.getpid()}\n"


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """A umask of 077 for the processes started meanwhile (they inherit it)."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def _pid_file_is_ours(path: Path, pid: int) -> None:
    assert path.read_text() == f"{pid}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    # Nothing left behind from the write: the directory holds the pid file only.
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


@pytest.mark.parametrize("mode", ["single", "master"])
def test_gshutdown_pid_writes_a_world_readable_file_and_removes_it_at_exit(
    tmp_path: Path, strict_umask: None, mode: str
) -> None:
    """Readable by a supervisor of another user even under umask 077, as pid files are; gone at exit."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / "gs.pid"
    port = free_port()
    server: GProcess
    if mode == "single":
        server = start_gshutdown(tmp_path / "log", "--pid", str(path), "--bind", f"127.0.0.1:{port}", PROBE)
    else:
        server = start_master(tmp_path / "log", PROBE, port, "--pid", str(path), workers=1)
    with server:
        _pid_file_is_ours(path, server.pid)
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert list(run_dir.iterdir()) == []
