"""A gunicorn worker class: ``gunicorn -k gshutdown.gunicorn.Worker app:app``.

For deployments that keep gunicorn's arbiter (its process management, its
settings, its logs) but want gshutdown's shutdown in every worker. gunicorn is
imported here only, so ``import gshutdown`` never needs it
(``pip install 'gshutdown[gunicorn]'``).

The worker monkey-patches (as gunicorn's gevent worker), serves every
listener the arbiter hands it with a ``gshutdown.Server`` (one per listener,
one shared shutdown, run by a ``Runner``), and maps gunicorn's settings:

=========================  ==================================================
``keepalive``              ``idle_timeout`` (0: no keep-alive)
``worker_connections``     ``max_connections``
``graceful_timeout``       the drain's deadline, ``FORCE_MARGIN`` earlier, so
                           the worker forces, reports and exits before the
                           arbiter's SIGKILL at ``graceful_timeout``
``max_requests`` (+jitter) the request that reaches it starts a graceful
                           shutdown (it and those in flight complete with
                           ``Connection: close``) and the worker exits, so the
                           arbiter starts its replacement
``timeout``                the heartbeat, sent every ``HEARTBEAT_INTERVAL``
                           while serving and while draining
``limit_request_line``,    ``max_request_line``, ``max_header_count`` (when
``limit_request_fields``   not 0)
``accesslog``              gunicorn's access log, in ``access_log_format``
``pre_request``,           called around each request as gunicorn's workers
``post_request``           call them (the app is wrapped only when set)
``SCRIPT_NAME`` (``-e``,   the mount prefix, as for the CLI (the WSGI
``raw_env``)               adapter): ``SCRIPT_NAME`` set, stripped from
                           ``PATH_INFO``; other paths reach the app unmounted
=========================  ==================================================

Signals, with gunicorn's meaning for a worker: SIGTERM drains (again, or
after ``max_requests``, it changes nothing); SIGQUIT and SIGINT run the
``worker_int`` hook, close every connection now and exit; SIGUSR1 reopens
the log files. Hooks and jobs an application declares with
``gshutdown.on_shutdown`` and ``gshutdown.every`` run as under the CLI.

The worker exits with status 0 even when it had to force connections (they
are logged as warnings): the arbiter takes a worker's status 3 for "failed to
boot" and halts.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
from typing import Any, Callable, Iterable, Optional

import gevent
from gevent import hub, monkey
from gevent import socket as gsocket
from gunicorn.workers import base

from gshutdown.process.gunicorn_hooks import RequestHooks
from gshutdown.process.runner import Role, Runner, StopRequest, Trigger, runner_for
from gshutdown.wsgi.adapter import WSGIApp
from gshutdown.wsgi.middleware import AccessLog
from gshutdown.wsgi.server import Server

log = logging.getLogger("gshutdown")

#: Seconds between the worker's drain deadline and the arbiter's SIGKILL
#: (``graceful_timeout`` after its SIGTERM): time to force-close, run the
#: "stopped" hooks and log what was forced. At most half the timeout.
FORCE_MARGIN = 1.0
#: Seconds between heartbeats (gunicorn's gevent worker: 1 s); shorter if
#: gunicorn's ``timeout`` asks for it.
HEARTBEAT_INTERVAL = 1.0


class Worker(base.Worker):
    """gunicorn's worker contract, served by ``gshutdown.Server`` (see the module docstring)."""

    #: The arbiter's listeners; gevent sockets once ``patch()`` ran.
    sockets: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runner: Optional[Runner] = None
        #: The first graceful stop asked for (a signal or a reason), kept
        #: until the runner exists if it comes while the app still loads.
        self._stop_event: Optional[StopRequest] = None
        self._signal_handlers: list[Any] = []
        self._early_signals: list[int] = []

    # -- in the forked child, before the app loads -------------------------------

    def init_process(self) -> None:
        # Until init_signals(), the handlers are the arbiter's, inherited
        # through the fork: they would queue a signal where nobody reads it.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, self._record_early_signal)
        self.patch()
        hub.reinit()  # the arbiter's hub does not survive the fork
        self._route_logs()
        super().init_process()  # loads the app, then calls run()

    def patch(self) -> None:
        """Monkey-patch, and turn the arbiter's listeners into gevent sockets."""
        monkey.patch_all()
        self.sockets = [gsocket.socket(fileno=listener.sock.detach()) for listener in self.sockets]

    def _route_logs(self) -> None:
        """gshutdown's log lines go where gunicorn's error log goes, at its level."""
        ours = logging.getLogger("gshutdown")
        if ours.handlers:
            return  # configured already (gunicorn's logconfig_dict, say): leave it be
        error_log = self.log.error_log
        ours.addHandler(_ForwardTo(error_log))
        ours.setLevel(error_log.level)
        ours.propagate = False  # as gunicorn's own: not twice if the root logs too

    def init_signals(self) -> None:
        super().init_signals()
        # gevent's watchers replace gunicorn's handlers for these: a callback
        # runs in a greenlet of its own, where it may block, rather than in
        # whichever greenlet (the hub, even) the signal interrupted.
        for signum, handler in (
            (signal.SIGTERM, self.handle_exit),
            (signal.SIGQUIT, self.handle_quit),
            (signal.SIGINT, self.handle_quit),
            (signal.SIGUSR1, self.handle_usr1),
        ):
            self._signal_handlers.append(gevent.signal_handler(signum, handler, signum, None))
        for early in self._early_signals:
            (self.handle_exit if early == signal.SIGTERM else self.handle_quit)(early, None)

    def _record_early_signal(self, signum: int, frame: Any) -> None:
        self._early_signals.append(signum)

    # -- signals -------------------------------------------------------------------

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._stop_gracefully(sig)

    def handle_quit(self, sig: int, frame: Any) -> None:
        self.alive = False
        self.cfg.worker_int(self)
        if self.runner is None:
            sys.exit(0)  # still loading the app: nothing to close
        self.runner.deliver(sig)

    def _stop_gracefully(self, event: StopRequest) -> None:
        self.alive = False
        if self._stop_event is not None:
            return  # already draining: the first deadline stands
        self._stop_event = event
        if self.runner is not None:
            self.runner.deliver(event)

    # -- serving -------------------------------------------------------------------

    def run(self) -> None:
        app: WSGIApp = self.wsgi
        pre_request, post_request = _defined_hook(self.cfg, "pre_request"), _defined_hook(self.cfg, "post_request")
        if pre_request is not None or post_request is not None:
            # As gunicorn's workers call them, for every request: self.cfg.pre_request(self, req), ...
            app = RequestHooks(app, self, pre_request, post_request, self.log)
        if self.max_requests < sys.maxsize:
            app = self._count_requests(app)
        if getattr(self.log, "access_log_enabled", bool(self.cfg.accesslog)):
            app = AccessLog(app, self._log_access)
        servers = [Server(listener, app, **self._options()) for listener in self.sockets]
        if self.cfg.workers > 1:
            for server in servers:
                server.max_accept = 1  # gevent's; spreads accepts over the workers
        graceful = float(self.cfg.graceful_timeout)
        self.runner = runner_for(
            servers,
            graceful_timeout=max(0.0, graceful - min(FORCE_MARGIN, graceful / 2)),
            install_signals=False,
            on_ready=self.notify,
            role=Role.GUNICORN_WORKER,
        )
        if self._stop_event is not None:
            self.runner.deliver(self._stop_event)  # asked for while the app loaded
        heartbeat = gevent.spawn(self._heartbeat)
        try:
            self.runner.run()
        finally:
            heartbeat.kill(block=False)
            for handler in self._signal_handlers:
                handler.cancel()

    def _options(self) -> dict[str, Any]:
        """``Config`` fields from gunicorn's settings."""
        cfg = self.cfg
        options: dict[str, Any] = {"max_connections": cfg.worker_connections}
        if cfg.keepalive:
            options["idle_timeout"] = float(cfg.keepalive)
        else:
            options["keep_alive"] = False
        if cfg.limit_request_line:
            options["max_request_line"] = cfg.limit_request_line
        if cfg.limit_request_fields:
            options["max_header_count"] = cfg.limit_request_fields
        if cfg.limit_request_field_size:
            options["max_field_size"] = cfg.limit_request_field_size
        allowed = cfg.forwarded_allow_ips
        options["forwarded_allow_ips"] = allowed if isinstance(allowed, str) else ",".join(allowed)
        options["proxy_protocol"] = cfg.proxy_protocol not in (False, None, "off", "false")
        if cfg.is_ssl:
            # gunicorn's cert_reqs is an ssl.CERT_* number.
            options.update(
                certfile=cfg.certfile,
                keyfile=cfg.keyfile,
                ca_certs=cfg.ca_certs,
                ciphers=cfg.ciphers,
                cert_reqs={0: "none", 1: "optional", 2: "required"}.get(cfg.cert_reqs, "required"),
            )
        return options

    def _heartbeat(self) -> None:
        interval = min(HEARTBEAT_INTERVAL, self.timeout) if self.timeout else HEARTBEAT_INTERVAL
        while True:
            self.notify()
            if self.ppid != os.getppid() and self._stop_event is None:
                log.warning("arbiter %s is gone: stopping gracefully", self.ppid)
                self._stop_gracefully(Trigger.MASTER_GONE)
            gevent.sleep(interval)

    def _count_requests(self, app: WSGIApp) -> WSGIApp:
        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            self.nr += 1
            if self.nr == self.max_requests:
                log.info("max requests (%d) reached: draining to be replaced", self.max_requests)
                self._stop_gracefully(Trigger.MAX_REQUESTS)
                # Until the shutdown has begun (a few loop turns), so that this
                # response already carries Connection: close.
                environ["gshutdown.shutting_down"].wait(1.0)
            return app(environ, start_response)

        return counted

    def _log_access(
        self, environ: dict[str, Any], status: str, headers: list[tuple[str, str]], sent: int, seconds: float
    ) -> None:
        request = environ["gshutdown.connection"].request
        self.log.access(
            _AccessResponse(status, headers, sent),
            request.headers if request is not None else [],
            environ,
            datetime.timedelta(seconds=seconds),
        )


def _defined_hook(cfg: Any, name: str) -> Optional[Callable[..., Any]]:
    """gunicorn's hook ``name`` if the configuration set one (not gunicorn's default), else None."""
    setting = cfg.settings[name]
    return None if setting.value is setting.default else setting.value


class _ForwardTo(logging.Handler):
    """Hands every record to another logger's handlers."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)


class _AccessResponse:
    """What gunicorn's ``Logger.access`` reads of a response."""

    def __init__(self, status: str, headers: list[tuple[str, str]], sent: int) -> None:
        self.status = status or "-"
        self.headers = headers
        self.sent = sent
