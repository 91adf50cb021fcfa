"""Resets at shutdown: process-group SIGTERMs under reconnecting keep-alive load, counted.

``python bench/shutdown_resets.py [--runs 30] [--workers 2] [--server-arg=--reuse-port]``
runs, ``--runs`` times, a fresh ``gshutdown`` on ``bench/app.py`` (``/pid``;
no monkey-patching) on a free 127.0.0.1 port, in a session of its own. Once it
is ready, ``--clients`` keep-alive clients (non-blocking sockets, one
selector, this process) send requests, each on a connection it keeps for 1 to
``--max-per-conn`` requests (or until the server says ``Connection: close``)
and then replaces with a new one, immediately. After a random 0.3 to
``--load-seconds`` seconds of load the whole process group gets SIGTERM (as
systemd, ``tini -g`` or Ctrl-C send it) and the clients go on until the master
has exited, retrying a refused connect every ``REFUSED_RETRY`` seconds; then
they open no more connections, and the run ends when every one open has ended
(at most ``SETTLE_SECONDS`` later: a SYN that a sealed listener dropped is
sent again about 1 s later, and refused then).

Every connection ends in one of these, counted per run and in total:

=================  ==============================================================
served             requests with a complete 200 response (a count of requests)
refused            connect refused (ECONNREFUSED): the clean "no"; of them, "late"
                   ones were refused only after ``LATE_REFUSAL`` seconds or more
                   (their first SYN dropped: the listener was sealed)
reset              a NEW connection, connected, then reset before any response
                   byte: the bug this script looks for
closed unread      a new connection closed with FIN before any response byte
keep-alive closed  a reused connection closed or reset before any response byte
                   (the idle-close race every HTTP client retries)
cut                some response bytes, then an end or a reset
hung               nothing for ``HANG_SECONDS`` seconds
=================  ==============================================================

The script exits 1 when any run had a reset, a cut or a hang, or the server's
exit status was not 0. Run on demand, not in the test suite: a 30-run loop
takes about a minute on two cores. ``--workers 0`` runs the single process.
``--server-arg`` (repeatable) passes more options, e.g. ``--reuse-port`` or
``--max-requests 200`` (workers recycled under load, to look for resets while
serving rather than at shutdown). ``--reloads N`` sends the master N SIGHUPs
under load first, each waited for until its new workers serve, so the old
workers' drains are counted too.
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

BENCH = Path(__file__).resolve().parent
REQUEST = b"GET /pid HTTP/1.1\r\nHost: resets\r\n\r\n"
#: Seconds a client waits after a refused connect before the next one.
REFUSED_RETRY = 0.005
#: Seconds without progress after which a connection counts as hung.
HANG_SECONDS = 10.0
#: Seconds a run may take from the signal to the master's exit.
EXIT_TIMEOUT = 40.0
#: Seconds, after the master's exit, for the connections still open to end.
SETTLE_SECONDS = 5.0
#: A refusal that took this many seconds or more came after a SYN was sent again.
LATE_REFUSAL = 0.5
#: The log line that says the server serves: the master's once every worker is ready, or the single process's.
READY_WORKERS = re.compile(r"master \d+: \d+ worker\(s\) ready")
READY_SINGLE = re.compile(r"\[INFO\] listening on")
OUTCOMES = ("served", "refused", "reset", "closed unread", "keep-alive closed", "cut", "hung")


@dataclass
class Conn:
    sock: socket.socket
    #: Requests this connection may still send before it is replaced.
    budget: int
    connecting: bool = True
    served: int = 0
    buf: bytearray = field(default_factory=bytearray)
    #: When its connect was made (monotonic seconds).
    opened_at: float = 0.0
    last_progress: float = field(default_factory=time.monotonic)


@dataclass
class Run:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    #: Fresh connections made (connect attempts: refused ones included).
    connections: int = 0
    #: Refusals that came ``LATE_REFUSAL`` seconds or more after the connect.
    refused_late: int = 0
    #: ``(connected, reset)`` for each reset: when its connect was made and when the reset came (monotonic seconds).
    reset_times: list[tuple[float, float]] = field(default_factory=list)
    signalled_at: float = 0.0
    exit_status: Optional[int] = None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def response_length(buf: bytearray) -> Optional[tuple[int, bool]]:
    """``(length, closes)`` of the complete response at the start of ``buf``, or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    match = re.search(rb"\r\ncontent-length: *(\d+)", head)
    if match is None:
        raise ValueError(f"no Content-Length in {head!r}")
    total = end + 4 + int(match.group(1))
    if len(buf) < total:
        return None
    if not head.startswith(b"http/1.1 200 "):
        raise ValueError(f"not a 200: {head[:40]!r}")
    return total, b"\r\nconnection: close" in head


