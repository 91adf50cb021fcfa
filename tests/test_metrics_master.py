"""``--metrics-path`` with ``--workers``: the sum over every worker, from any of them.

Real masters with two workers (``--reuse-port``, so new connections spread
over both), scraped over loopback. A worker copies its numbers into the
shared files every ``FLUSH_INTERVAL`` seconds and whenever it is scraped, so
the tests poll (bounded) until the sum has caught up, then compare exactly.
Each master runs with ``TMPDIR`` in the test's directory, which must be empty
again once it has exited.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from pathlib import Path
from typing import Callable, Iterator

import pytest

from gshutdown.process.exit_status import ExitStatus
from tests.metrics_helpers import Scrape, metrics_cli, scrape
from tests.process_helpers import PROBE, GProcess, connect, free_port, get, read_response, request_bytes, wait_until

READY = r"master (\d+): (\d+) worker\(s\) ready"
#: Long enough for a flush from every worker, on a loaded machine.
SETTLE = 15.0


class Master:
    def __init__(self, proc: GProcess, port: int, tmpdir: Path) -> None:
        self.proc = proc
        self.port = port
        self.tmpdir = tmpdir
        self.scrapes = 0

    def scrape(self) -> Scrape:
        self.scrapes += 1
        return scrape(self.port)

    def ready_workers(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"worker (\d+) ready", self.proc.log())]

    def multiproc_dir(self) -> Path:
        return Path(self.proc.wait_for_log(r"metrics: multiprocess files in (\S+) \(removed at exit\)").group(1))

    def stop_and_check_nothing_is_left(self, status: int = ExitStatus.OK) -> None:
        directory = self.multiproc_dir()
        assert any(directory.glob("counter_*.db")), "the workers wrote no files"
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait() == status, self.proc.log()
        assert not directory.exists()
        assert list(self.tmpdir.iterdir()) == []


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Master]:
    with _master(tmp_path) as started:
        yield started


@contextlib.contextmanager
def _master(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[Master]:
    port = free_port()
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    argv = (PROBE, "-b", f"127.0.0.1:{port}", "-w", "2", "--reuse-port", "--ready-timeout", "10", *extra)
    with metrics_cli(tmp_path / "master.log", *argv, env={"TMPDIR": str(tmpdir), **(env or {})}) as proc:
        proc.wait_for_log(READY, timeout=20)
        yield Master(proc, port, tmpdir)


def _serve_on_both_workers(master: Master, minimum: int = 20) -> tuple[int, set[int]]:
    """Requests on new connections until both workers answered and ``minimum`` were made."""
    pids: set[int] = set()
    count = 0
    while count < minimum or len(pids) < 2:
        assert count < 400, f"only workers {pids} answered {count} requests"
        status, _, body = get(master.port, "/pid")
        assert status == 200
        pids.add(int(body))
        count += 1
    return count, pids


def test_the_sum_counts_the_requests_of_both_workers(master: Master) -> None:
    served, pids = _serve_on_both_workers(master)
    assert pids == set(master.ready_workers())

    def caught_up() -> Scrape | None:
        now = master.scrape()
        settled = (
            # Counted at its head: every scrape so far, this one included.
            now.value("gshutdown_requests_total") == served + master.scrapes
            # Responses and timings: all but this scrape's own, not over yet.
            and now.value("gshutdown_responses_total", status_class="2xx") == served + master.scrapes - 1
            and now.value("gshutdown_request_duration_seconds_count") == served + master.scrapes - 1
            and now.value("gshutdown_connections", state="active") == 1  # this scrape
        )
        return now if settled else None

    final = wait_until(caught_up, timeout=SETTLE, interval=0.2)
    per_worker = final.by_label("gshutdown_worker_requests", "pid")
    assert set(per_worker) == {str(pid) for pid in pids}
    assert all(count > 0 for count in per_worker.values())
    assert sum(per_worker.values()) == served + master.scrapes
    assert final.value("gshutdown_shutdown_phase", phase="serving") == 2
    assert final.value("gshutdown_worker_restarts_total", reason="died") == 0
    master.stop_and_check_nothing_is_left()


def test_an_idle_connection_shows_on_its_worker(master: Master) -> None:
    with connect(master.port) as idle:
        idle.sendall(request_bytes("/pid"))
        status, _, body = read_response(idle)
        assert status == 200
        holder = body.decode()

        def idle_on_holder() -> bool:
            now = master.scrape()
            idle_by_pid = {
                dict(labels)["pid"]: value
                for (name, labels), value in now.samples.items()
                if name == "gshutdown_worker_connections" and dict(labels)["state"] == "idle"
            }
            return now.value("gshutdown_connections", state="idle") == 1 and idle_by_pid.get(holder) == 1

        wait_until(idle_on_holder, timeout=SETTLE, interval=0.2)
    master.stop_and_check_nothing_is_left()


def test_a_worker_killed_with_sigkill_is_replaced_and_counted(master: Master) -> None:
    served, pids = _serve_on_both_workers(master)
    wait_until(
        lambda: master.scrape().value("gshutdown_requests_total") == served + master.scrapes,
        timeout=SETTLE,
        interval=0.2,
    )
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    master.proc.wait_for_log(rf"worker {victim} died with signal SIGKILL; restarting")
    wait_until(lambda: len(master.ready_workers()) == 3, timeout=SETTLE)
    live = {str(pid) for pid in master.ready_workers() if pid != victim}

    def replaced() -> Scrape | None:
        now = master.scrape()
        done = (
            now.value("gshutdown_worker_restarts_total", reason="died") == 1
            and set(now.by_label("gshutdown_worker_requests", "pid")) == live
            and now.value("gshutdown_shutdown_phase", phase="serving") == 2
        )
        return now if done else None

    after = wait_until(replaced, timeout=SETTLE, interval=0.2)
    # The dead worker's counts stay in the sum: a counter never goes back.
    assert after.value("gshutdown_requests_total") == served + master.scrapes
    assert after.value("gshutdown_worker_restarts_total", reason="reload") == 0
    master.stop_and_check_nothing_is_left()


def test_a_reload_shows_the_old_worker_draining_then_its_forced_connection(tmp_path: Path) -> None:
    with _master(tmp_path, "--graceful-timeout", "3") as master:
        with connect(master.port) as slow:
            slow.sendall(request_bytes("/slow?s=30"))
            slow_worker = master.proc.wait_for_log(r"\[(\d+)\] \[INFO\] slow request started").group(1)
            master.proc.send_signal(signal.SIGHUP)
            master.proc.wait_for_log(r"reload done: generation 2 serving; 2 old worker\(s\) draining", timeout=SETTLE)

            def one_draining() -> bool:
                now = master.scrape()
                return (
                    now.value("gshutdown_shutdown_phase", phase="draining") == 1
                    and now.value("gshutdown_worker_restarts_total", reason="reload") == 2
                )

            wait_until(one_draining, timeout=SETTLE, interval=0.2)
            # At its deadline the old worker forces the slow request and exits.
            assert slow.recv(1) == b""
        # It records its drain and forced connection in two files (a gauge's
        # and a counter's), which a scrape reads one after the other in
        # directory order: one made meanwhile can see the forced connection
        # but not yet this drain, and the idle old worker's (about 1 ms) as
        # the most recent. Once the master has reaped it, both are written.
        master.proc.wait_for_log(rf"worker {slow_worker} exited with status {ExitStatus.FORCED:d}", timeout=SETTLE)

        def forced_and_gone() -> Scrape | None:
            now = master.scrape()
            done = (
                now.value("gshutdown_forced_connections_total") == 1
                and now.value("gshutdown_shutdown_phase", phase="draining") == 0
                and now.value("gshutdown_shutdown_phase", phase="serving") == 2
            )
            return now if done else None

        after = wait_until(forced_and_gone, timeout=SETTLE, interval=0.2)
        assert 3 <= after.value("gshutdown_last_drain_duration_seconds") < 3 + SETTLE
        # A worker that had to force makes the master's exit status 3, whenever it drained.
        master.stop_and_check_nothing_is_left(ExitStatus.FORCED)


def test_a_directory_the_user_gave_is_used_and_kept(tmp_path: Path) -> None:
    given = tmp_path / "multiproc"
    given.mkdir()
    with _master(tmp_path, env={"PROMETHEUS_MULTIPROC_DIR": str(given)}) as master:
        assert get(master.port, "/")[0] == 200
        assert master.scrape().value("gshutdown_requests_total") >= 1
        assert "(removed at exit)" not in master.proc.log()
        master.proc.send_signal(signal.SIGTERM)
        assert master.proc.wait() == 0
    # Its counters and histograms stay, as prometheus-client leaves them; the
    # live gauges of the exited workers are gone.
    names = {path.name for path in given.iterdir()}
    assert any(name.startswith("counter_") for name in names), names
    assert not any(name.startswith(("gauge_livesum_", "gauge_liveall_")) for name in names), names


def _restarts_match(master: Master, expected: Callable[[], dict[str, float]]) -> None:
    """Poll until the restarts by reason are ``expected()`` (which may read the log)."""
    seen: list[tuple[dict[str, float], dict[str, float]]] = []

    def matched() -> bool:
        seen.append((master.scrape().by_label("gshutdown_worker_restarts_total", "reason"), expected()))
        return seen[-1][0] == seen[-1][1]

    try:
        wait_until(matched, timeout=SETTLE, interval=0.2)
    except AssertionError:
        raise AssertionError(f"restarts (counted, expected): {seen[-1]}") from None


def test_max_requests_restarts_are_counted(tmp_path: Path) -> None:
    with _master(tmp_path, "--max-requests", "5") as master:
        _serve_on_both_workers(master, minimum=30)

        def as_logged() -> dict[str, float]:
            recycled = len(re.findall(r"reached --max-requests: starting its replacement", master.proc.log()))
            # Thirty requests, each worker asking to go after five: never fewer than two.
            return {"died": 0, "max-requests": max(recycled, 2), "timeout": 0, "reload": 0}

        _restarts_match(master, as_logged)
        master.stop_and_check_nothing_is_left()


def test_a_worker_killed_for_timeout_is_counted(tmp_path: Path) -> None:
    with _master(tmp_path, "--timeout", "2") as master:
        with connect(master.port) as spinning:
            spinning.sendall(request_bytes("/spin?s=30"))
            stuck = int(master.proc.wait_for_log(r"\[(\d+)\] \[INFO\] spin started").group(1))
            master.proc.wait_for_log(rf"worker {stuck} exited with signal SIGKILL", timeout=SETTLE)
        _restarts_match(master, lambda: {"died": 0, "max-requests": 0, "timeout": 1, "reload": 0})
        # A worker killed for --timeout had its connections forced: exit status 3.
        master.stop_and_check_nothing_is_left(ExitStatus.FORCED)
