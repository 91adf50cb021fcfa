"""The master: worker processes, reload (SIGHUP) and upgrade (SIGUSR2).

The master binds the listeners, forks ``--workers`` processes that each run
the gevent server on the inherited sockets (``cli.serve``), and supervises
them. It never imports the application unless ``--preload`` says so, so a
reload picks up new code. It runs no gevent hub of its own: a plain loop over
``select`` on a self-pipe (signal wake-ups) and the workers' readiness pipes.

Signals (handlers only record; the loop acts):

=============  ============================================================
SIGTERM/INT    forward SIGTERM to every worker (each drains gracefully),
               wait for them, SIGKILL stragglers at the deadline
second one     forward SIGQUIT: workers close everything now
SIGQUIT        forward SIGQUIT
SIGHUP         reload: fork a new generation; once every new worker reports
               ready, retire the old generation gracefully. If the new one
               fails or is not ready in ``--ready-timeout``, it is stopped
               and the old keeps serving.
SIGUSR2        upgrade: re-exec this command line as a new master that
               inherits the listening sockets (``GSHUTDOWN_LISTEN_FDS``);
               once it reports ready over a pipe, this master drains and
               exits. A new master that fails or times out is killed and
               this one keeps serving. One upgrade at a time.
SIGCHLD        a worker that dies is replaced, with back-off
=============  ============================================================

Exit status: 0 when every worker drained cleanly, 3 when any was forced.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from gshutdown import pidfile, systemd
from gshutdown.addresses import bind_failure_reason, bind_unix, describe_address, describe_listener

log = logging.getLogger("gshutdown")

EXIT_OK = 0
EXIT_FORCED = 3
#: Environment variable naming inherited listening descriptors ("3,4").
LISTEN_FDS_ENV = "GSHUTDOWN_LISTEN_FDS"
#: Environment variable naming the pipe a new master reports readiness on.
READY_FD_ENV = "GSHUTDOWN_READY_FD"
#: Extra seconds past drain delay + graceful timeout before SIGKILL.
KILL_MARGIN = 5.0
#: Restart back-off bounds, in seconds.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 10.0
#: What the master handles; a forked worker resets them before it serves.
_MASTER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR2, signal.SIGCHLD)


def bind_listeners(binds: Sequence[Any], backlog: int, unix_socket_mode: Optional[int] = None) -> list[socket.socket]:
    """Listening sockets: inherited from an old master, from systemd, or bound now."""
    inherited = os.environ.pop(LISTEN_FDS_ENV, "")
    if inherited:
        return [socket.socket(fileno=int(fd)) for fd in inherited.split(",")]
    activated = systemd.listen_fds()
    if activated:
        return activated
    sockets = []
    try:
        for bind in binds:
            sockets.append(_bind(bind, backlog, unix_socket_mode))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind(bind: Any, backlog: int, unix_socket_mode: Optional[int]) -> socket.socket:
    try:
        if isinstance(bind, str):
            return bind_unix(bind[len("unix:") :], backlog, mode=unix_socket_mode)
        host, port = bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        return sock
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {describe_listener(bind)}: {bind_failure_reason(exc)}") from None


@dataclass
class Worker:
    pid: int
    generation: int
    ready_fd: int
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    retiring: bool = False


@dataclass
class _Upgrade:
    pid: int
    ready_fd: int
    deadline: float


class Master:
    """Supervises worker processes; see the module docstring."""

    def __init__(self, args: argparse.Namespace, listeners: list[socket.socket]) -> None:
        self.args = args
        self.listeners = listeners
        self.count: int = args.workers
        self.workers: dict[int, Worker] = {}
        self.generation = 0
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        self._reload_deadline: Optional[float] = None
        self._upgrade: Optional[_Upgrade] = None
        self._stopping = False
        self._forced = False
        self._handed_over = False
        self._backoff = BACKOFF_MIN
        self._restart_at: Optional[float] = None
        self._announced_ready = False
        self._stop_deadline: Optional[float] = None
        self._exit_status: Optional[int] = None

    # -- signals ---------------------------------------------------------------

    def _record(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)  # the loop acts; the wake-up fd wakes it

    def _install_signals(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        for signum in _MASTER_SIGNALS:
            signal.signal(signum, self._record)

    # -- main loop -------------------------------------------------------------

    def run(self) -> int:
        """Supervise until shut down; return the exit status."""
        if self.args.preload:
            from gshutdown.cli import UsageError, load_app

            if not self.args.no_monkey_patch:
                from gevent import monkey

                monkey.patch_all()
            try:
                load_app(self.args.app)
            except UsageError as exc:
                print(f"gshutdown: error: {exc}", file=sys.stderr)
                return 2
        self._install_signals()
        for sock in self.listeners:
            log.info("master %d listening on %s", os.getpid(), describe_address(sock.getsockname()))
        self._spawn_generation()
        try:
            while True:
                self._wait(self._next_timeout())
                self._reap()
                self._handle_signals()
                self._check_timers()
                if self._stopping and not self.workers:
                    break
        finally:
            self._cleanup()
        if self._exit_status is not None:
            return self._exit_status
        return EXIT_FORCED if self._forced else EXIT_OK

    def _next_timeout(self) -> Optional[float]:
        now = time.monotonic()
        deadlines = [d for d in (self._reload_deadline, self._restart_at, self._stop_deadline) if d]
        if self._upgrade is not None:
            deadlines.append(self._upgrade.deadline)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _wait(self, timeout: Optional[float]) -> None:
        fds = [self._wake_r] + [w.ready_fd for w in self.workers.values() if not w.ready]
        if self._upgrade is not None:
            fds.append(self._upgrade.ready_fd)
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return
        for fd in readable:
            if fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            elif self._upgrade is not None and fd == self._upgrade.ready_fd:
                self._upgrade_ready()
            else:
                self._worker_ready(fd)

    # -- workers ----------------------------------------------------------------

    def _spawn_generation(self) -> None:
        self.generation += 1
        for _ in range(self.count):
            self._spawn_worker()

    def _spawn_worker(self) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os.close(read_fd)
            self._become_worker(write_fd)
        os.close(write_fd)
        self.workers[pid] = Worker(pid, self.generation, read_fd)
        log.info("worker %d started (generation %d)", pid, self.generation)

    def _become_worker(self, ready_fd: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in _MASTER_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            os.close(self._wake_r)
            os.close(self._wake_w)
            for worker in self.workers.values():
                os.close(worker.ready_fd)
            if self._upgrade is not None:
                os.close(self._upgrade.ready_fd)
            from gshutdown.cli import serve

            def report_ready() -> None:
                os.write(ready_fd, b"R")
                os.close(ready_fd)

            code = serve(self.args, self.listeners, on_ready=report_ready)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker %d failed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)

    def _worker_ready(self, fd: int) -> None:
        worker = next((w for w in self.workers.values() if w.ready_fd == fd), None)
        if worker is None:
            return
        try:
            data = os.read(fd, 1)
        except OSError:
            data = b""
        if not data:
            return  # the worker died before ready; _reap handles it
        worker.ready = True
        self._backoff = BACKOFF_MIN
        log.info("worker %d ready (generation %d)", worker.pid, worker.generation)
        self._maybe_finish_reload()
        if not self._announced_ready and all(w.ready for w in self.workers.values()):
            self._announced_ready = True
            self._announce_ready()

    def _announce_ready(self) -> None:
        """Every first-generation worker serves: tell systemd, an old master, the pid file."""
        pidfile.write(self.args.pid)
        fd = os.environ.pop(READY_FD_ENV, "")
        if fd:
            try:
                os.write(int(fd), b"R")
                os.close(int(fd))
            except OSError:
                pass
        systemd.notify(f"READY=1\nMAINPID={os.getpid()}")
        log.info("master %d: %d worker(s) ready", os.getpid(), len(self.workers))

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if self._upgrade is not None and pid == self._upgrade.pid:
                log.error("upgrade failed: the new master %d exited with %d; still serving", pid, code)
                os.close(self._upgrade.ready_fd)
                self._upgrade = None
                continue
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            os.close(worker.ready_fd)
            if code == EXIT_FORCED or code < 0:
                # A worker that never served (an aborted reload's) forced nothing.
                self._forced = self._forced or ((self._stopping or worker.retiring) and worker.ready)
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
            if self._stopping or worker.retiring:
                log.info("worker %d exited with %s", pid, how)
            elif not self._announced_ready and not worker.ready and code in (1, 2):
                # The first generation cannot start (bad app, port): restarting
                # would only repeat it. Report it as the single-process CLI would.
                log.error("worker %d could not start (%s); stopping", pid, how)
                self._exit_status = code
                self._stop(signal.SIGTERM)
            elif worker.generation == self.generation and self._reload_deadline is not None:
                log.error("reload failed: new worker %d exited with %s before ready", pid, how)
                self._abort_reload()
            else:
                log.error("worker %d died with %s; restarting in %.1f s", pid, how, self._backoff)
                self._restart_at = self._restart_at or time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _check_timers(self) -> None:
        now = time.monotonic()
        if self._restart_at is not None and now >= self._restart_at and not self._stopping:
            self._restart_at = None
            missing = self.count - sum(
                1 for w in self.workers.values() if not w.retiring and w.generation == self.generation
            )
            for _ in range(missing):
                self._spawn_worker()
        if self._reload_deadline is not None and now >= self._reload_deadline:
            log.error(
                "reload failed: new workers not ready within %g s; old ones keep serving",
                self.args.ready_timeout,
            )
            self._abort_reload()
        if self._upgrade is not None and now >= self._upgrade.deadline:
            log.error(
                "upgrade failed: new master %d not ready within %g s; killed",
                self._upgrade.pid,
                self.args.ready_timeout,
            )
            _kill(self._upgrade.pid, signal.SIGKILL)
            # reaped (and forgotten) by _reap
            self._upgrade.deadline = float("inf")
        if self._stop_deadline is not None and now >= self._stop_deadline:
            for worker in self.workers.values():
                log.error("worker %d still running at the deadline: SIGKILL", worker.pid)
                _kill(worker.pid, signal.SIGKILL)
            self._forced = True
            self._stop_deadline = None

    # -- signals acted on --------------------------------------------------------

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGCHLD:
                continue  # _reap ran already
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self._stopping:
                    log.info("%s again: workers close everything now", signal.Signals(signum).name)
                    self._signal_workers(signal.SIGQUIT)
                    self._forced = True
                else:
                    self._stop(signal.SIGTERM)
            elif signum == signal.SIGQUIT:
                self._forced = self._forced or bool(self.workers)
                self._stop(signal.SIGQUIT)
            elif signum == signal.SIGHUP and not self._stopping:
                self._reload()
            elif signum == signal.SIGUSR2 and not self._stopping:
                self._start_upgrade()

    def _stop(self, how: int) -> None:
        log.info("master %d: %s, stopping %d worker(s)", os.getpid(), signal.Signals(how).name, len(self.workers))
        systemd.notify("STOPPING=1")
        self._stopping = True
        self._restart_at = None
        self._reload_deadline = None
        if self._upgrade is not None:
            _kill(self._upgrade.pid, signal.SIGTERM)
        self._signal_workers(how)
        self._stop_deadline = time.monotonic() + self.args.graceful_timeout + self.args.drain_delay + KILL_MARGIN

    def _signal_workers(self, signum: int) -> None:
        for worker in self.workers.values():
            _kill(worker.pid, signum)

    def _reload(self) -> None:
        if self._reload_deadline is not None:
            log.warning("SIGHUP: a reload is already in progress; ignored")
            return
        old = len(self.workers)
        log.info("SIGHUP: reloading: starting %d new worker(s) beside %d", self.count, old)
        self._reload_deadline = time.monotonic() + self.args.ready_timeout
        self._spawn_generation()

    def _maybe_finish_reload(self) -> None:
        if self._reload_deadline is None:
            return
        new = [w for w in self.workers.values() if w.generation == self.generation]
        if len(new) < self.count or not all(w.ready for w in new):
            return
        self._reload_deadline = None
        retiring = [w for w in self.workers.values() if w.generation < self.generation]
        for worker in retiring:
            worker.retiring = True
            _kill(worker.pid, signal.SIGTERM)
        log.info("reload done: generation %d serving; %d old worker(s) draining", self.generation, len(retiring))

    def _abort_reload(self) -> None:
        self._reload_deadline = None
        for worker in list(self.workers.values()):
            if worker.generation == self.generation:
                worker.retiring = True
                _kill(worker.pid, signal.SIGTERM)
        self.generation -= 1  # the old generation stays the current one
        # Replace old-generation workers that may have died meanwhile.
        if sum(1 for w in self.workers.values() if not w.retiring) < self.count:
            self._restart_at = time.monotonic() + self._backoff

    def _start_upgrade(self) -> None:
        if self._upgrade is not None:
            log.warning("SIGUSR2: an upgrade is already in progress; ignored")
            return
        read_fd, write_fd = os.pipe()
        fds = [sock.fileno() for sock in self.listeners]
        env = dict(os.environ)
        env[LISTEN_FDS_ENV] = ",".join(map(str, fds))
        env[READY_FD_ENV] = str(write_fd)
        argv = [sys.executable, "-m", "gshutdown", *sys.argv[1:]]
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                os.close(read_fd)
                for fd in (*fds, write_fd):
                    os.set_inheritable(fd, True)
                signal.set_wakeup_fd(-1)
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(1)
        os.close(write_fd)
        self._upgrade = _Upgrade(pid, read_fd, time.monotonic() + self.args.ready_timeout)
        log.info("SIGUSR2: upgrading: new master %d started", pid)

    def _upgrade_ready(self) -> None:
        upgrade = self._upgrade
        assert upgrade is not None
        try:
            data = os.read(upgrade.ready_fd, 1)
        except OSError:
            data = b""
        if not data:
            return  # it died; _reap reports it
        os.close(upgrade.ready_fd)
        self._upgrade = None
        self._handed_over = True
        log.info("upgrade: new master %d is serving; this master drains and exits", upgrade.pid)
        self._stop(signal.SIGTERM)

    def _cleanup(self) -> None:
        signal.set_wakeup_fd(-1)
        for sock in self.listeners:
            if not self._handed_over and sock.family == socket.AF_UNIX:
                try:
                    os.unlink(sock.getsockname())
                except OSError:
                    pass
            sock.close()
        if not self._handed_over:
            pidfile.remove(self.args.pid)
        log.info("master %d: exit%s", os.getpid(), " (forced)" if self._forced else "")


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
