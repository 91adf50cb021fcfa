"""gunicorn's server hooks, called at gunicorn's moments with the arguments gunicorn gives.

(Over 500 lines: the stand-ins for gunicorn's arbiter, worker, request and
response objects that hooks touch, each small, beside the one class that
calls the hooks.)

A configuration file written for gunicorn defines hooks as functions
(``post_fork``, ``pre_request``, ...); ``config_file`` hands them over in
``Settings.hooks`` and ``ServerHooks`` calls them. ``server`` stands for
gunicorn's arbiter (the master), ``worker`` for a worker process. Without
``--workers`` the one process is both: it calls the worker's hooks too, at the
equivalent moments, so a file written for gunicorn's one default worker
behaves the same (psycogreen's ``post_fork`` patch is in place before the app
is imported).

==================  ===================================  ===================================
hook                with ``--workers N``                 single process
==================  ===================================  ===================================
nworkers_changed    master: at start ``(N, None)``;       at start ``(1, None)``
                    SIGTTIN/SIGTTOU ``(new, old)``
on_starting         master, before binding               before binding
when_ready          master: bound, before the first fork  bound, before serving
pre_fork            master, before each fork             after on_starting
post_fork           the new worker, before anything      after pre_fork, before the app is
                    else (the app is not imported yet)   imported
post_worker_init    worker: app loaded and bound,        the same
                    before serving
pre_request         each request, before the app         the same
post_request        each request, its response sent      the same
worker_int          worker: SIGINT or SIGQUIT arrived    the same
worker_abort        worker: ``--timeout`` found its      (no ``--timeout``)
                    event loop blocked, before SIGKILL
worker_exit         worker, once it stopped serving      once it stopped serving
child_exit          master, once it reaped a worker      after worker_exit
on_reload           master: SIGHUP, before it forks      (no reload)
pre_exec            SIGUSR2: the new master, before exec  (no upgrade)
on_exit             master, last                         last
ssl_context         each server's TLS context            the same
==================  ===================================  ===================================

A hook that raises does what it does under gunicorn: ``on_starting`` and
``when_ready`` abort the start (exit status 1), ``pre_request`` turns its
request into a 500; every other hook is logged with its traceback and the
server goes on. ``pre_request``/``post_request`` cost nothing when they are not
defined: the application is wrapped only when one is.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import ssl
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence, Union
from urllib.parse import urlsplit

from gshutdown.config.addresses import describe_listener
from gshutdown.config.config_file import positional_parameters
from gshutdown.config.gunicorn_names import GUNICORN_NAMES, SETTING_FOR
from gshutdown.config.settings import Settings
from gshutdown.process import logs
from gshutdown.process.exit_status import ExitStatus, fail
from gshutdown.wsgi.adapter import WSGIApp
from gshutdown.wsgi.middleware import on_close

if TYPE_CHECKING:  # pragma: no cover
    from gshutdown.wsgi.server import Server

log = logging.getLogger("gshutdown")
#: What hooks get as ``server.log`` and ``worker.log``.
hook_log = logging.getLogger("gshutdown.hooks")

Hook = Callable[..., Any]
#: ``post_request(worker, req, environ, resp)``, whatever the hook's own arity.
PostRequest = Callable[[Any, "HookRequest", dict[str, Any], "HookResponse"], Any]


class HookConfig:
    """``server.cfg``, ``worker.cfg``: the settings, by gunicorn's names or ours.

    Where a gunicorn name means something else than ours, gunicorn's meaning
    wins: ``workers`` is 1 for the single process (gunicorn's default of one
    worker), ``bind`` is a list of ``"HOST:PORT"`` strings, ``env`` a dict.
    gunicorn settings that mean nothing here (``proc_name``, ...) read None.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @property
    def settings_object(self) -> Settings:
        """The ``Settings`` behind these names."""
        return self._settings

    @property
    def workers(self) -> int:
        return max(1, self._settings.workers)

    @property
    def bind(self) -> list[str]:
        return [describe_listener(listener) for listener in self._settings.bind]

    @property
    def env(self) -> dict[str, str]:
        return dict(item.partition("=")[::2] for item in self._settings.raw_env)

    @property
    def is_ssl(self) -> bool:
        return bool(self._settings.certfile)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in Settings.__dataclass_fields__:
            return getattr(self._settings, name)
        ours = SETTING_FOR.get(name)
        if ours is not None:
            return getattr(self._settings, ours)
        if name in GUNICORN_NAMES:
            return None  # a gunicorn setting that means nothing here: a hook reading it goes on
        raise AttributeError(f"gshutdown has no setting {name!r}")


