"""Periodic jobs that stop cleanly.

Each job runs in its own greenlet on a fixed schedule (start + k * interval,
so it does not drift), never overlapping itself: a run that overruns skips
the ticks it missed, and says so in the log. Stopping is event-driven: a job
sleeping until its next tick wakes at once and ends; a job in the middle of a
run finishes it, or is killed at the deadline and reported.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Optional

import gevent
from gevent.event import Event

log = logging.getLogger("gshutdown.jobs")

JobFn = Callable[[], Any]


class PeriodicJob:
    """``fn`` every ``interval`` seconds; see the module docstring."""

    def __init__(self, interval: float, fn: JobFn, *, name: Optional[str] = None) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive seconds, got {interval!r}")
        self.interval = float(interval)
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", None) or repr(fn)
        self.runs = 0
        self.failures = 0
        self.skipped_ticks = 0
        #: True while ``fn`` is running.
        self.running = False
        self._stopping = Event()
        self._greenlet: Optional[gevent.Greenlet] = None

    def start(self) -> None:
        """Start the schedule; the first run is one interval from now."""
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._loop)

    def _loop(self) -> None:
        started = time.monotonic()
        tick = 1
        while not self._stopping.wait(max(0.0, started + tick * self.interval - time.monotonic())):
            self.running = True
            try:
                self.fn()
            except Exception:
                self.failures += 1
                log.exception("job %s failed; it keeps its schedule", self.name)
            finally:
                self.running = False
                self.runs += 1
            # Next tick strictly in the future: missed ones are skipped, not queued.
            due = math.floor((time.monotonic() - started) / self.interval) + 1
            if due > tick + 1:
                missed = due - tick - 1
                self.skipped_ticks += missed
                log.warning("job %s overran its %g s interval; skipped %d tick(s)", self.name, self.interval, missed)
            tick = due

    def request_stop(self) -> None:
        """No new run starts; a sleeping job ends at once."""
        self._stopping.set()

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Stop, waiting up to ``timeout`` seconds for a running ``fn``.

        Returns:
            True if the job ended on its own; False if it was killed mid-run.
        """
        self.request_stop()
        glet = self._greenlet
        if glet is None or glet.dead:
            return True
        glet.join(timeout)
        if glet.dead:
            return True
        glet.kill(block=True, timeout=1.0)
        log.error("job %s still running at the deadline: killed", self.name)
        return False


class Scheduler:
    """A set of periodic jobs started and stopped together."""

    def __init__(self) -> None:
        self.jobs: list[PeriodicJob] = []
        self._started = False

    def every(self, interval: float, fn: JobFn, *, name: Optional[str] = None) -> PeriodicJob:
        """Run ``fn()`` every ``interval`` seconds (see ``PeriodicJob``)."""
        job = PeriodicJob(interval, fn, name=name)
        self.jobs.append(job)
        if self._started:
            job.start()
        return job

    def adopt(self, jobs: list[PeriodicJob]) -> None:
        """Take over ``jobs`` (emptying the list), e.g. ``gshutdown.server.jobs.app_jobs``."""
        self.jobs.extend(jobs)
        if self._started:
            for job in jobs:
                job.start()
        jobs.clear()

    def start(self) -> None:
        self._started = True
        for job in self.jobs:
            job.start()

    def stop(self, deadline: Optional[float] = None) -> list[str]:
        """Stop every job; ``deadline`` is a ``time.monotonic()`` value.

        Returns:
            The names of jobs killed because they were still running at it.
        """
        for job in self.jobs:
            job.request_stop()
        killed = []
        for job in self.jobs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not job.stop(left):
                killed.append(job.name)
        return killed


#: Jobs an application module declares with ``gshutdown.every``; the runner
#: moves them onto its server's scheduler after importing the application.
app_jobs: list[PeriodicJob] = []


def every(interval: float, *, name: Optional[str] = None) -> Callable[[JobFn], JobFn]:
    """Decorator for application modules: run the function every ``interval`` seconds.

    The job starts when ``gshutdown`` (CLI or ``gshutdown.run``) serves the
    application, and stops with its graceful shutdown.
    """

    def register(fn: JobFn) -> JobFn:
        app_jobs.append(PeriodicJob(interval, fn, name=name))
        return fn

    return register
