"""WSGI wrappers the runner adds: the readiness probe and the access log."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Iterator, Optional

from gshutdown.wsgi import WSGIApp

access_log = logging.getLogger("gshutdown.access")


class Readiness:
    """Answers ``path`` itself: 200 while serving, 503 once draining.

    Kubernetes (or any load balancer) polls it; turning it to 503 before the
    listener closes lets the endpoint be removed while requests still succeed.
    """

    def __init__(self, app: WSGIApp, path: str = "/-/ready") -> None:
        self.app = app
        self.path = path
        self.ready = True

    def set_draining(self) -> None:
        self.ready = False

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["PATH_INFO"] != self.path:
            return self.app(environ, start_response)
        body = b"ready\n" if self.ready else b"draining\n"
        start_response(
            "200 OK" if self.ready else "503 Service Unavailable",
            [
                ("Content-Type", "text/plain"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]


class AccessLog:
    """Logs one line per request in the Common Log Format to ``gshutdown.access``."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        status: list[str] = []

        def recording_start_response(code: str, headers: Any, exc_info: Any = None) -> Any:
            status[:] = [code[:3]]
            write = start_response(code, headers, exc_info)

            def counting_write(data: bytes) -> None:
                sent[0] += len(data)
                write(data)

            return counting_write

        sent = [0]
        result = self.app(environ, recording_start_response)
        if isinstance(result, list):
            # Stay a list, so the server still sees the whole body at once.
            logged_list = _LoggedList(result)
            logged_list.log = lambda: _log(environ, status, sent[0] + sum(map(len, result)))
            return logged_list
        return _Logged(result, environ, status, sent)


class _LoggedList(list):
    log: Callable[[], None]

    def close(self) -> None:
        self.log()


class _Logged:
    def __init__(self, result: Iterable[bytes], environ: dict[str, Any], status: list[str], sent: list[int]) -> None:
        self._result = result
        self._environ = environ
        self._status = status
        self._sent = sent

    def __iter__(self) -> Iterator[bytes]:
        for data in self._result:
            self._sent[0] += len(data)
            yield data

    def close(self) -> None:
        try:
            close: Optional[Callable[[], None]] = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            _log(self._environ, self._status, self._sent[0])


def _log(env: dict[str, Any], status: list[str], sent: int) -> None:
    access_log.info(
        '%s - - [%s] "%s %s %s" %s %d',
        env.get("REMOTE_ADDR") or "-",
        time.strftime("%d/%b/%Y:%H:%M:%S %z"),
        env["REQUEST_METHOD"],
        env.get("RAW_URI", env["PATH_INFO"]),
        env["SERVER_PROTOCOL"],
        status[0] if status else "-",
        sent,
    )
