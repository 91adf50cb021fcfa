"""The server: accept, the connection registry, and shutdown.

(Over 500 lines: the shutdown steps below, each a short method of the one
server whose state they share; accepting is ``accept``, results ``shutdown``.)

Shutdown timeline (``Server.shutdown(timeout)``), each step a private method:

1. Mark the server shutting down and start the "drain" hooks; accept what is
   already complete in the kernel's backlog, seal the listener if nobody else
   serves it (``seal_listener``) and accept what came meanwhile, then close
   the listener, so new connects are refused rather than reset halfway.
2. Disable keep-alive: a response whose head is not yet written carries
   ``Connection: close``, and no connection reads another request.
3. Give every idle connection (and every NEW one with no byte received) a
   read deadline of ``idle_grace`` seconds: a request arriving inside it is
   served, then the connection closes; otherwise it closes with FIN.
4. Wait for the registry to drain. This is an event set by the transition that
   leaves no connection NEW, ACTIVE or IDLE: no polling, so ``shutdown()``
   returns within milliseconds of the last request ending.
5. Past the deadline, force-close what is left and record it.
6. Run the "stopped" hooks, close hijacked sockets nobody took over, and join
   the connection greenlets.

``close()`` is the immediate version: listener and every connection, now.
Every connection it ends is reported in the result of a shutdown it
interrupts (or that follows it) as forced.

Sealing the listener closes the window between the last accept and the close
of the listener: a connection the kernel completed in between would sit in
the queue the close throws away, and its client, told it was connected, would
get a reset (1 connection in ~16,000 under reconnecting load, with two
workers signalled as a process group: ``bench/shutdown_resets.py``). Sealed,
a TCP listener drops new SYNs (a socket filter that keeps only segments
carrying ACK), so no connection is completed after the last accept: handshakes
in progress still complete and are accepted; a client whose SYN was dropped
sends it again about a second later and is refused, the listener gone by then.
A Unix listener is shut down for reading, after which Linux refuses connects
at once and still hands out the queued ones. What no process can prevent: a
handshake whose SYN the kernel answered before the seal and whose ACK arrives
only after the close is reset (on loopback the two follow each other within
microseconds; across a network they are one round trip apart). Linux only;
elsewhere the listener is closed unsealed, as before.

Accepting, and pausing it when out of descriptors, is ``accept.PausingAccept``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import struct
import sys
import time
from email.utils import formatdate
from typing import Any, Callable, Optional, Union

import gevent
from gevent import getcurrent
from gevent.event import AsyncResult, Event
from gevent.server import StreamServer

from gshutdown.config.addresses import bind_unix, describe_address
from gshutdown.config.server_config import Config
from gshutdown.protocol.forwarded import TrustedProxies
from gshutdown.server import allocator
from gshutdown.server.accept import CONNECTION_ABORTED, PausingAccept
from gshutdown.server.connection import Connection
from gshutdown.server.going_away import GoingAway
from gshutdown.server.handler import Handler
from gshutdown.server.hooks import HookList, HookPhase, join_drain_hooks
from gshutdown.server.jobs import JobFn, PeriodicJob, Scheduler
from gshutdown.server.registry import ConnRegistry, ConnStateHook
from gshutdown.server.shutdown import ForcedConnection, ShutdownPhase, ShutdownResult
from gshutdown.server.state import ConnState
from gshutdown.server.tls import TLSConnection, server_context
from gshutdown.server.workers import ServingGreenlets

log = logging.getLogger("gshutdown")

Listener = Union[tuple, str, socket.socket]

_NO_LIMIT = float("inf")
#: Seconds a connection must have been quiet (idle since its response, or
#: waiting for its head since it connected or began it) before it may be
#: reclaimed at the connection cap.
RECLAIM_MIN_AGE = 1.0

# SO_ATTACH_FILTER (asm-generic/socket.h), and a classic BPF program that keeps
# a TCP segment only if it carries ACK: a socket filter sees the segment from
# its TCP header on, where byte 13 holds the flags. Dropped: SYNs, that is, new
# connections; kept: the ACK that completes a handshake in progress, and every
# segment of an established connection (accepted sockets inherit the filter).
_SO_ATTACH_FILTER = 26
_TCP_ACK = 0x10
_KEEP_SEGMENTS_WITH_ACK = b"".join(
    struct.pack("=HBBI", code, jump_true, jump_false, k)
    for code, jump_true, jump_false, k in (
        (0x30, 0, 0, 13),  # BPF_LD | BPF_B | BPF_ABS: A = byte 13 (the TCP flags)
        (0x45, 0, 1, _TCP_ACK),  # BPF_JMP | BPF_JSET | BPF_K: A & ACK ? next : skip one
        (0x06, 0, 0, 0xFFFFFFFF),  # BPF_RET | BPF_K: keep the whole segment
        (0x06, 0, 0, 0),  # BPF_RET | BPF_K: drop it
    )
)


class HTTPServer(PausingAccept):
    """An HTTP/1.1 server on a gevent ``StreamServer``, built to stop well.

    It serves a ``Handler``; ``gshutdown.Server`` is this with the WSGI one.

    Args:
        listener: ``(host, port)`` (IPv4 or IPv6; port 0 picks one),
            ``"unix:/path"``, or an already-bound socket (one not listening yet
            listens from ``start()``, with ``config.backlog``).
        handler: what serves each request (``gshutdown.server.handler``).
        conn_state: called as ``conn_state(connection, new_state)`` on every
            connection state change, synchronously; must not block. An
            exception in it is logged and otherwise ignored.
        config: a ``Config``; keyword ``options`` override its fields.

    Raises:
        ValueError: an option is invalid; ``gshutdown.server.tls.TLSConfigError``
            (a ValueError) when a TLS file cannot be used.
    """

    def __init__(
        self,
        listener: Listener,
        handler: Handler,
        *,
        conn_state: Optional[ConnStateHook] = None,
        config: Optional[Config] = None,
        **options: Any,
    ) -> None:
        self.config = (config or Config()).replace(**options) if options else (config or Config())
        #: Peers whose forwarding headers and PROXY addresses are believed.
        self.trusted_proxies = TrustedProxies(self.config.forwarded_allow_ips)
        #: The TLS context when ``config.certfile`` is set (HTTPS), else None.
        self.ssl_context = server_context(self.config) if self.config.certfile else None
        self.connection_class: type[Connection] = TLSConnection if self.ssl_context else Connection
        self._owns_unix_path = False
        bound_here = isinstance(listener, (str, tuple))
        if isinstance(listener, str) and listener.startswith("unix:"):
            listener = bind_unix(listener[5:], self.config.backlog, mode=self.config.unix_socket_mode)
            self._owns_unix_path = True
        if not isinstance(listener, (str, tuple)):
            # gevent's accept loop calls accept() until it would block: a
            # blocking listener would hang the hub on the second call.
            listener.setblocking(False)
        self.handler = handler
        #: Seal the listener before the shutdown's last accepts (see the module
        #: docstring). Sealing acts on the socket, not on this process's
        #: descriptor, and outlives the close when another process holds the
        #: socket too: it is only for a listener nobody else serves once this
        #: server closes it. True for one the server binds itself; a caller
        #: that hands over a socket nobody else holds may set it.
        self.seal_listener = bound_here
        #: Asked once, at the shutdown's last accepts, when ``seal_listener``
        #: is False: True seals the listener all the same (a worker that is the
        #: last of the holders of a shared listener to get there: ``worker_link``).
        self.last_holder: Optional[Callable[[], bool]] = None
        self.registry = ConnRegistry(conn_state)
        #: Set when a shutdown starts; handlers may wait on it
        #: (``environ['gshutdown.shutting_down']``).
        self.shutting_down = Event()
        self.shutdown_started = False
        self.keep_alives_enabled = self.config.keep_alive
        self.phase = ShutdownPhase.SERVING
        #: On-shutdown hooks (see ``register_on_shutdown``).
        self.hooks = HookList()
        self._shutdown_result: Optional[AsyncResult] = None
        self._date_second = -1
        self._date = ""
        self._callers_in_handlers: set[Connection] = set()
        self._overflow: list[gevent.Greenlet] = []
        # Connections force-closed (at the deadline or by close()), by id,
        # and the hijacked sockets close() closed.
        self._forced: dict[int, ForcedConnection] = {}
        self._hijacked_closed_by_close = 0
        # Hijacked connections told to go away: None until the drain starts.
        self._going_away: Optional[list[tuple[Connection, GoingAway]]] = None
        #: Requests read so far, on all connections.
        self.requests_total = 0
        #: Of those, requests whose body was cut for being too slow (answered 408, not served).
        self.requests_cut = 0
        #: ``requests_total`` at which ``_on_request_limit`` runs (see ``notify_after_requests``).
        self.request_limit = _NO_LIMIT
        self._on_request_limit: Optional[Callable[[], Any]] = None
        #: Called as ``request_observer(connection, started)`` once per request:
        #: when the application's call and its response are over, with
        #: ``started`` the ``time.perf_counter()`` of that call; when the server
        #: refused a request head itself (400, 408, 414, 431), with None. The
        #: status sent is ``connection.response_status``. It runs in the
        #: connection's greenlet and must not block (``gshutdown.process.metrics``).
        self.request_observer: Optional[Callable[[Connection, Optional[float]], None]] = None
        #: Periodic jobs; they start with the server and stop with its shutdown.
        self.jobs = Scheduler()
        # gevent takes a backlog only for listeners it binds itself.
        backlog = self.config.backlog if isinstance(listener, (tuple, str)) else None
        # The pool bounds nothing: max_connections counts connections (the
        # registry's), and a parked idle one has no greenlet; a closing one
        # lingering after FIN has one but no longer counts. Its greenlets are
        # reused from one connection to the next (``workers``).
        self.pool: ServingGreenlets = ServingGreenlets()
        super().__init__(listener, backlog=backlog, spawn=self.pool)
        self.registry.on_slot_freed = self._slot_freed

    # -- accept ---------------------------------------------------------------

    def start(self) -> None:
        """Bind (if needed), start accepting, and start the periodic jobs."""
        if self.config.tune_malloc:
            allocator.fix_thresholds()
        self.init_socket()
        if not self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            # Handed over bound but not listening (a --reuse-port worker's own
            # socket): the kernel queues connections on it only from now on,
            # when they are accepted at once (and, in a worker, once its
            # signal handlers make a stop graceful).
            self.socket.listen(self.config.backlog)
        super().start()
        self.jobs.start()

    def every(self, interval: float, fn: JobFn, *, name: Optional[str] = None) -> PeriodicJob:
        """Run ``fn()`` every ``interval`` seconds until shutdown (see ``gshutdown.server.jobs``)."""
        return self.jobs.every(interval, fn, name=name)

    def init_socket(self) -> None:
        super().init_socket()
        self.handler.bind(self)

    def handle(self, sock: socket.socket, address: Any) -> None:
        """Serve one accepted socket in the calling greenlet."""
        conn = self.connection_class(self, sock, address)
        conn.greenlet = getcurrent()
        conn.serve()

    def open_connections(self) -> int:
        return len(self.registry)

    def spawn_connection(self, conn: Connection) -> Any:
        """Serve ``conn`` (a parked one, resumed) on a greenlet of the pool."""
        return self.pool.serve(conn)

    # -- the connection cap ----------------------------------------------------------

    def _at_cap(self) -> bool:
        limit = self.config.max_connections
        return limit is not None and self.registry.served >= limit

    def _reclaim_slot(self) -> Optional[float]:
        """Reclaim as nginx does: the oldest idle keep-alive connection, else the oldest without a complete head.

        Only connections quiet for ``RECLAIM_MIN_AGE`` seconds: one that
        finished a response a moment ago is likely about to be reused (closing
        it would race its client's next request), and one that connected or
        began its head a moment ago is likely about to complete it.
        """
        now = time.monotonic()
        ready_by = now + RECLAIM_MIN_AGE
        registry = self.registry
        for conn in registry.oldest_first(ConnState.IDLE):
            if conn.idle_since + RECLAIM_MIN_AGE > now:
                ready_by = min(ready_by, conn.idle_since + RECLAIM_MIN_AGE)
                break  # the rest went idle later still
            if conn.reclaim():
                return None
        # Then what has not sent a complete head: NEW ones, and heads in progress.
        candidates: list[tuple[float, Connection]] = []
        for conn in registry.oldest_first(ConnState.NEW):
            if conn.created + RECLAIM_MIN_AGE > now:
                ready_by = min(ready_by, conn.created + RECLAIM_MIN_AGE)
                break
            candidates.append((conn.created, conn))
        for conn in registry.oldest_first(ConnState.ACTIVE):
            if conn.reading_head:
                if conn.head_started + RECLAIM_MIN_AGE > now:
                    ready_by = min(ready_by, conn.head_started + RECLAIM_MIN_AGE)
                else:
                    candidates.append((conn.head_started, conn))
        candidates.sort(key=lambda item: item[0])
        for _, conn in candidates:
            if conn.reclaim():
                return None
        return max(ready_by - now, 0.01)

    def do_handle(self, sock: socket.socket, address: Any) -> None:
        # Registered here, in the accept path, rather than when the greenlet
        # first runs: a connection accepted is a connection shutdown waits for.
        conn = self.connection_class(self, sock, address)
        conn.greenlet = self.pool.serve(conn)

    def do_close(self, *args: Any) -> None:
        pass  # connections close themselves (or were hijacked)

    def server_host_port(self) -> tuple[str, str]:
        """SERVER_NAME and SERVER_PORT for the environ."""
        address = self.address
        if isinstance(address, tuple):
            return str(address[0]), str(address[1])
        return str(address), "443" if self.ssl_context else "80"

    def http_date(self) -> str:
        """The current time as an HTTP date, formatted once a second."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = formatdate(now, usegmt=True)
        return self._date

    # -- observability -----------------------------------------------------------

    @property
    def connections(self) -> list[Connection]:
        """A snapshot of the live connections (hijacked ones included)."""
        return self.registry.all()

    def stats(self) -> dict[str, Any]:
        """Connections by state, totals, and the shutdown phase."""
        return {
            "connections": self.registry.counts(),
            "connections_closed": self.registry.closed_total,
            "connections_hijacked": self.registry.hijacked_total,
            "requests": self.requests_total,
            "requests_cut": self.requests_cut,
            "phase": self.phase.value,
        }

    def notify_after_requests(self, count: int, fn: Callable[[], Any]) -> None:
        """Call ``fn()`` once, when ``requests_total`` reaches ``count``.

        It runs in the greenlet of the connection that read that request, so
        it must not block. (A worker's ``--max-requests`` uses it.)
        """
        self.request_limit = count
        self._on_request_limit = fn

    def request_limit_reached(self) -> None:
        """Called by the connection that read request number ``request_limit``."""
        fn, self._on_request_limit = self._on_request_limit, None
        self.request_limit = _NO_LIMIT
        if fn is not None:
            fn()

    # -- keep-alive, hooks ----------------------------------------------------------

    def set_keep_alives_enabled(self, enabled: bool) -> None:
        """Allow or forbid keep-alive (as Go's); forbidding closes idle connections now."""
        self.keep_alives_enabled = enabled
        if not enabled:
            for conn in self.registry.in_state(ConnState.IDLE):
                conn.shorten_wait(0)

    def register_on_shutdown(
        self,
        fn: Callable[[], Any],
        *,
        timeout: Optional[float] = None,
        phase: Union[HookPhase, str] = HookPhase.STOPPED,
    ) -> None:
        """Run ``fn()`` during ``shutdown()``.

        Args:
            fn: called with no arguments, in its own greenlet.
            timeout: seconds the hook may run (also bounded by the shutdown
                deadline); past it, it is killed and the next hook runs.
            phase: ``"drain"`` (when the shutdown starts) or ``"stopped"``
                (after connections are drained). Hooks of a phase run in
                registration order; a failing or hanging one is logged and
                does not stop the others.
        """
        self.hooks.add(fn, timeout=timeout, phase=phase)

    # -- shutdown -------------------------------------------------------------------------

    def shutdown(self, timeout: Optional[float] = None) -> ShutdownResult:
        """Stop gracefully; see the module docstring for the steps.

        Args:
            timeout: seconds before what is still open is force-closed
                (None: wait as long as it takes).

        Returns:
            A ``ShutdownResult``. Every caller, concurrent or repeated, gets
            the same one. Called from inside a request handler, the caller's
            own connection is not waited for (it could not finish meanwhile).
        """
        caller = self._caller_connection()
        if caller is not None:
            self._callers_in_handlers.add(caller)
            served = [c for c in self._callers_in_handlers if c.state is not ConnState.HIJACKED]
            self.registry.set_drain_floor(len(served))
        if self._shutdown_result is None:
            self._shutdown_result = AsyncResult()
            gevent.spawn(self._run_shutdown, timeout, self._shutdown_result)
        result: ShutdownResult = self._shutdown_result.get()
        return result

    def stop(self, timeout: Optional[float] = None) -> None:
        """gevent's ``stop()``, made graceful: ``shutdown(timeout)``."""
        self.shutdown(timeout)

    def close(self) -> None:
        """Close the listener and every connection now (Go's ``Close``)."""
        if self._shutdown_result is None:
            self.phase = ShutdownPhase.STOPPED
        elif self.phase is ShutdownPhase.DRAINING:
            self.phase = ShutdownPhase.FORCING  # the running shutdown moves on from here
        self.shutdown_started = True
        self.shutting_down.set()
        self.keep_alives_enabled = False
        self.pool.close()
        self._close_listener()
        self._hijacked_closed_by_close += self._close_hijacked()
        # What is left is served (NEW, ACTIVE, IDLE): each one is forced.
        for conn in self.registry.all():
            self._record_forced(conn)
            conn.force_close()

    def _caller_connection(self) -> Optional[Connection]:
        current = getcurrent()
        for conn in self.registry.in_state(ConnState.ACTIVE, ConnState.HIJACKED):
            if conn.greenlet is current:
                return conn
        return None

    def _run_shutdown(self, timeout: Optional[float], out: AsyncResult) -> None:
        try:
            result = self._shutdown_steps(timeout)
        except BaseException as exc:
            # A bug must not leave every caller of shutdown() waiting forever,
            # nor connections open: close what is left, and tell the callers.
            log.exception("shutdown: failed; closing every connection now")
            self.close()
            self.phase = ShutdownPhase.STOPPED
            out.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            out.set(result)

    def _shutdown_steps(self, timeout: Optional[float]) -> ShutdownResult:
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        self.phase = ShutdownPhase.DRAINING
        log.info("shutdown: started (timeout %s s)", "none" if timeout is None else f"{timeout:g}")
        drain_hooks = gevent.spawn(self.hooks.run, HookPhase.DRAIN, deadline)
        jobs = gevent.spawn(self.jobs.stop, deadline)
        progress = gevent.spawn(self._log_progress, deadline)
        self._begin_shutdown()
        idle_closed = self._close_idle()
        self._notify_going_away()
        self._wait_drained(deadline)
        websockets_closed, websockets_forced = self._wait_going_away(deadline)
        self.phase = ShutdownPhase.STOPPING
        jobs_killed = tuple(jobs.get())
        outcomes = join_drain_hooks(drain_hooks, deadline)
        outcomes += self.hooks.run(HookPhase.STOPPED, deadline)
        hijacked_closed = self._close_hijacked() + self._hijacked_closed_by_close
        self._join_connections()
        progress.kill(block=False)
        self.phase = ShutdownPhase.STOPPED
        # Forced at the deadline, or ended by close() during or before this.
        forced = tuple(self._forced.values())
        result = ShutdownResult(
            clean=not forced and not jobs_killed and not websockets_forced,
            jobs_killed=jobs_killed,
            forced=forced,
            hijacked_closed=hijacked_closed,
            hooks=tuple(outcomes),
            duration=time.monotonic() - started,
            idle_closed=idle_closed,
            websockets_closed=websockets_closed,
            websockets_forced=websockets_forced,
        )
        log.info(
            "shutdown: %s in %.3f s (%d forced, %d idle closed, %d hijacked closed)",
            "clean" if result.clean else "forced",
            result.duration,
            len(forced),
            idle_closed,
            hijacked_closed,
        )
        return result

    def add_going_away(self, conn: Connection, going_away: GoingAway) -> None:
        """Let a shutdown end hijacked ``conn`` through ``going_away`` (see ``gshutdown.server.going_away``).

        Once the drain has started, ``going_away`` is notified at once.
        """
        conn.going_away = going_away
        if self._going_away is not None:
            self._going_away.append((conn, going_away))
            going_away.notify()

    def _notify_going_away(self) -> None:
        # The drain starts: every hijacked connection that can go away is told to.
        told = self._going_away = [
            (conn, conn.going_away)
            for conn in self.registry.in_state(ConnState.HIJACKED)
            if conn.going_away is not None and not conn.going_away.finished.is_set()
        ]
        for _, going_away in told:
            going_away.notify()
        if told:
            log.info("shutdown: %d WebSocket(s) told to go away (Close 1001)", len(told))

    def _wait_going_away(self, deadline: Optional[float]) -> tuple[int, int]:
        """Wait for the connections told to go away until ``deadline``; close the rest.

        Returns (ended in time, closed at the deadline).
        """
        told = self._going_away or []
        if not told:
            return 0, 0
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        gevent.wait([going_away.finished for _, going_away in told], timeout=remaining)
        left = [conn for conn, going_away in told if not going_away.finished.is_set()]
        # Let go of them all: the list holds every connection, its greenlet and
        # its WebSocket (30 objects each for the exit's collection to traverse).
        self._going_away = []
        for conn in left:
            conn.force_close()
        if left:
            log.warning("shutdown: %d WebSocket(s) still open at the deadline: closed", len(left))
        return len(told) - len(left), len(left)

    def _begin_shutdown(self) -> None:
        # Steps 1 and 2. No yield happens here, so no connection can observe
        # a half-done step.
        self.shutdown_started = True
        self.shutting_down.set()
        self.keep_alives_enabled = False
        self.pool.close()
        self._accept_backlog()
        if self.seal_listener or (self.last_holder is not None and self.last_holder()):
            # Sealed only now: a SYN that comes while it is sealed is refused
            # about 1 s late (at its retry), so the sealed time is kept short.
            self._seal_listener()
            self._accept_backlog()  # what the kernel completed meanwhile
        self._close_listener()

    def _seal_listener(self) -> None:
        """Stop the kernel from completing new connections on the listener (Linux; elsewhere nothing)."""
        if not hasattr(self, "socket") or not sys.platform.startswith("linux"):
            return
        listener = self.socket
        try:
            if listener.family == socket.AF_UNIX:
                listener.shutdown(socket.SHUT_RD)
            else:
                program = ctypes.create_string_buffer(_KEEP_SEGMENTS_WITH_ACK, len(_KEEP_SEGMENTS_WITH_ACK))
                # struct sock_fprog: the instruction count, then a pointer to them.
                fprog = struct.pack("@HP", len(_KEEP_SEGMENTS_WITH_ACK) // 8, ctypes.addressof(program))
                listener.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
        except OSError as exc:
            log.debug("shutdown: cannot seal the listener (%s): closing it unsealed", exc)
            return
        log.debug("shutdown: sealed the listener on %s", describe_address(self.address))

    def _accept_backlog(self) -> None:
        """Serve connections the kernel already completed, instead of resetting them."""
        if not hasattr(self, "socket"):
            return
        self.stop_accepting()
        while True:
            try:
                accepted = self._accept()
            except OSError as exc:
                if exc.errno in CONNECTION_ABORTED:
                    continue  # that client is gone; the ones queued behind it are not
                break  # out of descriptors: what is left is reset by the close
            if not accepted:
                break
            if self.full():
                # Past max_connections: serve it anyway, rather than let the
                # listener's close reset it; joined with the pool's greenlets.
                conn = self.connection_class(self, *accepted)
                conn.greenlet = gevent.spawn(conn.serve)
                self._overflow.append(conn.greenlet)
            else:
                self.do_handle(*accepted)

    def _close_listener(self) -> None:
        self._cancel_accept_retry()
        if hasattr(self, "socket"):
            unix_path = None
            if self.socket.family == getattr(socket, "AF_UNIX", None):
                unix_path = self.socket.getsockname()
            StreamServer.close(self)
            if unix_path and self._owns_unix_path:
                try:
                    os.unlink(unix_path)
                except OSError:
                    pass

    def _close_idle(self) -> int:
        # Step 3: a deadline, not a close, so a request crossing it is served.
        # One timer ends the waits of all the connections waiting now (10,000
        # timers cost more than the closes); those that start waiting later
        # give themselves the same grace (Connection._await_next_request).
        waiting = [c for c in self.registry.in_state(ConnState.IDLE, ConnState.NEW) if c.waiting]
        if waiting:
            timer = self.loop.timer(self.config.idle_grace)
            timer.start(self._end_waits, waiting, timer)
        return len(waiting)

    @staticmethod
    def _end_waits(conns: list[Connection], timer: Any) -> None:
        timer.close()
        for conn in conns:
            conn.end_wait()

    def _wait_drained(self, deadline: Optional[float]) -> None:
        # Steps 4 and 5.
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if self.registry.wait_drained(remaining):
            return
        self.phase = ShutdownPhase.FORCING
        exempt = self._callers_in_handlers
        forced = [
            self._record_forced(conn)
            for conn in self.registry.in_state(ConnState.NEW, ConnState.ACTIVE, ConnState.IDLE)
            if conn not in exempt
        ]
        for conn in self.registry.in_state(ConnState.NEW, ConnState.ACTIVE, ConnState.IDLE):
            if conn not in exempt:
                conn.force_close()
        for item in forced:
            log.warning(
                "shutdown: forced %s connection from %s after %.1f s: %s",
                item.state.name,
                item.peer,
                item.age,
                item.request_line or "(no request)",
            )
        # Killed greenlets close their sockets on the next loop turns.
        self.registry.wait_drained(1.0)

    def _record_forced(self, conn: Connection) -> ForcedConnection:
        """Note ``conn`` as forced (once: a killed greenlet closes it a little later)."""
        item = self._forced.get(conn.id)
        if item is None:
            item = self._forced[conn.id] = ForcedConnection(conn.state, conn.peer, conn.request_line, conn.age)
        return item

    def _close_hijacked(self) -> int:
        closed = 0
        for conn in self.registry.in_state(ConnState.HIJACKED):
            if conn.sock.fileno() != -1:
                closed += 1
            conn.force_close()
        return closed

    def _join_connections(self) -> None:
        # What is left are greenlets lingering after FIN and hijack handlers
        # whose sockets were just closed: give them a moment, then end them.
        exempt = {conn.greenlet for conn in self._callers_in_handlers}
        if not exempt and not self._overflow:
            # The common case: one wait on the pool's own event, rather than
            # a link per greenlet (it matters with thousands of them).
            if not self.pool.join(timeout=self.config.idle_grace):
                self.pool.kill(block=True, timeout=1.0)
            return
        pending = [g for g in [*self.pool, *self._overflow] if g not in exempt]
        if pending:
            gevent.joinall(pending, timeout=self.config.idle_grace)
            for glet in pending:
                if not glet.dead:
                    glet.kill(block=False)
            gevent.joinall(pending, timeout=1.0)

    def _log_progress(self, deadline: Optional[float]) -> None:
        while True:
            gevent.sleep(1.0)
            counts = self.registry.counts()
            left = "" if deadline is None else f", {max(0.0, deadline - time.monotonic()):.1f} s left"
            log.info(
                "shutdown: draining: %d active, %d idle, %d new, %d hijacked%s",
                counts["active"],
                counts["idle"],
                counts["new"],
                counts["hijacked"],
                left,
            )