class Clients:
    """``count`` reconnecting keep-alive clients on one selector."""

    def __init__(self, port: int, count: int, max_per_conn: int, rng: random.Random) -> None:
        self.port = port
        self.max_per_conn = max_per_conn
        self.rng = rng
        self.selector = selectors.DefaultSelector()
        self.run = Run()
        #: Open no more connections: the run is ending.
        self.closing = False
        #: Clients waiting to reconnect after a refusal: monotonic time to retry at.
        self.retry_at: list[float] = []
        for _ in range(count):
            self._open()

    def _open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        self.run.connections += 1
        opened_at = time.monotonic()
        code = sock.connect_ex(("127.0.0.1", self.port))
        conn = Conn(sock, self.rng.randint(1, self.max_per_conn), opened_at=opened_at)
        if code not in (0, errno.EINPROGRESS):
            self._end(conn, "refused" if code == errno.ECONNREFUSED else "reset")
            return
        self.selector.register(sock, selectors.EVENT_WRITE, conn)

    def _end(self, conn: Conn, outcome: str, *, replace: bool = True) -> None:
        if outcome == "reset":
            self.run.reset_times.append((conn.opened_at, time.monotonic()))
        if outcome != "served":
            self.run.counts[outcome] += 1
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        if not replace or self.closing:
            return
        if outcome == "refused":
            self.retry_at.append(time.monotonic() + REFUSED_RETRY)
        else:
            self._open()

    def _send(self, conn: Conn) -> None:
        try:
            conn.sock.send(REQUEST)  # far below any socket buffer: sent whole
        except OSError:
            pass  # the read that follows says how it ended
        self.selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _on_writable(self, conn: Conn) -> None:
        code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == errno.ECONNREFUSED:
            self.run.refused_late += time.monotonic() - conn.opened_at >= LATE_REFUSAL
            self._end(conn, "refused")
        elif code:
            self._end(conn, "reset")  # e.g. ECONNRESET: connected, then reset
        else:
            conn.connecting = False
            conn.last_progress = time.monotonic()
            self._send(conn)

    def _on_readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except ConnectionResetError:
            data = None
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise
            return
        if not data:
            if conn.buf:
                self._end(conn, "cut")
            elif conn.served:
                self._end(conn, "keep-alive closed")
            else:
                self._end(conn, "reset" if data is None else "closed unread")
            return
        conn.buf += data
        conn.last_progress = time.monotonic()
        complete = response_length(conn.buf)
        if complete is None:
            return
        length, closes = complete
        del conn.buf[:length]
        conn.served += 1
        self.run.counts["served"] += 1
        conn.budget -= 1
        if closes or conn.budget <= 0 or conn.buf:
            self._end(conn, "served")
        else:
            self._send(conn)

    def step(self, timeout: float) -> None:
        now = time.monotonic()
        due = [t for t in self.retry_at if t <= now]
        if due and not self.closing:
            self.retry_at = [t for t in self.retry_at if t > now]
            for _ in due:
                self._open()
        for key, _ in self.selector.select(timeout):
            conn: Conn = key.data
            if conn.connecting:
                self._on_writable(conn)
            else:
                self._on_readable(conn)
        for key in list(self.selector.get_map().values()):
            conn = key.data
            if now - conn.last_progress > HANG_SECONDS:
                self._end(conn, "hung")

    @property
    def open(self) -> int:
        """Connections not ended yet."""
        return len(self.selector.get_map())

    def close(self) -> None:
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()


def start_server(port: int, workers: int, extra: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GSHUTDOWN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), str(BENCH.parent), env.get("PYTHONPATH", "")]))
    argv = [sys.executable, "-m", "gshutdown", "--no-monkey-patch", "--log-level", "info", "--readiness-path", ""]
    argv += ["-b", f"127.0.0.1:{port}", *(["-w", str(workers)] if workers else []), *extra, "app:app"]
    with log_path.open("wb") as log_file:
        # A session of its own: the signal goes to its process group, workers included.
        proc = subprocess.Popen(
            argv, env=env, cwd=BENCH, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True
        )
    ready = READY_WORKERS if workers else READY_SINGLE
    deadline = time.monotonic() + 30
    while not ready.search(log_path.read_text(errors="replace")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the server did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.02)
    return proc