class HookWorker:
    """What hooks get as ``worker``: gunicorn's ``Worker`` attributes that hooks read."""

    def __init__(self, age: int, ppid: int, cfg: HookConfig) -> None:
        #: This worker's number in spawn order, from 1 (gunicorn's ``age``).
        self.age = age
        #: The process id; ``"[booting]"`` before the fork, as gunicorn's.
        self.pid: Union[int, str] = "[booting]"
        #: The master's pid (the process's own when it is the single process).
        self.ppid = ppid
        self.cfg = cfg
        self.log = hook_log
        #: False once the worker has been told to stop.
        self.alive = True
        #: True once the application is loaded.
        self.booted = False
        #: The WSGI application, once loaded.
        self.wsgi: Optional[WSGIApp] = None
        self._count_requests: Callable[[], int] = lambda: 0

    @property
    def nr(self) -> int:
        """Requests read so far."""
        return self._count_requests()

    def __repr__(self) -> str:
        return f"<worker {self.pid} (age {self.age})>"


class HookServer:
    """What hooks get as ``server``: gunicorn's ``Arbiter`` attributes that hooks read."""

    def __init__(self, settings: Settings) -> None:
        self.cfg = HookConfig(settings)
        self.log = hook_log
        self.pid = os.getpid()
        self.num_workers = max(1, settings.workers)
        #: Live workers by pid (the master's; a worker has its copy from the fork).
        self.WORKERS: dict[int, HookWorker] = {}
        #: Workers spawned so far.
        self.worker_age = 0

    def __repr__(self) -> str:
        return f"<server {self.pid}>"


class HookRequest:
    """What ``pre_request`` and ``post_request`` get as ``req`` (gunicorn's ``Request``).

    ``headers`` holds ``(NAME, value)`` pairs, names upper-cased as gunicorn's;
    pairs ``pre_request`` appends reach the application's environ.
    """

    # __dict__: hooks keep their own attributes on it (``req.start_time = time.time()``
    # in pre_request, read in post_request), as on gunicorn's plain object.
    __slots__ = (
        "__dict__",
        "body",
        "fragment",
        "headers",
        "method",
        "path",
        "peer_addr",
        "query",
        "remote_addr",
        "scheme",
        "trailers",
        "uri",
        "version",
    )

    def __init__(self, environ: dict[str, Any]) -> None:
        self.method: str = environ["REQUEST_METHOD"]
        uri: str = environ.get("RAW_URI") or environ["PATH_INFO"]
        self.uri = uri
        if uri[:1] == "/":  # origin-form, nearly every request: no need for urlsplit
            before_fragment, _, self.fragment = uri.partition("#")
            self.path, _, self.query = before_fragment.partition("?")
        elif uri == "*":
            self.path, self.query, self.fragment = "*", "", ""
        else:
            target = urlsplit(uri)
            self.path, self.query, self.fragment = target.path, target.query, target.fragment
        self.version = (1, 1) if environ.get("SERVER_PROTOCOL") == "HTTP/1.1" else (1, 0)
        conn = environ.get("gshutdown.connection")
        request = conn.request if conn is not None else None
        fields: Sequence[tuple[str, str]] = request.headers if request is not None else ()
        self.headers: list[tuple[str, str]] = [(name.upper(), value) for name, value in fields]
        self.trailers: list[tuple[str, str]] = []
        self.scheme: str = environ.get("wsgi.url_scheme", "http")
        self.peer_addr = self.remote_addr = (environ.get("REMOTE_ADDR", ""), int(environ.get("REMOTE_PORT") or 0))
        self.body = environ.get("wsgi.input")

    def __repr__(self) -> str:
        return f"<request {self.method} {self.uri}>"


class HookResponse:
    """What ``post_request`` gets as ``resp`` (gunicorn's ``Response``)."""

    __slots__ = ("headers", "headers_sent", "response_length", "sent", "status", "status_code")

    def __init__(self) -> None:
        #: The status line the application gave (``"200 OK"``); None if it gave none.
        self.status: Optional[str] = None
        self.status_code: Optional[int] = None
        #: The header fields the application gave.
        self.headers: list[tuple[str, str]] = []
        self.headers_sent = False
        #: Its Content-Length, if it gave one.
        self.response_length: Optional[int] = None
        #: Body bytes sent.
        self.sent = 0

    def start(self, status: str, headers: list[tuple[str, str]]) -> None:
        self.status = status
        try:
            self.status_code = int(status.split(None, 1)[0])
        except (ValueError, IndexError, AttributeError):
            self.status_code = None
        self.headers = list(headers)
        for name, value in self.headers:
            if name.lower() == "content-length" and value.isdigit():
                self.response_length = int(value)

    def __repr__(self) -> str:
        return f"<response {self.status}>"


