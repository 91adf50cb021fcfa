"""Real ``gshutdown`` processes for the lifecycle tests.

Each ``GProcess`` is a child started with ``start_new_session=True`` that
writes its stdout and stderr to one log file; tests wait on that log (or on a
port) with a bound, signal the child by its own pid, and kill it in a
``finally`` (the context manager does it). Clients here are blocking stdlib
sockets with timeouts: the test process is not monkey-patched.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import pytest

from tests import helpers

#: The repository root: children run here so ``examples.*`` and ``tests.apps.*`` import.
ROOT = Path(__file__).resolve().parents[1]
#: Generous: two cores shared with other test runs.
STARTUP_TIMEOUT = 20.0
EXIT_TIMEOUT = 20.0
#: Reads from and waits on a child process get twice the in-process helpers' 5 s.
PROCESS_IO_TIMEOUT = 10.0

PROBE = "tests.apps.probe:app"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (bound to ``host``, then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def child_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The test's environment without anything that would steer a gshutdown child."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GSHUTDOWN_", "LISTEN_"))
        and key not in ("NOTIFY_SOCKET", "PROMETHEUS_MULTIPROC_DIR", "GUNICORN_CMD_ARGS")
    }
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def gshutdown_argv(*args: str) -> list[str]:
    """``python -m gshutdown ARGS`` with this interpreter."""
    return [sys.executable, "-m", "gshutdown", *args]


def run_cli(
    *args: str, env: Optional[dict[str, str]] = None, cwd: Union[str, Path] = ROOT, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion (for usage errors, ``--help``, ``--version``)."""
    return subprocess.run(
        gshutdown_argv(*args),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=child_env(env),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


class GProcess:
    """A running child whose combined output goes to ``log_path``."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Optional[dict[str, str]] = None,
        cwd: Union[str, Path] = ROOT,
        pass_fds: Iterable[int] = (),
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=child_env(env),
                start_new_session=True,
                pass_fds=tuple(pass_fds),
            )
        except BaseException:
            self._log_file.close()
            raise
        self.pid = self.proc.pid

    # -- output -----------------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.log().splitlines()

    def wait_for_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the log at or after offset ``start``.

        Fails (showing the log) after ``timeout`` seconds, or at once if the
        process has exited without writing it.
        """
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc.poll() is not None
            match = regex.search(self.log(), start)
            if match:
                return match
            if exited:
                raise AssertionError(
                    f"process exited ({self.proc.returncode}) without logging {pattern!r}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not logged within {timeout} s:\n{self.log()}")
            time.sleep(0.01)

    def wait_listening(self, timeout: float = STARTUP_TIMEOUT) -> None:
        self.wait_for_log(r"listening on ", timeout)

    def listening(self) -> GProcess:
        """This process once it listens; stopped (and the failure raised) if it does not."""
        try:
            self.wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    # -- lifecycle ----------------------------------------------------------------

    def send_signal(self, signum: int, *, group: bool = False) -> float:
        """Signal the child (only while it runs); returns ``time.monotonic()`` of the send.

        With ``group``, signal its whole process group (it leads one: it was
        started in a new session), as systemd's ``KillMode=control-group``,
        ``tini -g`` and Ctrl-C in a terminal do: its workers get it too.
        """
        assert self.proc.poll() is None, f"process already exited ({self.proc.returncode}):\n{self.log()}"
        if group:
            os.killpg(self.pid, signum)
        else:
            os.kill(self.pid, signum)
        return time.monotonic()

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        """The exit status; fails (showing the log) if it takes over ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"process did not exit within {timeout} s:\n{self.log()}") from None

    def stop(self) -> None:
        """Kill the child if it still runs, reap it, close the log file."""
        try:
            if self.proc.poll() is None:
                os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(10)
        finally:
            self._log_file.close()

    def __enter__(self) -> GProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_gshutdown(
    log_path: Path,
    *args: str,
    env: Optional[dict[str, str]] = None,
    cwd: Union[str, Path] = ROOT,
    wait: bool = True,
) -> GProcess:
    """``python -m gshutdown ARGS``, waited for until it logs that it listens."""
    proc = GProcess(gshutdown_argv(*args), log_path, env=env, cwd=cwd)
    return proc.listening() if wait else proc


#: ``gshutdown.run()`` embedded in a script, as a library user's ``__main__`` would:
#: argv is the bind (JSON: ``[host, port]`` or ``"unix:PATH"``) and ``run()``'s
#: keyword arguments (JSON), so settings without a CLI flag can be tested in a process.
EMBEDDED_RUN = """
import json, logging, sys
import gshutdown
from tests.apps.probe import app

logging.basicConfig(level=logging.INFO)
bind, options = json.loads(sys.argv[1]), json.loads(sys.argv[2])
raise SystemExit(gshutdown.run(app, tuple(bind) if isinstance(bind, list) else bind, **options))
"""


def start_embedded(log_path: Path, bind: Any, **options: Any) -> GProcess:
    """A child running ``gshutdown.run(probe app, bind, **options)``, waited for until it listens."""
    argv = [sys.executable, "-c", EMBEDDED_RUN, json.dumps(bind), json.dumps(options)]
    return GProcess(argv, log_path).listening()


#: What a master logs once its first workers all serve.
MASTER_READY = r"master (\d+): (\d+) worker\(s\) ready"

#: A master test run twice: each worker imports the app, and the master imports it before
#: forking (``--preload``), which monkey-patches the master: its supervision must not differ.
with_and_without_preload = pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])


def start_master(log_path: Path, app: str, port: int, *args: str, workers: int = 2, preload: bool = False) -> GProcess:
    """``python -m gshutdown APP -b 127.0.0.1:PORT -w WORKERS [--preload] ARGS``, waited for until its workers serve."""
    if preload:
        args = ("--preload", *args)
    argv = gshutdown_argv(app, "-b", f"127.0.0.1:{port}", "-w", str(workers), "--ready-timeout", "10", *args)
    proc = GProcess(argv, log_path)
    try:
        proc.wait_for_log(MASTER_READY, timeout=STARTUP_TIMEOUT)
    except BaseException:
        proc.stop()
        raise
    return proc


# -- clients ---------------------------------------------------------------------


def connect(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def request_bytes(path: str = "/", *, host: str = "localhost", close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def read_response(sock: socket.socket, timeout: float = PROCESS_IO_TIMEOUT) -> tuple[int, dict[str, str], bytes]:
    """One complete response from ``sock``: status, lower-cased headers, body."""
    return helpers.read_response(sock, timeout)


def get(
    port: int, path: str = "/", host: str = "127.0.0.1", timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """A one-shot GET on a new connection."""
    with connect(port, host, timeout) as sock:
        sock.sendall(request_bytes(path, close=True))
        return read_response(sock, timeout)


def recv_eof(sock: socket.socket, timeout: float = PROCESS_IO_TIMEOUT) -> bytes:
    """Read until the server closes; everything received. Raises on timeout."""
    return helpers.recv_until_closed(sock, timeout)


def refused(port: int, host: str = "127.0.0.1") -> bool:
    """True if a connect to ``port`` is refused now."""
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return False
    except ConnectionRefusedError:
        return True


def wait_until(predicate: Any, timeout: float = PROCESS_IO_TIMEOUT, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns a true value; fail after ``timeout`` seconds."""
    return helpers.wait_until(predicate, timeout, interval)


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


class LoadClients:
    """``count`` threads looping keep-alive requests until stopped; bounded by ``limit`` seconds.

    Each thread follows the retry policy of a careful HTTP client (urllib3's,
    for idempotent requests): a request on a *reused* keep-alive connection that
    is closed or reset before any response byte is retried once on a new
    connection; anything else is a failure. With ``until_refused``, a thread
    stops when a new connection is refused or closed before any response byte
    (the server is going away); a reset on a new connection is still a failure.

    Every request has an id, ``TID-N`` (thread, request number).

    Args:
        path: the request target for a request id (by default ``/pid?rid=ID``,
            which the probe app records in ``$PROBE_SEEN``).
    """

    def __init__(
        self,
        port: int,
        count: int = 4,
        limit: float = 30.0,
        *,
        path: Callable[[str], str] = lambda rid: f"/pid?rid={rid}",
        until_refused: bool = False,
    ) -> None:
        self.port = port
        self.limit = limit
        self.path = path
        self.until_refused = until_refused
        self.ok = 0
        self.retries = 0
        self.closing_responses = 0
        self.failures: list[str] = []
        #: Bodies of the successful responses, in order.
        self.bodies: list[bytes] = []
        #: Ids of the requests whose response arrived whole.
        self.completed: set[str] = set()
        #: How each thread stopped: "refused", "closed fresh", "stopped" or "limit".
        self.stops: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(tid,), daemon=True) for tid in range(count)]

    def __enter__(self) -> LoadClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 20.0) -> None:
        self._stop.set()
        self.join(timeout)

    def join(self, timeout: float = 20.0) -> None:
        """Wait for every thread to stop on its own (``stop_on_refused``); fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = sum(thread.is_alive() for thread in self._threads)
        assert not alive, f"{alive} load client(s) still running after {timeout} s"

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)

    def _loop(self, tid: int) -> None:
        deadline = time.monotonic() + self.limit
        conn: Optional[http.client.HTTPConnection] = None
        reused = False
        n = 0
        stop = "stopped"
        while True:
            if self._stop.is_set():
                break
            if time.monotonic() > deadline:
                stop = "limit"
                break
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                reused = False
            rid = f"{tid}-{n}"
            target = self.path(rid)
            try:
                conn.request("GET", target)
                response = conn.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                conn = None
                if reused:
                    with self._lock:
                        self.retries += 1
                    continue  # retry once on a fresh connection
                if self.until_refused and isinstance(exc, http.client.RemoteDisconnected):
                    stop = "closed fresh"
                    break
                self._fail(f"{target}: fresh connection: {exc!r}")
                if self.until_refused:
                    break
                continue
            except ConnectionRefusedError as exc:
                conn.close()
                conn = None
                if self.until_refused:
                    stop = "refused"
                    break
                self._fail(f"{target}: {exc!r}")
                continue
            except OSError as exc:
                conn.close()
                conn = None
                self._fail(f"{target}: {exc!r}")
                continue
            n += 1
            with self._lock:
                if response.status == 200:
                    self.ok += 1
                    self.bodies.append(body)
                    self.completed.add(rid)
                else:
                    self.failures.append(f"{target}: status {response.status}")
            reused = True
            if response.getheader("Connection", "").lower() == "close":
                with self._lock:
                    self.closing_responses += 1
                conn.close()
                conn = None
        if conn is not None:
            conn.close()
        with self._lock:
            self.stops.append(stop)

    def served_since(self, mark: int) -> list[bytes]:
        with self._lock:
            return self.bodies[mark:]