def one_run(opts: argparse.Namespace, rng: random.Random, log_path: Path) -> Run:
    port = free_port()
    proc = start_server(port, opts.workers, opts.server_arg, log_path)
    clients = Clients(port, opts.clients, opts.max_per_conn, rng)
    try:
        for generation in range(2, 2 + opts.reloads):
            # SIGHUP to the master under load: new workers start, the old ones drain.
            proc.send_signal(signal.SIGHUP)
            done = re.compile(rf"reload done: generation {generation} serving")
            deadline = time.monotonic() + EXIT_TIMEOUT
            while not done.search(log_path.read_text(errors="replace")) and time.monotonic() < deadline:
                clients.step(0.005)
        signal_at = time.monotonic() + rng.uniform(0.3, max(0.3, opts.load_seconds))
        while time.monotonic() < signal_at:
            clients.step(0.005)
        clients.run.signalled_at = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        deadline = clients.run.signalled_at + EXIT_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            clients.step(0.005)
        settle = time.monotonic() + 0.1  # refusals once everything has exited
        while time.monotonic() < settle:
            clients.step(0.005)
        clients.closing = True
        settle = time.monotonic() + SETTLE_SECONDS
        while clients.open and time.monotonic() < settle:
            clients.step(0.05)
        clients.run.counts["hung"] += clients.open
    finally:
        clients.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        clients.run.exit_status = proc.wait()
    return clients.run


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="shutdowns (default 30)")
    parser.add_argument("--workers", type=int, default=2, help="--workers for the server; 0: one process (default 2)")
    parser.add_argument("--clients", type=int, default=20, help="keep-alive clients (default 20)")
    parser.add_argument("--max-per-conn", type=int, default=4, help="requests per connection, at most (default 4)")
    parser.add_argument("--load-seconds", type=float, default=0.8, help="seconds of load before the signal, at most")
    parser.add_argument("--server-arg", action="append", default=[], help="one more server option (repeatable)")
    parser.add_argument(
        "--reloads", type=int, default=0, help="SIGHUPs under load before the SIGTERM (needs --workers; default 0)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    parser.add_argument("--keep-logs", action="store_true", help="keep every run's server log (else: bad runs')")
    opts = parser.parse_args()
    seed = opts.seed if opts.seed is not None else int(time.time())
    rng = random.Random(seed)
    logs = Path(tempfile.mkdtemp(prefix="shutdown-resets-"))
    mode = f"--workers {opts.workers}" if opts.workers else "one process"
    print(f"{opts.runs} runs, {mode} {' '.join(opts.server_arg)}, {opts.clients} clients, seed {seed}; logs in {logs}")
    totals = Run()
    bad_runs = 0
    started = time.monotonic()
    for n in range(1, opts.runs + 1):
        log_path = logs / f"run-{n}.log"
        run = one_run(opts, rng, log_path)
        for outcome in OUTCOMES:
            totals.counts[outcome] += run.counts[outcome]
        totals.connections += run.connections
        totals.refused_late += run.refused_late
        bad = run.counts["reset"] or run.counts["cut"] or run.counts["hung"] or run.exit_status != 0
        bad_runs += bool(bad)
        when = ", ".join(
            f"{(opened - run.signalled_at) * 1000:+.3f}/{(reset - run.signalled_at) * 1000:+.3f}"
            for opened, reset in run.reset_times
        )
        print(
            f"run {n:3d}: {run.counts['reset']} reset, {run.counts['refused']:5d} refused "
            f"({run.refused_late} late), "
            f"{run.counts['served']:6d} served, {run.connections:5d} connections; "
            + ", ".join(f"{run.counts[o]} {o}" for o in OUTCOMES[3:] if run.counts[o])
            + f"{'; ' if any(run.counts[o] for o in OUTCOMES[3:]) else ''}exit {run.exit_status}"
            + (f"; resets (ms from the signal, connected/reset): {when}" if when else "")
            + (f"  <- {log_path}" if bad else "")
        )
        if not bad and not opts.keep_logs:
            log_path.unlink()
    print(
        f"total: {opts.runs} runs in {time.monotonic() - started:.0f} s, {totals.connections:,} connections: "
        f"{totals.counts['reset']} reset, {totals.counts['refused']:,} refused ({totals.refused_late} late), "
        f"{totals.counts['served']:,} served, "
        + ", ".join(f"{totals.counts[o]:,} {o}" for o in OUTCOMES[3:])
        + f"; {bad_runs} bad run(s)"
    )
    return 1 if bad_runs else 0


if __name__ == "__main__":
    sys.exit(main())
