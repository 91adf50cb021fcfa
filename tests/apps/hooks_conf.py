"""A configuration file (gshutdown's ``-c`` or gunicorn's) defining every gunicorn server hook.

Each hook appends one JSON line to ``$HOOK_LOG``: its name, the process it ran
in, and what it read of its arguments, so tests check order and arguments
from the effects. Hooks named in ``$HOOK_RAISE`` (comma-separated) raise
``RuntimeError`` after recording. With ``$HOOK_PSYCOGREEN`` set, ``post_fork``
makes psycopg2 cooperative, as gevent + PostgreSQL deployments do.

``pre_request`` appends an ``X-Hooked-By`` header for the app to see, and
raises for ``/boom``; ``post_request`` raises for ``/late``.
"""

import json
import os
import ssl
import sys

_APP_MODULE = "tests.apps.hooks_app"


def _record(name, **fields):
    fields.update(hook=name, pid=os.getpid())
    with open(os.environ["HOOK_LOG"], "a") as log:
        log.write(json.dumps(fields) + "\n")
    if name in os.environ.get("HOOK_RAISE", "").split(","):
        raise RuntimeError(f"{name} hook failed on purpose")


def nworkers_changed(server, new_value, old_value):
    _record("nworkers_changed", new=new_value, old=old_value, num_workers=server.num_workers)


def on_starting(server):
    cfg = server.cfg
    _record("on_starting", server_pid=server.pid, workers=cfg.workers, bind=cfg.bind, proc_name=cfg.proc_name)


def when_ready(server):
    _record("when_ready", server_pid=server.pid, log=type(server.log).__name__)


def pre_fork(server, worker):
    _record("pre_fork", age=worker.age, worker_pid=str(worker.pid), server_pid=server.pid)


def post_fork(server, worker):
    if os.environ.get("HOOK_PSYCOGREEN"):
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()
    _record(
        "post_fork",
        age=worker.age,
        worker_pid=worker.pid,
        ppid=worker.ppid,
        server_pid=server.pid,
        app_imported=_APP_MODULE in sys.modules,
    )


def post_worker_init(worker):
    imported = _APP_MODULE in sys.modules
    _record("post_worker_init", age=worker.age, worker_pid=worker.pid, booted=worker.booted, app_imported=imported)


def pre_request(worker, req):
    _record(
        "pre_request",
        worker_pid=worker.pid,
        method=req.method,
        path=req.path,
        query=req.query,
        uri=req.uri,
        version=list(req.version),
        headers=req.headers,
    )
    req.headers.append(("X-Hooked-By", f"pre_request {worker.pid}"))
    if req.path.endswith("/boom"):
        raise RuntimeError("pre_request refused /boom")


def post_request(worker, req, environ, resp):
    _record(
        "post_request",
        worker_pid=worker.pid,
        path=req.path,
        environ_path=environ.get("PATH_INFO"),
        status=resp and resp.status,
        status_code=resp and resp.status_code,
        sent=resp and resp.sent,
        headers=resp and [list(pair) for pair in resp.headers],
    )
    if req.path.endswith("/late"):
        raise RuntimeError("post_request failed for /late")


def worker_int(worker):
    _record("worker_int", worker_pid=worker.pid)


def worker_abort(worker):
    _record("worker_abort", worker_pid=worker.pid)


def worker_exit(server, worker):
    _record("worker_exit", worker_pid=worker.pid, server_pid=server.pid)


def child_exit(server, worker):
    _record("child_exit", worker_pid=worker.pid, age=worker.age)


def on_reload(server):
    _record("on_reload", server_pid=server.pid)


def pre_exec(server):
    _record("pre_exec", server_pid=server.pid)


def on_exit(server):
    _record("on_exit", server_pid=server.pid)


def ssl_context(config, default_ssl_context_factory):
    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    _record("ssl_context", certfile=config.certfile)
    return context
