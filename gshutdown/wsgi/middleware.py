"""WSGI wrappers the runner adds: the readiness probe and the access log."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator, Optional

from gshutdown.server.errors import BodyTimeout
from gshutdown.wsgi import access_format
from gshutdown.wsgi.access_format import AccessEmit, access_log
from gshutdown.wsgi.adapter import WSGIApp
from gshutdown.wsgi.file_wrapper import FileWrapper

#: The methods a probe or a scraper sends; any other goes to the application.
PROBE_METHODS = ("GET", "HEAD")


def raw_path(environ: dict[str, Any]) -> str:
    """The request target's path as the client sent it: not percent-decoded, query left off.

    ``PATH_INFO`` is decoded, so ``/-/%72eady`` would match ``/-/ready`` there;
    a proxy that blocks ``/-/ready`` by its text would let that one through.
    Without ``RAW_URI`` (another server), ``PATH_INFO``.
    """
    target = environ.get("RAW_URI")
    if target is None:
        return str(environ.get("PATH_INFO", ""))
    return str(target).partition("?")[0]


def asks_for(environ: dict[str, Any], path: str) -> bool:
    """``environ`` is a GET or HEAD of exactly ``path``, as sent (see ``raw_path``)."""
    return environ["REQUEST_METHOD"] in PROBE_METHODS and raw_path(environ) == path


class Readiness:
    """Answers a GET or HEAD of ``path`` itself: 200 while serving, 503 once draining.

    Kubernetes (or any load balancer) polls it; turning it to 503 before the
    listener closes lets the endpoint be removed while requests still succeed.
    ``path`` is matched against the target as sent (``raw_path``); other
    methods on it go to ``app``.

    Args:
        app: the application behind it.
        path: the readiness path.
        serving: also asked at each probe; False answers 503 (a worker's
            admin listener asks whether its master still serves).
    """

    def __init__(self, app: WSGIApp, path: str = "/-/ready", *, serving: Optional[Callable[[], bool]] = None) -> None:
        self.app = app
        self.path = path
        self.ready = True
        self.serving = serving

    def set_draining(self) -> None:
        self.ready = False

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not asks_for(environ, self.path):
            return self.app(environ, start_response)
        ready = self.ready and (self.serving is None or self.serving())
        body = b"ready\n" if ready else b"draining\n"
        start_response(
            "200 OK" if ready else "503 Service Unavailable",
            [
                ("Content-Type", "text/plain"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]


class AccessLog:
    """Logs one line per request: by default in the Common Log Format to ``gshutdown.access``.

    A request whose body the server cut for being too slow is logged with
    the status that went out: the server's 408, or the application's status
    if its response had begun.

    Args:
        app: the WSGI application.
        emit: an ``AccessEmit`` that writes the line instead (another logger's format).
    """

    def __init__(self, app: WSGIApp, emit: Optional[AccessEmit] = None) -> None:
        self.app = app
        self.emit: AccessEmit = emit or access_format.emitter(None, access_log)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        began = time.monotonic()
        response: list[Any] = ["", []]  # status line, headers
        sent = [0]

        def recording_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            response[:] = [status, headers]
            write = start_response(status, headers, exc_info)

            def counting_write(data: bytes) -> None:
                sent[0] += len(data)
                write(data)

            return counting_write

        def finish(body_sent: int) -> None:
            status, headers, size = response[0], response[1], sent[0] + body_sent
            conn = environ.get("gshutdown.connection")
            if conn is not None and conn.body_cut and conn.cut_status != status:
                status, headers, size = conn.cut_status, [], 0  # the server's own answer
            self.emit(environ, status, headers, size, time.monotonic() - began)

        try:
            result = self.app(environ, recording_start_response)
        except BodyTimeout:
            finish(0)
            raise
        return on_close(result, finish)


def on_close(result: Iterable[bytes], finish: Callable[[int], None]) -> Iterable[bytes]:
    """``result``, calling ``finish(body bytes sent)`` once the server closes it (PEP 3333's ``close``).

    What the server special-cases stays so: a list stays a list (a one-piece
    body goes out at once, with its Content-Length), a ``wsgi.file_wrapper``
    result stays one (it can still be sent with ``sendfile``).
    """
    if isinstance(result, list):
        closing_list = _ClosingList(result)
        closing_list.finish = lambda: finish(sum(map(len, result)))
        return closing_list
    if isinstance(result, FileWrapper):
        return _ClosingFile(result, finish)
    return _Closing(result, finish)


class _ClosingList(list):
    finish: Callable[[], None]

    def close(self) -> None:
        self.finish()


class _ClosingFile(FileWrapper):
    """A ``wsgi.file_wrapper`` result that reports its bytes when the server closes it."""

    __slots__ = ("_finish", "_wrapped")

    def __init__(self, wrapped: FileWrapper, finish: Callable[[int], None]) -> None:
        super().__init__(wrapped.filelike, wrapped.block_size)
        self._wrapped = wrapped
        self._finish = finish

    def close(self) -> None:
        try:
            self._wrapped.close()
        finally:
            self._finish(self.sent)


class _Closing:
    def __init__(self, result: Iterable[bytes], finish: Callable[[int], None]) -> None:
        self._result = result
        self._finish = finish
        self._sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for data in self._result:
            self._sent += len(data)
            yield data

    def close(self) -> None:
        try:
            close: Optional[Callable[[], None]] = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._finish(self._sent)
