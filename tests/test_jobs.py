"""jobs.py: periodic jobs on a fixed schedule that stop cleanly (gevent, no sockets).

The tests run gevent code in the test's own greenlet; waits are on events
and joins, each bounded. Intervals are ~50 ms, so schedule checks allow for
a loaded machine: they compare against what a drifting or overlapping
scheduler would do, which is off by far more.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Callable, Iterator

import gevent
import pytest
from gevent.event import Event

from gshutdown.server import jobs
from gshutdown.server.jobs import PeriodicJob, Scheduler

INTERVAL = 0.05
#: How early a timer may fire (libev measures from its cached loop time).
EARLY = 0.01


@pytest.fixture
def started_jobs() -> Iterator[list[PeriodicJob]]:
    """Jobs to stop at teardown whatever the test did."""
    started: list[PeriodicJob] = []
    yield started
    for job in started:
        job.stop(1.0)


def phase(at: float, t0: float) -> float:
    """How far past the last schedule tick (t0 + k * INTERVAL) ``at`` is.

    A fixed schedule keeps every run near phase 0 even when a run is late or
    ticks are skipped; a schedule that drifts walks through all phases.
    """
    return (at - t0 + EARLY) % INTERVAL - EARLY


def test_interval_must_be_positive() -> None:
    for bad in (0, -1, -0.5):
        with pytest.raises(ValueError, match="interval"):
            PeriodicJob(bad, lambda: None)


def test_name_defaults_to_the_function_qualname() -> None:
    def refresh_cache() -> None:
        pass

    assert PeriodicJob(1, refresh_cache).name.endswith("refresh_cache")
    assert PeriodicJob(1, refresh_cache, name="cache").name == "cache"


def test_runs_follow_start_plus_k_intervals_without_drift(started_jobs: list[PeriodicJob]) -> None:
    runs_wanted = 10
    starts: list[float] = []
    done = Event()

    def work() -> None:
        starts.append(time.monotonic())
        # A schedule that waits `interval` after each run drifts by this much every time.
        gevent.sleep(0.02)
        if len(starts) == runs_wanted:
            done.set()

    job = PeriodicJob(INTERVAL, work, name="drift")
    started_jobs.append(job)
    t0 = time.monotonic()
    job.start()
    assert done.wait(10)
    assert job.stop(2) is True
    # Run k is never ahead of start + k * interval.
    assert all(at >= t0 + k * INTERVAL - EARLY for k, at in enumerate(starts, 1)), starts
    # And stays on that grid: drifting by 0.02 s a run would spread the phases over
    # 0 .. 0.04 s (median 0.02); a loaded machine delays some runs, not most.
    phases = sorted(phase(at, t0) for at in starts)
    assert phases[len(phases) // 2] < 0.01, phases


def test_first_run_is_one_interval_after_start(started_jobs: list[PeriodicJob]) -> None:
    ran = Event()
    job = PeriodicJob(INTERVAL * 2, ran.set)
    started_jobs.append(job)
    t0 = time.monotonic()
    job.start()
    assert ran.wait(10)
    assert time.monotonic() - t0 >= INTERVAL * 2 - EARLY


def test_runs_never_overlap_and_an_overrun_skips_ticks(
    started_jobs: list[PeriodicJob], caplog: pytest.LogCaptureFixture
) -> None:
    spans: list[tuple[float, float]] = []
    active = [0, 0]  # now, most at once
    done = Event()

    def slow() -> None:
        began = time.monotonic()
        active[0] += 1
        active[1] = max(active)
        gevent.sleep(INTERVAL * 1.6)  # overruns its interval every time
        active[0] -= 1
        spans.append((began, time.monotonic()))
        if len(spans) == 4:
            done.set()

    job = PeriodicJob(INTERVAL, slow, name="slow-job")
    started_jobs.append(job)
    with caplog.at_level(logging.WARNING, logger="gshutdown.jobs"):
        t0 = time.monotonic()
        job.start()
        assert done.wait(10)
        assert job.stop(2) is True
    assert active[1] == 1
    for (_, ended), (began, _) in itertools.pairwise(spans):
        assert began >= ended
    # Missed ticks are skipped, not queued: a run waits for the next tick rather
    # than starting as soon as the previous one ends (phase 0.03, 0.01, 0.04 ...).
    phases = sorted(phase(began, t0) for began, _ in spans)
    assert phases[len(phases) // 2] < 0.01, phases
    assert job.skipped_ticks >= 3
    overran = [r for r in caplog.records if "overran" in r.getMessage()]
    assert overran
    assert all(r.levelno == logging.WARNING and "slow-job" in r.getMessage() for r in overran)


def test_an_exception_is_logged_and_the_schedule_is_kept(
    started_jobs: list[PeriodicJob], caplog: pytest.LogCaptureFixture
) -> None:
    starts: list[float] = []
    done = Event()

    def flaky() -> None:
        starts.append(time.monotonic())
        if len(starts) == 3:
            done.set()
        if len(starts) == 1:
            raise RuntimeError("first run fails")

    job = PeriodicJob(INTERVAL, flaky, name="flaky")
    started_jobs.append(job)
    with caplog.at_level(logging.ERROR, logger="gshutdown.jobs"):
        t0 = time.monotonic()
        job.start()
        assert done.wait(10)
        assert job.stop(2) is True
    assert job.failures == 1
    assert job.runs >= 3
    # The failure changed nothing about the schedule.
    assert all(at >= t0 + k * INTERVAL - EARLY for k, at in enumerate(starts, 1)), starts
    phases = sorted(phase(at, t0) for at in starts)
    assert phases[1] < 0.01, phases
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 1
    assert "flaky" in failed[0].getMessage()
    assert failed[0].exc_info is not None
    assert isinstance(failed[0].exc_info[1], RuntimeError)


def test_stop_wakes_a_sleeping_job_at_once() -> None:
    calls: list[float] = []
    job = PeriodicJob(10.0, lambda: calls.append(time.monotonic()))
    job.start()
    gevent.idle()  # the job is now waiting for its first tick
    began = time.monotonic()
    assert job.stop(timeout=5) is True
    assert time.monotonic() - began < 1.0  # not the 10 s interval, nor the 5 s timeout
    assert calls == []
    assert job.runs == 0


def test_stop_before_start_is_immediate() -> None:
    job = PeriodicJob(1.0, lambda: None)
    assert job.stop(0) is True
    job.start()
    gevent.idle()
    assert job.runs == 0


def test_a_running_job_that_finishes_within_the_timeout_reports_true(started_jobs: list[PeriodicJob]) -> None:
    running = Event()
    finished: list[bool] = []

    def work() -> None:
        running.set()
        gevent.sleep(0.15)
        finished.append(True)

    job = PeriodicJob(INTERVAL, work)
    started_jobs.append(job)
    job.start()
    assert running.wait(10)
    assert job.running
    began = time.monotonic()
    assert job.stop(timeout=5) is True
    assert finished == [True]
    assert time.monotonic() - began < 4
    assert job.runs == 1  # no run started once the stop was requested
    assert not job.running


def test_a_job_still_running_at_the_deadline_is_killed(
    started_jobs: list[PeriodicJob], caplog: pytest.LogCaptureFixture
) -> None:
    running = Event()
    reached_end: list[bool] = []

    def stuck() -> None:
        running.set()
        gevent.sleep(30)
        reached_end.append(True)

    job = PeriodicJob(INTERVAL, stuck, name="stuck-job")
    started_jobs.append(job)
    job.start()
    assert running.wait(10)
    began = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="gshutdown.jobs"):
        assert job.stop(timeout=0.05) is False
    assert time.monotonic() - began < 2
    assert reached_end == []
    assert not job.running
    assert any("stuck-job" in r.getMessage() and "killed" in r.getMessage() for r in caplog.records)


def _blocking(started: Event, seconds: float) -> Callable[[], None]:
    def work() -> None:
        started.set()
        gevent.sleep(seconds)

    return work


def test_scheduler_stop_names_only_the_jobs_killed_at_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    quick_started, stuck_started, idle_calls = Event(), Event(), []
    scheduler = Scheduler()
    scheduler.every(INTERVAL, _blocking(quick_started, 0.05), name="quick")
    scheduler.every(INTERVAL, _blocking(stuck_started, 30), name="stuck")
    scheduler.every(10.0, lambda: idle_calls.append(1), name="sleeper")
    scheduler.start()
    try:
        assert quick_started.wait(10)
        assert stuck_started.wait(10)
        began = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="gshutdown.jobs"):
            killed = scheduler.stop(deadline=time.monotonic() + 0.3)
        assert killed == ["stuck"]
        assert time.monotonic() - began < 3
    finally:
        for job in scheduler.jobs:
            job.stop(1.0)
    assert idle_calls == []
    assert all(job._greenlet is not None and job._greenlet.dead for job in scheduler.jobs)


def test_scheduler_every_after_start_starts_the_job() -> None:
    scheduler = Scheduler()
    scheduler.start()
    ran = Event()
    job = scheduler.every(INTERVAL, ran.set, name="late")
    try:
        assert ran.wait(10)
        assert scheduler.jobs == [job]
    finally:
        assert scheduler.stop(time.monotonic() + 2) == []


def test_every_decorator_registers_app_jobs_and_adopt_moves_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "app_jobs", [])
    ran = Event()

    @jobs.every(INTERVAL, name="heartbeat")
    def heartbeat() -> None:
        ran.set()

    @jobs.every(5.0)
    def cleanup() -> None:
        pass

    assert callable(heartbeat)
    heartbeat()  # the decorator returns the function itself
    assert ran.is_set()
    ran.clear()
    pending = jobs.app_jobs
    assert [(j.name, j.interval, j.fn) for j in pending] == [
        ("heartbeat", INTERVAL, heartbeat),
        (cleanup.__qualname__, 5.0, cleanup),
    ]
    assert all(j._greenlet is None for j in pending)  # declared, not started

    scheduler = Scheduler()
    adopted = list(pending)
    scheduler.adopt(pending)
    assert pending == []
    assert jobs.app_jobs is pending
    assert scheduler.jobs == adopted
    scheduler.start()
    try:
        assert ran.wait(10)
    finally:
        assert scheduler.stop(time.monotonic() + 2) == []


def test_adopt_after_start_starts_the_adopted_jobs() -> None:
    scheduler = Scheduler()
    scheduler.start()
    ran = Event()
    pending = [PeriodicJob(INTERVAL, ran.set, name="adopted")]
    scheduler.adopt(pending)
    try:
        assert ran.wait(10)
        assert pending == []
    finally:
        assert scheduler.stop(time.monotonic() + 2) == []