def environ_key(name: str) -> str:
    """The environ key of a header field named ``name``, as gunicorn maps it."""
    upper = name.upper()
    if upper in ("CONTENT-TYPE", "CONTENT-LENGTH"):
        return upper.replace("-", "_")
    return "HTTP_" + upper.replace("-", "_")


class RequestHooks:
    """A WSGI wrapper that calls ``pre_request`` and ``post_request`` around the application.

    Args:
        app: the application.
        worker: what the hooks get as ``worker``.
        pre_request: ``pre_request(worker, req)``: before the application;
            if it raises, the request gets a 500 (the exception propagates).
        post_request: ``post_request(worker, req, environ, resp)``: once the
            response is sent (or failed); if it raises, it is logged.
        error_log: where a raising ``post_request`` is logged.
    """

    def __init__(
        self,
        app: WSGIApp,
        worker: Any,
        pre_request: Optional[Hook],
        post_request: Optional[PostRequest],
        error_log: Any = log,
    ) -> None:
        self.app = app
        self.worker = worker
        self.pre_request = pre_request
        self.post_request = post_request
        self.error_log = error_log

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        req = HookRequest(environ)
        resp = HookResponse()
        if self.pre_request is not None:
            given = len(req.headers)
            try:
                self.pre_request(self.worker, req)
            except BaseException:
                # gunicorn still calls post_request, then answers 500.
                self._post(req, environ, resp)
                raise
            for name, value in req.headers[given:]:
                key = environ_key(name)
                environ[key] = f"{environ[key]},{value}" if key in environ else value
        if self.post_request is None:
            return self.app(environ, start_response)

        def recording_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            write = start_response(status, headers, exc_info)
            resp.start(status, headers)

            def counting_write(data: bytes) -> None:
                write(data)
                resp.headers_sent = True
                resp.sent += len(data)

            return counting_write

        try:
            result = self.app(environ, recording_start_response)
        except BaseException:
            self._post(req, environ, resp)
            raise

        def finish(body_sent: int) -> None:
            # Closed by the server: the head went out with the response.
            resp.sent += body_sent
            resp.headers_sent = resp.status is not None
            self._post(req, environ, resp)

        return on_close(result, finish)

    def _post(self, req: HookRequest, environ: dict[str, Any], resp: HookResponse) -> None:
        if self.post_request is None:
            return
        try:
            self.post_request(self.worker, req, environ, resp)
        except Exception:
            self.error_log.exception("Exception in post_request hook")


def post_request_of(hook: Hook) -> PostRequest:
    """``hook`` called as ``(worker, req, environ, resp)`` whatever of those it takes (gunicorn: 2 to 4)."""
    given = positional_parameters(hook)
    if given == 2:
        return lambda worker, req, environ, resp: hook(worker, req)
    if given == 3:
        return lambda worker, req, environ, resp: hook(worker, req, environ)
    return hook


