"""The master: worker processes, their supervision, reload and upgrade.

(Over 500 lines: one ``Master`` whose every step reads the same state, the
workers, their generations and the timers of a reload or an upgrade; binding
the listeners is ``listeners``, a worker's side of the pipes ``worker_link``.)

The master binds the listeners, forks ``--workers`` processes that each run
the runner on the inherited sockets (``serve.serve`` in the worker role), and
supervises them. It never imports the application unless ``--preload`` says
so, so a reload picks up new code. It runs no gevent hub of its own: a plain
loop over ``select`` on a self-pipe (signal wake-ups) and the workers' status
pipes (``worker_link``).

Signals (handlers only record; the loop acts). A signal sent to the whole
process group reaches the workers too; they wait for the master's order
(``worker_link``), so the group and the master alone mean the same.

=============  ============================================================
SIGTERM/INT    stop: close the master's copies of the listeners, then order
               every worker to drain (each accepts what is queued, closes
               its listeners and finishes its requests), so new connects
               are refused rather than accepted by a socket nobody serves;
               the last worker to drain seals the listeners first
               (``worker_link``'s stop pipe); SIGKILL stragglers at the
               deadline
second one     SIGQUIT to every worker: close everything now
SIGQUIT        SIGQUIT to every worker
SIGHUP         reload: read the config file again (as gunicorn does;
               what only a new master could change is kept, with a
               warning; a file that cannot be used changes nothing), then
               fork a new generation with those settings; once every new
               worker reports ready, retire the old generation gracefully.
               If the new one fails or is not ready in ``--ready-timeout``,
               it is stopped and the old keeps serving.
SIGUSR2        upgrade: re-exec this command line as a new master that
               inherits the listening sockets (``GSHUTDOWN_LISTEN_FDS``);
               once it reports ready over a pipe, this master drains and
               exits. A new master that fails or times out is killed and
               this one keeps serving. One upgrade at a time.
SIGUSR1        reopen the log files, here and in every worker
SIGTTIN/TTOU   one worker more / one fewer (the one removed drains)
SIGCHLD        a worker that dies is replaced, with back-off
=============  ============================================================

Workers are also replaced when they ask (``--max-requests``: the replacement
starts first, and only once it is ready does the old worker drain) and when
their heartbeat stops (``--timeout``: the event loop is blocked; its stack is
dumped to the log, then it is killed).

Exit status: 0 when every worker drained cleanly, 3 when any was forced.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import gevent
from gevent import monkey

from gshutdown.config.addresses import describe_address
from gshutdown.config.settings import SettingError, Settings
from gshutdown.process import admin, logs, pidfile, proctitle, serve, setup, systemd, worker_link
from gshutdown.process.app_loader import AppNotLoadable, load_app
from gshutdown.process.exit_status import ExitStatus, fail
from gshutdown.process.gunicorn_hooks import HookWorker, ServerHooks
from gshutdown.process.listeners import LISTEN_FDS_ENV, bind_admin, bind_listeners, own_listener
from gshutdown.process.metrics import MasterMetrics, MetricsUnavailable
from gshutdown.process.worker_link import (
    DRAIN_SIGNAL,
    LAST_STOP_TOKEN,
    STACK_DUMP_SIGNAL,
    STOP_TOKEN,
    MessageKind,
    WorkerLink,
)

log = logging.getLogger("gshutdown")

#: Environment variable naming the pipe a new master reports readiness on.
READY_FD_ENV = "GSHUTDOWN_READY_FD"
#: Extra seconds past drain delay + graceful timeout before SIGKILL.
KILL_MARGIN = 5.0
#: Restart back-off bounds, in seconds.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 10.0
#: Seconds between the stack-dump signal to a stuck worker and its SIGKILL.
STACK_DUMP_GRACE = 0.5
#: Settings a SIGHUP cannot change: the sockets this master holds, what it
#: did to its own process at start, and the app it preloaded. They take a
#: new master (an upgrade, SIGUSR2, reads the config file afresh).
_FIXED_ON_RELOAD = (
    "bind",
    "backlog",
    "reuse_port",
    "unix_socket_mode",
    "admin_bind",
    "metrics_path",
    "readiness_path",
    "user",
    "group",
    "chdir",
    "umask",
    "pythonpath",
    "pid",
    "preload",
    "no_monkey_patch",
    "capture_output",
    "reload",
    "reload_extra_files",
)
#: What the master handles; a forked worker resets them before it serves.
_MASTER_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)
#: Of those, the ones a booting worker leaves to their default action.
_WORKER_DEFAULTS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD)

# The master runs no gevent hub, but the app it imports for --preload (or a
# config file) may monkey-patch this process, and gevent's versions of these
# hand their work to a hub: its fork watches each child with libev, whose
# SIGCHLD handler then replaces the master's; its signal.signal keeps a
# SIGCHLD handler for the hub to call; its close defers the close to the hub,
# so the master would hold every status pipe's write end and never see a
# worker's EOF. Nothing would wake the loop for a worker that exits: it would
# stay a zombie, unreplaced. So the master calls the standard library's, which
# get_original gives whether the patching came before this import or after.
_fork, _waitpid, _close = monkey.get_original("os", ["fork", "waitpid", "close"])
_set_handler, _set_wakeup_fd = monkey.get_original("signal", ["signal", "set_wakeup_fd"])
_select = monkey.get_original("select", "select")


def main(settings: Settings, reread: Optional[Callable[[], Settings]] = None) -> ExitStatus:
    """Bind the listeners and supervise ``settings.workers`` workers; the exit status.

    ``reread``, when given, reads the settings again (the config file) for
    SIGHUP; it raises ``SettingError`` when they cannot be used.
    """
    launch_directory = setup.working_directory()
    environ_at_start = dict(os.environ)
    failed = setup.prepare_process(settings) or setup.configure_logging(settings)
    hooks = ServerHooks(settings)
    failed = failed or hooks.starting()
    if failed is not None:
        return failed
    unusable = admin.usage_error(settings)
    if unusable is not None:
        return fail(unusable, ExitStatus.USAGE)
    # Read before bind_listeners takes them from the environment: listeners an
    # old master or systemd passed on are held by them too.
    passed_on = bool(os.environ.get(LISTEN_FDS_ENV)) or os.environ.get("LISTEN_PID") == str(os.getpid())
    try:
        listeners = bind_listeners(
            settings.bind, settings.backlog, reuse_port=settings.reuse_port, unix_socket_mode=settings.unix_socket_mode
        )
    except OSError as exc:
        # _bind's message already names the address and the reason: without "[Errno N]".
        return fail(exc.strerror or str(exc), ExitStatus.START_FAILED)
    try:
        admin_listener = bind_admin(settings.admin_bind, settings.backlog, settings.unix_socket_mode)
    except OSError as exc:
        for sock in listeners:
            sock.close()
        return fail(exc.strerror or str(exc), ExitStatus.START_FAILED)
    failed = setup.drop_privileges(settings.user, settings.group)
    if failed is not None:
        return failed
    try:
        # After dropping privileges: the workers must be able to write there.
        with MasterMetrics.started(settings.metrics_path, settings.readiness_path or None) as metrics:
            master = Master(
                settings,
                listeners,
                metrics,
                admin_listener,
                hooks,
                listeners_bound_here=not passed_on,
                reread=reread,
                launch_directory=launch_directory,
                environ_at_start=environ_at_start,
            )
            return master.run()
    except MetricsUnavailable as exc:
        return fail(str(exc), ExitStatus.USAGE)


def signame(signum: int) -> str:
    """``SIGTERM``, ``SIGRTMIN+3``, or the number: any signal a process can get."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        rtmin = getattr(signal, "SIGRTMIN", None)
        if rtmin is not None and rtmin < signum <= getattr(signal, "SIGRTMAX", rtmin):
            return f"SIGRTMIN+{signum - rtmin}"
        return f"signal {signum}"


