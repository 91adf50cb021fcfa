"""Test helpers: a real server in its own thread, real clients in the test.

The server runs on its own gevent hub in a background thread, so tests can use
ordinary blocking clients (``socket``, ``http.client``, ``requests``) without
monkey-patching. ``ServerThread.call()`` runs a function in the server's hub
(e.g. ``server.shutdown``) and returns its result to the test thread.
"""

from __future__ import annotations

import concurrent.futures
import queue
import socket
import threading
import time
from typing import Any, Callable, Optional

import gevent
from gevent.event import Event as GEvent
from gevent.hub import get_hub

from gshutdown import ConnState, Server


class ServerThread:
    """A ``gshutdown.Server`` on 127.0.0.1:0 (or ``listener``), in a thread."""

    def __init__(self, app: Callable[..., Any], listener: Any = ("127.0.0.1", 0), **options: Any) -> None:
        self.app = app
        self.listener = listener
        self.options = options
        self.transitions: list[tuple[int, ConnState]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._calls: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.Queue()
        self._async: Any = None
        self._stopped = False
        self.server: Server
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="gshutdown-test-server", daemon=True)

    # -- lifecycle --------------------------------------------------------

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server thread did not start")
        if self._error is not None:
            raise self._error
        return self

    def _record(self, conn: Any, state: ConnState) -> None:
        with self._lock:
            self.transitions.append((conn.id, state))

    def _run(self) -> None:
        hub = get_hub()
        user_hook = self.options.pop("conn_state", None)

        def hook(conn: Any, state: ConnState) -> None:
            self._record(conn, state)
            if user_hook is not None:
                user_hook(conn, state)

        try:
            self.server = Server(self.listener, self.app, conn_state=hook, **self.options)
            self.server.start()
        except BaseException as exc:  # surfaced in start()
            self._error = exc
            self._ready.set()
            return
        self._stop_seen = GEvent()
        self._async = hub.loop.async_()
        self._async.start(self._drain_calls)
        self._ready.set()
        self._stop_seen.wait()  # the hub runs; calls (and stop) arrive through the async watcher
        self._async.close()

    def _drain_calls(self) -> None:
        if self._stopped:
            self._stop_seen.set()
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            gevent.spawn(self._run_call, fn, future)

    @staticmethod
    def _run_call(fn: Callable[[], Any], future: concurrent.futures.Future[Any]) -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    def call_async(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args, **kwargs)`` in the server's hub; a Future of its result."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._calls.put((lambda: fn(*args, **kwargs), future))
        self._async.send()
        return future

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 30, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` in the server's hub and return its result."""
        return self.call_async(fn, *args, **kwargs).result(timeout)

    def shutdown(self, timeout: Optional[float] = None) -> Any:
        return self.call(self.server.shutdown, timeout, timeout=(timeout or 30) + 30)

    def shutdown_async(self, timeout: Optional[float] = None) -> concurrent.futures.Future[Any]:
        return self.call_async(self.server.shutdown, timeout)

    def stop(self) -> None:
        """Tear down: close everything now and end the thread (bounded)."""
        if self._thread.is_alive() and self._async is not None:
            try:
                self.call(self.server.close, timeout=5)
            except Exception:
                pass
            self._stopped = True
            self._async.send()
            self._thread.join(5)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- conveniences -------------------------------------------------------

    @property
    def address(self) -> Any:
        return self.server.address

    @property
    def port(self) -> int:
        return int(self.server.address[1])

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """A raw client socket connected to the server."""
        if isinstance(self.server.address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(self.server.address)
            return sock
        return socket.create_connection(self.server.address[:2], timeout=timeout)

    def url(self, path: str = "/") -> str:
        host = self.server.address[0]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}{path}"

    def states_of(self, conn_id: int) -> list[ConnState]:
        with self._lock:
            return [state for cid, state in self.transitions if cid == conn_id]

    def conn_ids(self) -> list[int]:
        with self._lock:
            seen: list[int] = []
            for cid, _ in self.transitions:
                if cid not in seen:
                    seen.append(cid)
            return seen


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.005) -> Any:
    """Poll ``predicate`` until it returns a true value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def read_response(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Read one complete response (Content-Length, chunked, or until EOF) from ``sock``."""
    import http.client

    sock.settimeout(timeout)
    # http.client can parse a response from a socket-like file.
    response = http.client.HTTPResponse(sock)  # type: ignore[arg-type]
    try:
        response.begin()
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, body
    finally:
        response.close()


def recv_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes (EOF); raises on timeout."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def hello_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = b"Hello, World!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