class ServerHooks:
    """The hooks of one process tree, and the ``server``/``worker`` objects they get.

    The master (or the single process) makes one; a forked worker goes on
    with its copy, holding its own ``worker``.
    """

    def __init__(self, settings: Settings) -> None:
        self.functions: Mapping[str, Hook] = settings.hooks
        self.server = HookServer(settings)
        #: This process's worker (a forked worker's, or the single process's).
        self.worker: Optional[HookWorker] = None
        #: on_starting or when_ready raised: the start is abandoned, no more hooks.
        self.aborted = False

    def defined(self, name: str) -> bool:
        return name in self.functions

    def call(self, name: str, *args: Any) -> Any:
        """Call hook ``name`` if defined; log what it raises, with the traceback; its result or None."""
        function = self.functions.get(name)
        if function is None:
            return None
        try:
            return function(*args)
        except Exception:
            log.exception("gunicorn hook %s raised; carrying on", name)
            return None

    def _call_or_fail(self, name: str, *args: Any) -> Optional[ExitStatus]:
        # on_starting and when_ready: gunicorn does not start when they raise.
        function = self.functions.get(name)
        if function is None:
            return None
        try:
            function(*args)
        except Exception as exc:
            self.aborted = True
            log.exception("gunicorn hook %s raised", name)
            return fail(f"the {name} hook raised {type(exc).__name__}: {exc}", ExitStatus.START_FAILED)
        return None

    # -- the master's (or the single process's) moments ------------------------------

    def starting(self) -> Optional[ExitStatus]:
        """``nworkers_changed(server, N, None)``, then ``on_starting``; an exit status if that raised."""
        self.call("nworkers_changed", self.server, self.server.num_workers, None)
        return self._call_or_fail("on_starting", self.server)

    def ready(self) -> Optional[ExitStatus]:
        """``when_ready``: listening, before any worker serves; an exit status if it raised."""
        return self._call_or_fail("when_ready", self.server)

    def workers_changed(self, new: int, old: int) -> None:
        self.server.num_workers = new
        self.call("nworkers_changed", self.server, new, old)

    def reconfigure(self, settings: Settings) -> None:
        """A master's SIGHUP re-read the config file: its hooks and ``server.cfg`` from now on."""
        self.functions = settings.hooks
        self.server.cfg = HookConfig(settings)

    def reloading(self) -> None:
        self.call("on_reload", self.server)

    def before_exec(self) -> None:
        self.call("pre_exec", self.server)

    def exiting(self) -> None:
        self.call("on_exit", self.server)

    # -- workers, from the master's side --------------------------------------------

    def before_fork(self) -> HookWorker:
        """A new worker's object, after ``pre_fork`` got it."""
        self.server.worker_age += 1
        worker = HookWorker(self.server.worker_age, self.server.pid, self.server.cfg)
        self.call("pre_fork", self.server, worker)
        return worker

    def forked(self, pid: int, worker: HookWorker) -> None:
        worker.pid = pid
        self.server.WORKERS[pid] = worker

    def reaped(self, pid: int) -> None:
        """``child_exit`` for the worker ``pid``, reaped just now."""
        worker = self.server.WORKERS.pop(pid, None)
        if worker is not None:
            worker.alive = False
            self.call("child_exit", self.server, worker)

    # -- in the worker ------------------------------------------------------------------

    def became(self, worker: HookWorker) -> None:
        """In the new worker process: ``post_fork``, before anything else."""
        worker.pid = os.getpid()
        self.worker = worker
        self.call("post_fork", self.server, worker)

    def app_loaded(self, app: WSGIApp, servers: Sequence[Server]) -> None:
        """``post_worker_init``: the application is loaded and bound; nothing served yet."""
        worker = self.worker
        if worker is None:
            return
        worker.wsgi = app
        worker.booted = True
        worker._count_requests = lambda: sum(server.requests_total for server in servers)
        self.call("post_worker_init", worker)

    def wrap_app(self, app: WSGIApp) -> WSGIApp:
        """``app`` with ``pre_request``/``post_request`` around it; ``app`` itself when neither is defined."""
        pre = self.functions.get("pre_request")
        post = self.functions.get("post_request")
        if pre is None and post is None:
            return app
        return RequestHooks(app, self.worker, pre, post_request_of(post) if post is not None else None)

    def use_tls_context(self, servers: Sequence[Server]) -> None:
        """Each HTTPS server's TLS context as ``ssl_context(cfg, default_ssl_context_factory)`` returns it."""
        if not self.defined("ssl_context"):
            return
        from gshutdown.server.tls import server_context

        for server in servers:
            if server.ssl_context is None:
                continue
            context = self.call("ssl_context", self.server.cfg, functools.partial(server_context, server.config))
            if isinstance(context, ssl.SSLContext):
                server.ssl_context = context
            elif context is not None:
                log.error("the ssl_context hook returned %r, not an SSLContext: serving with the default", context)

    def signalled(self, signum: int) -> None:
        """``worker_int`` when SIGINT or SIGQUIT reaches the worker."""
        if signum in (signal.SIGINT, signal.SIGQUIT) and self.worker is not None:
            self.worker.alive = False
            self.call("worker_int", self.worker)

    def install_stack_dump(self, signum: int) -> None:
        """The master's "your loop is blocked" signal: the stack dump, then ``worker_abort``.

        The dump is written from C (``logs.install_stack_dump``); the hook runs
        as soon as Python runs again in the main thread, before the master's
        SIGKILL a moment later.
        """
        worker = self.worker
        if worker is not None and self.defined("worker_abort"):

            def abort(_signum: int, _frame: Any) -> None:
                worker.alive = False
                self.call("worker_abort", worker)

            signal.signal(signum, abort)
            logs.install_stack_dump(signum, chain=True)
        else:
            logs.install_stack_dump(signum)

    def worker_exited(self) -> None:
        """``worker_exit``: this worker stopped serving."""
        worker = self.worker
        if worker is None:
            return
        worker.alive = False
        function = self.functions.get("worker_exit")
        if function is None:
            return
        try:
            function(self.server, worker)
        except Exception:
            log.warning("Exception during worker exit", exc_info=True)

    # -- the single process: master and worker at once -----------------------------------

    def single_process_starting(self) -> Optional[ExitStatus]:
        """What a master and its one worker call before the app is imported; an exit status if start-up fails."""
        failed = self.starting()
        if failed is not None:
            return failed
        worker = self.before_fork()
        self.forked(os.getpid(), worker)
        self.became(worker)
        return None

    def single_process_exited(self) -> None:
        """What the worker and then the master call once serving is over."""
        if self.aborted:
            return
        self.worker_exited()
        self.reaped(os.getpid())
        self.exiting()