@dataclass
class Worker:
    pid: int
    generation: int
    #: The read end of this worker's status pipe.
    status_fd: int
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    retiring: bool = False
    #: It asked to be replaced (``--max-requests``); it serves until its replacement is ready.
    recycle_pending: bool = False
    #: When its last heartbeat (or any message) arrived.
    last_beat: float = field(default_factory=time.monotonic)
    #: Live connections at its last heartbeat.
    connections: int = 0
    #: Its heartbeat stopped (``--timeout``): it gets SIGKILL at ``kill_at``.
    stuck: bool = False
    kill_at: Optional[float] = None
    #: The status pipe is still open (its EOF comes just before the exit).
    status_open: bool = True
    buffer: bytes = b""


@dataclass
class _Upgrade:
    pid: int
    ready_fd: int
    deadline: float


class Master:
    """Supervises worker processes; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        listeners: list[socket.socket],
        metrics: Optional[MasterMetrics] = None,
        admin_listener: Optional[socket.socket] = None,
        hooks: Optional[ServerHooks] = None,
        *,
        listeners_bound_here: bool = False,
        reread: Optional[Callable[[], Settings]] = None,
        launch_directory: Optional[str] = None,
        environ_at_start: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.settings = settings
        #: Reads the settings again on SIGHUP (None: there is no config file to re-read).
        self.reread = reread
        #: Where the command was started, by the path it was entered through
        #: (``setup.working_directory``): a new master (SIGUSR2) starts there.
        self.launch_directory = launch_directory or os.getcwd()
        #: The directory the workers start in (``--chdir`` from the launch
        #: directory), entered again on SIGHUP: through a deploy's switched
        #: symlink, the new workers import the new release, as gunicorn's.
        self.work_directory = os.path.normpath(os.path.join(self.launch_directory, settings.chdir or ""))
        #: The environment before ``--env`` (raw_env): a name the config file
        #: no longer sets gets its value from here again, as in gunicorn.
        self.environ_at_start: Mapping[str, str] = dict(os.environ if environ_at_start is None else environ_at_start)
        #: gunicorn's server hooks (``gunicorn_hooks``).
        self.hooks = hooks or ServerHooks(settings)
        self.listeners = listeners
        #: ``--admin-bind``'s socket: every worker serves it (``process.admin``).
        self.admin_listener = admin_listener
        #: Set as this master stops (not as it hands over to a new one): the
        #: workers' admin readiness answers 503 from then on.
        self.stop_flag = admin.StopFlag()
        #: Nobody but this master and its workers holds the listeners (none came
        #: from systemd or an old master): when it stops, the workers may seal them.
        self.listeners_bound_here = listeners_bound_here
        self.metrics = metrics or MasterMetrics()
        self.count: int = settings.workers
        self.workers: dict[int, Worker] = {}
        self.generation = 0
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        # Only the master ever holds the write end: workers see EOF when it dies.
        self._liveness_r, self._liveness_w = os.pipe()
        # The stop pipe (worker_link): only the master writes; the workers take the tokens.
        self._stop_r, self._stop_w = os.pipe()
        os.set_blocking(self._stop_w, False)
        self._reload_deadline: Optional[float] = None
        self._upgrade: Optional[_Upgrade] = None
        self._stopping = False
        self._forced = False
        self._handed_over = False
        self._backoff = BACKOFF_MIN
        self._restart_at: Optional[float] = None
        self._announced_ready = False
        self._stop_deadline: Optional[float] = None
        self._exit_status: Optional[ExitStatus] = None

    # -- signals ---------------------------------------------------------------

    def _record(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)  # the loop acts; the wake-up fd wakes it

    def _install_signals(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        _set_wakeup_fd(self._wake_w)
        for signum in _MASTER_SIGNALS:
            _set_handler(signum, self._record)

    # -- main loop -------------------------------------------------------------

    def run(self) -> ExitStatus:
        """Supervise until shut down; return the exit status."""
        if self.settings.preload:
            setup.monkey_patch(self.settings)
            try:
                load_app(self.settings.app)
            except AppNotLoadable as exc:
                return fail(str(exc), ExitStatus.USAGE)
        proctitle.set_title(self.settings.proc_name, "master")
        self._install_signals()
        if self.settings.reload:
            from gshutdown.process.reload import watch_for_master

            watch_for_master(self.settings)
        for sock in self.listeners:
            address = describe_address(sock.getsockname(), tls=bool(self.settings.certfile))
            log.info("master %d listening on %s", os.getpid(), address)
        if self.admin_listener is not None:
            address = describe_address(self.admin_listener.getsockname())
            log.info("master %d: readiness and metrics on %s (--admin-bind)", os.getpid(), address)
        failed = self.hooks.ready()
        if failed is not None:
            self._close_listeners()
            return failed
        # Out of the collector's sight before the forks: a worker's collections
        # then never write to the pages it shares with this master (--preload).
        gc.freeze()
        self._spawn_generation()
        try:
            while True:
                self._wait(self._next_timeout())
                # Signals first: a worker that exits because the process group
                # got SIGTERM is not a worker that died, if the master got it too.
                self._handle_signals()
                self._reap()
                self._check_timers()
                if self._stopping and not self.workers:
                    break
        finally:
            self._cleanup()
            self.hooks.exiting()
        if self._exit_status is not None:
            return self._exit_status
        return ExitStatus.FORCED if self._forced else ExitStatus.OK

    def _next_timeout(self) -> Optional[float]:
        now = time.monotonic()
        deadlines = [d for d in (self._reload_deadline, self._restart_at, self._stop_deadline) if d]
        if self._upgrade is not None and self._upgrade.deadline != float("inf"):
            deadlines.append(self._upgrade.deadline)
        for worker in self.workers.values():
            if worker.kill_at is not None:
                deadlines.append(worker.kill_at)
            elif self.settings.timeout and worker.ready and not worker.stuck:
                deadlines.append(worker.last_beat + self.settings.timeout)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _wait(self, timeout: Optional[float]) -> None:
        by_fd = {w.status_fd: w for w in self.workers.values() if w.status_open}
        fds = [self._wake_r, *by_fd]
        if self._upgrade is not None:
            fds.append(self._upgrade.ready_fd)
        try:
            readable, _, _ = _select(fds, [], [], timeout)
        except InterruptedError:
            return
        for fd in readable:
            if fd == self._wake_r:
                _drain_pipe(self._wake_r)
            elif self._upgrade is not None and fd == self._upgrade.ready_fd:
                self._upgrade_ready()
            else:
                self._read_status(by_fd[fd])

    # -- workers ----------------------------------------------------------------

    def _spawn_generation(self) -> None:
        self.generation += 1
        for _ in range(self.count):
            self._spawn_worker()

    def _spawn_worker(self) -> None:
        read_fd, write_fd = os.pipe()
        hook_worker = self.hooks.before_fork()
        pid = _fork()
        if pid == 0:  # pragma: no cover - runs in the child
            _close(read_fd)
            self._become_worker(write_fd, hook_worker)
        self.hooks.forked(pid, hook_worker)
        _close(write_fd)
        os.set_blocking(read_fd, False)
        self.workers[pid] = Worker(pid, self.generation, read_fd)
        log.info("worker %d started (generation %d)", pid, self.generation)

    def _become_worker(self, status_fd: int, hook_worker: HookWorker) -> None:
        code = 1
        try:
            # A hub the app made while the master imported it (--preload) is
            # this process's now: gevent's fork would re-initialise it, the
            # master's plain one does not.
            gevent.reinit()
            # A worker runs a hub: gevent's signal functions here, if patched. Its
            # SIGCHLD reset also tells the loop to take SIGCHLD back when a child
            # watcher needs it (the app's subprocess calls); the plain one would not.
            signal.set_wakeup_fd(-1)
            for signum in _MASTER_SIGNALS:
                # Until the runner handles them: what the master acts on is
                # nothing to a worker, and SIGTTIN/SIGTTOU would suspend it.
                signal.signal(signum, signal.SIG_DFL if signum in _WORKER_DEFAULTS else signal.SIG_IGN)
            for fd in (self._wake_r, self._wake_w, self._liveness_w, self._stop_w):
                _close(fd)
            for worker in self.workers.values():
                _close(worker.status_fd)
            if self._upgrade is not None:
                _close(self._upgrade.ready_fd)
            self.hooks.became(hook_worker)  # post_fork: the app is not imported yet
            self.hooks.install_stack_dump(STACK_DUMP_SIGNAL)  # then worker_abort
            heartbeat = min(self.settings.timeout / 4, 1.0) if self.settings.timeout else None
            link = WorkerLink(status_fd, self._liveness_r, heartbeat=heartbeat, stop_fd=self._stop_r)
            listeners = self.listeners
            if self.settings.reuse_port:
                listeners = [own_listener(sock) for sock in listeners]
            code = serve.serve(
                self.settings,
                listeners,
                link=link,
                admin_listener=self.admin_listener,
                master_stop=self.stop_flag,
                hooks=self.hooks,
            )
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker %d failed", os.getpid())
        finally:
            self.hooks.worker_exited()
            logging.shutdown()
            os._exit(code)

    def _read_status(self, worker: Worker) -> None:
        try:
            data = os.read(worker.status_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            worker.status_open = False  # it is exiting; _reap deals with it
            return
        messages, worker.buffer = worker_link.parse(worker.buffer + data)
        worker.last_beat = time.monotonic()
        for message in messages:
            if message.kind is MessageKind.READY:
                self._worker_ready(worker)
            elif message.kind is MessageKind.BEAT:
                worker.connections = message.connections
            elif message.kind is MessageKind.RECYCLE:
                self._recycle(worker)

    def _worker_ready(self, worker: Worker) -> None:
        worker.ready = True
        self._backoff = BACKOFF_MIN
        log.info("worker %d ready (generation %d)", worker.pid, worker.generation)
        self._maybe_finish_reload()
        self._retire_recycled()
        if not self._announced_ready and all(w.ready for w in self.workers.values()):
            self._announced_ready = True
            self._announce_ready()

    def _announce_ready(self) -> None:
        """Every first-generation worker serves: tell systemd, an old master, the pid file."""
        pidfile.write(self.settings.pid)
        fd = os.environ.pop(READY_FD_ENV, "")
        if fd:
            try:
                os.write(int(fd), b"R")
                _close(int(fd))
            except OSError:
                pass
        systemd.notify(f"READY=1\nMAINPID={os.getpid()}")
        log.info("master %d: %d worker(s) ready", os.getpid(), len(self.workers))

    def _serving(self) -> list[Worker]:
        """Workers of the current generation that are meant to go on serving."""
        return [w for w in self.workers.values() if w.generation == self.generation and not w.retiring]

    def _retire(self, worker: Worker, why: Optional[str] = None) -> None:
        """Order ``worker`` to drain and exit; ``why`` is logged (callers that log a batch give none)."""
        worker.retiring = True
        if why is not None:
            log.info("worker %d: %s; it drains", worker.pid, why)
        _kill(worker.pid, DRAIN_SIGNAL)

    def _recycle(self, worker: Worker) -> None:
        if self._stopping or worker.retiring or worker.recycle_pending:
            return
        if self._reload_deadline is not None:
            log.info("worker %d reached --max-requests during a reload, which replaces it anyway", worker.pid)
            return
        worker.recycle_pending = True
        self.metrics.worker_restarted("max-requests")
        log.info("worker %d reached --max-requests: starting its replacement", worker.pid)
        self._spawn_worker()

    def _retire_recycled(self) -> None:
        # A replacement is ready: the worker it replaces drains only now, so
        # the listeners always have as many ready workers as --workers says.
        while True:
            serving = self._serving()
            ready = sum(1 for w in serving if w.ready and not w.recycle_pending)
            pending = sorted((w for w in serving if w.recycle_pending), key=lambda w: w.started)
            if not pending or ready + len(pending) <= self.count:
                return
            self._retire(pending[0], "replaced after --max-requests")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = _waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if self._upgrade is not None and pid == self._upgrade.pid:
                log.error("upgrade failed: the new master %d exited with %d; still serving", pid, code)
                _close(self._upgrade.ready_fd)
                self._upgrade = None
                continue
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self.hooks.reaped(pid)  # child_exit
            _close(worker.status_fd)
            self.metrics.worker_exited(pid)
            if code == ExitStatus.FORCED or code < 0:
                # A worker that never served (an aborted reload's) forced nothing.
                self._forced = self._forced or ((self._stopping or worker.retiring) and worker.ready)
            how = f"signal {signame(-code)}" if code < 0 else f"status {code}"
            if self._stopping or worker.retiring:
                log.info("worker %d exited with %s", pid, how)
            elif not self._announced_ready and not worker.ready and code in (ExitStatus.START_FAILED, ExitStatus.USAGE):
                # The first generation cannot start (bad app, port): restarting
                # would only repeat it. Report it as the single-process CLI would.
                log.error("worker %d could not start (%s); stopping", pid, how)
                self._exit_status = ExitStatus(code)
                self._stop(DRAIN_SIGNAL, "the first workers cannot start")
            elif worker.generation == self.generation and self._reload_deadline is not None:
                log.error("reload failed: new worker %d exited with %s before ready", pid, how)
                self._abort_reload()
            else:
                log.error("worker %d died with %s; restarting in %.1f s", pid, how, self._backoff)
                self.metrics.worker_restarted("died")
                self._restart_at = self._restart_at or time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _check_timers(self) -> None:
        now = time.monotonic()
        if self._restart_at is not None and now >= self._restart_at and not self._stopping:
            self._restart_at = None
            missing = self.count - sum(1 for w in self._serving() if not w.recycle_pending)
            for _ in range(missing):
                self._spawn_worker()
        if self._reload_deadline is not None and now >= self._reload_deadline:
            log.error(
                "reload failed: new workers not ready within %g s; old ones keep serving",
                self.settings.ready_timeout,
            )
            self._abort_reload()
        if self._upgrade is not None and now >= self._upgrade.deadline:
            log.error(
                "upgrade failed: new master %d not ready within %g s; killed",
                self._upgrade.pid,
                self.settings.ready_timeout,
            )
            _kill(self._upgrade.pid, signal.SIGKILL)
            # reaped (and forgotten) by _reap
            self._upgrade.deadline = float("inf")
        self._check_heartbeats(now)
        if self._stop_deadline is not None and now >= self._stop_deadline:
            for worker in self.workers.values():
                log.error("worker %d still running at the deadline: SIGKILL", worker.pid)
                _kill(worker.pid, signal.SIGKILL)
            self._forced = True
            self._stop_deadline = None

    def _check_heartbeats(self, now: float) -> None:
        timeout = self.settings.timeout
        for worker in list(self.workers.values()):
            if worker.kill_at is not None:
                if now >= worker.kill_at:
                    worker.kill_at = None  # once; _reap forgets it
                    _kill(worker.pid, signal.SIGKILL)
            elif timeout and worker.ready and not worker.stuck and now - worker.last_beat > timeout:
                log.error(
                    "worker %d: no heartbeat for %.1f s (--timeout %g): its event loop is blocked; "
                    "its stack follows; killing it and forcing its connections (%d at its last heartbeat)",
                    worker.pid,
                    now - worker.last_beat,
                    timeout,
                    worker.connections,
                )
                _kill(worker.pid, STACK_DUMP_SIGNAL)
                worker.stuck = True
                worker.kill_at = now + STACK_DUMP_GRACE
                was_serving = not worker.retiring
                worker.retiring = True
                if was_serving and not self._stopping:
                    self.metrics.worker_restarted("timeout")
                    self._spawn_worker()

    # -- signals acted on --------------------------------------------------------

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGCHLD:
                continue  # _reap runs next
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self._stopping:
                    log.info("%s again: workers close everything now", signame(signum))
                    self._signal_workers(signal.SIGQUIT)
                    self._forced = True
                else:
                    self._stop(DRAIN_SIGNAL, signame(signum))
            elif signum == signal.SIGQUIT:
                self._forced = self._forced or bool(self.workers)
                self._stop(signal.SIGQUIT, "SIGQUIT")
            elif signum == signal.SIGUSR1:
                log.info("SIGUSR1: reopened %d log file(s); telling the workers", logs.reopen())
                self._signal_workers(signal.SIGUSR1)
            elif self._stopping:
                log.info("%s ignored: stopping", signame(signum))
            elif signum == signal.SIGHUP:
                self._reload()
            elif signum == signal.SIGUSR2:
                self._start_upgrade()
            elif signum == signal.SIGTTIN:
                self.count += 1
                log.info("SIGTTIN: %d worker(s) now", self.count)
                self.hooks.workers_changed(self.count, self.count - 1)
                self._spawn_worker()
            elif signum == signal.SIGTTOU:
                self._remove_worker()

    def _remove_worker(self) -> None:
        if self.count <= 1:
            log.warning("SIGTTOU ignored: one worker is the minimum")
            return
        self.count -= 1
        log.info("SIGTTOU: %d worker(s) now", self.count)
        self.hooks.workers_changed(self.count, self.count + 1)
        serving = self._serving()
        if len(serving) > self.count:
            # The oldest goes: it has had its share of requests (and leaks).
            self._retire(min(serving, key=lambda w: w.started), "removed by SIGTTOU")

    def _stop(self, order: int, why: str) -> None:
        """Stop every worker: ``order`` is ``DRAIN_SIGNAL`` (gracefully) or ``SIGQUIT`` (now)."""
        log.info("master %d: %s: stopping %d worker(s)", os.getpid(), why, len(self.workers))
        systemd.notify("STOPPING=1")
        if not self._handed_over:
            self.stop_flag.set()  # before the order: no worker drains while its probe still says 200
        self._stopping = True
        self._restart_at = None
        self._reload_deadline = None
        if self._upgrade is not None:
            _kill(self._upgrade.pid, signal.SIGTERM)
        # First the master's copies of the listeners, then the order: a worker
        # drains only once nobody but the workers holds a listener, so the last
        # to close one accepts what is queued on it first (see worker_link).
        self._close_listeners()
        if order == DRAIN_SIGNAL and self.listeners_bound_here and not self._handed_over:
            # Nobody else serves the listeners now (a new master would): the
            # last worker to drain may seal them. A token for each worker that
            # serves: a booting one dies of the order (or of the group's
            # SIGTERM) without taking one, and may hold a listener for a
            # moment longer than those that serve, which the seal makes safe.
            serving = sum(1 for w in self.workers.values() if w.ready and not w.retiring)
            try:
                os.write(self._stop_w, (STOP_TOKEN * (serving - 1) + LAST_STOP_TOKEN) if serving else b"")
            except OSError:
                pass  # no tokens: the workers close the listeners unsealed, as before
        self._signal_workers(order)
        self._stop_deadline = (
            time.monotonic() + self.settings.graceful_timeout + self.settings.drain_delay + KILL_MARGIN
        )

    def _signal_workers(self, signum: int) -> None:
        for worker in self.workers.values():
            _kill(worker.pid, signum)

    def _reload(self) -> None:
        if self._reload_deadline is not None:
            log.warning("SIGHUP: a reload is already in progress; ignored")
            return
        # Entered again before the file is read, as gunicorn does (the file may
        # read files beside it); left again if the reload goes no further, so
        # that a worker replaced meanwhile starts where the others did.
        try:
            previous = os.open(os.curdir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            previous = None  # nothing to go back to; the work directory it is
        try:
            try:
                os.chdir(self.work_directory)
            except OSError as exc:
                log.error("SIGHUP: cannot enter %s (%s), so nothing is reloaded", self.work_directory, exc.strerror)
                return
            if self.reread is not None and not self._reread_settings(self.reread):
                if previous is not None:
                    os.fchdir(previous)
                return
        finally:
            if previous is not None:
                _close(previous)
        old = len(self.workers)
        log.info("SIGHUP: reloading: starting %d new worker(s) beside %d", self.count, old)
        self.hooks.reloading()
        self._reload_deadline = time.monotonic() + self.settings.ready_timeout
        self._spawn_generation()

    def _reread_settings(self, reread: Callable[[], Settings]) -> bool:
        """Take the config file's settings as they are now; False (logged) when it cannot be used.

        They apply to every worker started from now on, including after a
        reload that fails, as the file now says; the old workers keep theirs.
        """
        old = self.settings
        try:
            new = reread()
        except SettingError as exc:
            log.error("SIGHUP: the config file cannot be used, so nothing is reloaded: %s", exc)
            return False
        except Exception as exc:  # not the file's: the master serves on whatever it was
            log.exception("SIGHUP: reading the settings again failed, so nothing is reloaded: %s", exc)
            return False
        kept = {name: getattr(old, name) for name in _FIXED_ON_RELOAD if getattr(new, name) != getattr(old, name)}
        if old.preload and new.app != old.app:
            kept["app"] = old.app
        if new.workers < 1:
            kept["workers"] = old.workers  # one process serving alone takes a restart
        new = new.replace(**kept)
        if any(getattr(new, name) != getattr(old, name) for name in setup.LOGGING_SETTINGS):
            # Said where the log went so far: whoever reads it learns where it goes next.
            log.info("SIGHUP: config file read again; logging as it now says (error log: %s)", new.error_log or "-")
            try:
                setup.apply_logging(new)
            except ValueError as exc:
                try:
                    setup.apply_logging(old)
                except ValueError:
                    logs.configure(old.log_level)  # the old files are gone too: stderr, rather than nothing
                log.error("SIGHUP: the config file cannot be used, so nothing is reloaded: %s", exc)
                return False
        else:
            log.info("SIGHUP: config file read again")
        setup.log_warnings(new)
        for name in kept:
            log.warning("SIGHUP: %s changed, but only a new master can change it (an upgrade, SIGUSR2): kept", name)
        setup.set_environment(old.raw_env, new.raw_env, self.environ_at_start)
        self.settings = new
        self.hooks.reconfigure(new)
        if new.workers != old.workers:
            # A count changed by SIGTTIN/TTOU stays unless the file changes it, as it was set.
            previous, self.count = self.count, new.workers
            log.info("SIGHUP: %d worker(s) now", self.count)
            self.hooks.workers_changed(self.count, previous)
        if new.proc_name != old.proc_name:
            proctitle.set_title(new.proc_name, "master")
        return True

    def _maybe_finish_reload(self) -> None:
        if self._reload_deadline is None:
            return
        new = [w for w in self.workers.values() if w.generation == self.generation]
        if len(new) < self.count or not all(w.ready for w in new):
            return
        self._reload_deadline = None
        retiring = [w for w in self.workers.values() if w.generation < self.generation and not w.retiring]
        for worker in retiring:
            self._retire(worker)
        self.metrics.worker_restarted("reload", len(retiring))
        log.info("reload done: generation %d serving; %d old worker(s) draining", self.generation, len(retiring))

    def _abort_reload(self) -> None:
        self._reload_deadline = None
        for worker in list(self.workers.values()):
            if worker.generation == self.generation:
                self._retire(worker)
        self.generation -= 1  # the old generation stays the current one
        # Replace old-generation workers that may have died meanwhile.
        if len(self._serving()) < self.count:
            self._restart_at = time.monotonic() + self._backoff

    def _start_upgrade(self) -> None:
        if self._upgrade is not None:
            log.warning("SIGUSR2: an upgrade is already in progress; ignored")
            return
        read_fd, write_fd = os.pipe()
        fds = [sock.fileno() for sock in self.listeners]
        env = self.metrics.for_new_master(dict(os.environ))
        env[LISTEN_FDS_ENV] = ",".join(map(str, fds))
        if self.admin_listener is not None:
            env[admin.ADMIN_FD_ENV] = str(self.admin_listener.fileno())
            fds.append(self.admin_listener.fileno())
        env[READY_FD_ENV] = str(write_fd)
        # The command line means what it meant where it was started (a relative
        # --chdir, -c, APP path), and through a switched symlink the new release.
        env["PWD"] = self.launch_directory
        argv = [sys.executable, "-m", "gshutdown", *sys.argv[1:]]
        pid = _fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                try:
                    os.chdir(self.launch_directory)
                except OSError as exc:
                    log.error("SIGUSR2: the new master cannot enter %s: %s", self.launch_directory, exc.strerror)
                    raise
                _close(read_fd)
                for fd in (*fds, write_fd):
                    os.set_inheritable(fd, True)
                _set_wakeup_fd(-1)
                self.hooks.before_exec()
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(1)
        _close(write_fd)
        self._upgrade = _Upgrade(pid, read_fd, time.monotonic() + self.settings.ready_timeout)
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
        _close(upgrade.ready_fd)
        self._upgrade = None
        self._handed_over = True
        log.info("upgrade: new master %d is serving; this master drains and exits", upgrade.pid)
        self._stop(DRAIN_SIGNAL, "upgrade handed over")

    def _close_listeners(self) -> None:
        # The admin listener too: the workers' copies keep it answering until the last one exits.
        admin_listener = [self.admin_listener] if self.admin_listener is not None else []
        for sock in (*self.listeners, *admin_listener):
            if sock.fileno() == -1:
                continue
            if not self._handed_over and sock.family == socket.AF_UNIX:
                try:
                    os.unlink(sock.getsockname())
                except OSError:
                    pass
            sock.close()

    def _cleanup(self) -> None:
        _set_wakeup_fd(-1)
        self._close_listeners()
        for fd in (self._liveness_w, self._stop_r, self._stop_w):
            _close(fd)
        if not self._handed_over:
            pidfile.remove(self.settings.pid)
        log.info("master %d: exit%s", os.getpid(), " (forced)" if self._forced else "")


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
