"""The admin listener (``--admin-bind``): the readiness and metrics paths on a port of their own.

On the application's port those paths answer whoever reaches the port,
through the proxy too. With ``--admin-bind`` they move to a listener of their
own (a loopback or pod-IP port, which is where the kubelet's probes and
Prometheus' scrapes go), and the application's port leaves them to the
application.

The admin listener is not one of the runner's servers: its connections are
not the application's (they are not in the shutdown result, the metrics'
connection counts, the heartbeats or ``--max-requests``), and it is not
drained: it answers, 503 once draining, until the process exits.

With ``--workers``, the master binds it (as root, like the application's
listeners, and before any upgrade hands it on: ``ADMIN_FD_ENV``) and every
worker serves it on the shared socket, as it serves those. Its readiness says
what the master has decided, not what one worker is doing: a worker that
retires (a reload, ``--max-requests``, SIGTTOU, an upgrade's handover) drains
while the pod goes on serving, so its probes still answer 200. Once the
master stops, it sets ``StopFlag``, a byte of memory shared with every worker
it forks, before it orders them to drain; from then on every worker answers
503, as a worker whose master is gone does. Metrics from any worker are the
sum over all of them (prometheus-client's multiprocess mode), as they are on
the application's port.
"""

from __future__ import annotations

import mmap
import os
from typing import Any, Callable, Iterable, Optional

from gshutdown.config.settings import Settings
from gshutdown.process.metrics import ProcessMetrics
from gshutdown.wsgi.adapter import WSGIApp
from gshutdown.wsgi.middleware import PROBE_METHODS, Readiness, raw_path
from gshutdown.wsgi.server import Server

#: Environment variable naming the admin listener's descriptor a new master inherits.
ADMIN_FD_ENV = "GSHUTDOWN_ADMIN_FD"
#: Connections the admin listener serves at once: probes and scrapes, never many.
ADMIN_MAX_CONNECTIONS = 64


class StopFlag:
    """One byte of anonymous shared memory: 1 once the master stops, for the workers it forks."""

    def __init__(self) -> None:
        # Anonymous and MAP_SHARED (mmap's default on Unix): a forked child sees the parent's writes.
        self._memory = mmap.mmap(-1, 1)

    def set(self) -> None:
        self._memory[0] = 1

    def is_set(self) -> bool:
        return self._memory[0] == 1


def master_serving(flag: StopFlag) -> Callable[[], bool]:
    """In a worker: whether its master still serves (it has not stopped, and it is still alive)."""
    master = os.getppid()
    return lambda: not flag.is_set() and os.getppid() == master


def usage_error(settings: Settings) -> Optional[str]:
    """Why ``--admin-bind`` cannot be used as set, or None."""
    if settings.admin_bind is not None and not settings.readiness_path and not settings.metrics_path:
        return "--admin-bind needs the readiness path or --metrics-path: it serves nothing else"
    return None


def admin_app(
    readiness_path: Optional[str],
    metrics: Optional[ProcessMetrics],
    *,
    serving: Optional[Callable[[], bool]] = None,
) -> tuple[WSGIApp, Optional[Readiness]]:
    """The admin listener's application: readiness and metrics; 404 for any other path.

    Args:
        readiness_path: the readiness path (None: none).
        metrics: the process's metrics (None: off).
        serving: asked at each readiness probe (``master_serving`` in a worker).
    """
    paths = [path for path in (readiness_path, metrics.path if metrics is not None else None) if path]
    app: WSGIApp = _refuse(paths)
    readiness = None
    if readiness_path:
        readiness = Readiness(app, readiness_path, serving=serving)
        app = readiness
    if metrics is not None:
        app = metrics.endpoint(app)
    return app, readiness


def admin_server(listener: Any, app: WSGIApp, *, multiprocess: bool = False, **options: Any) -> Server:
    """A server for the admin listener: plain HTTP with the default limits (no TLS, PROXY protocol)."""
    return Server(listener, app, multiprocess=multiprocess, max_connections=ADMIN_MAX_CONNECTIONS, **options)


def _refuse(paths: list[str]) -> WSGIApp:
    allow = ", ".join(PROBE_METHODS)

    def refuse(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        headers = [("Content-Type", "text/plain"), ("Cache-Control", "no-store")]
        if raw_path(environ) in paths:  # a known path, asked with another method
            status, body = "405 Method Not Allowed", b"method not allowed\n"
            headers.append(("Allow", allow))
        else:
            status, body = "404 Not Found", b"not found\n"
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]

    return refuse
