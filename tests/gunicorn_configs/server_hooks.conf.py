# Server hooks for logging and cleanup; HOOK_LOG records each call (one line per call).
import os
import time

bind = "0.0.0.0:8000"
workers = 2
worker_class = "gevent"
preload_app = False

HOOK_LOG = os.environ.get("HOOK_LOG", "/tmp/hooks.log")


def _record(name, *details):
    with open(HOOK_LOG, "a") as fh:
        fh.write(" ".join([name, str(os.getpid()), *map(str, details)]) + "\n")


def on_starting(server):
    _record("on_starting")


def when_ready(server):
    server.log.info("Server is ready. Spawning workers")
    _record("when_ready")


def pre_fork(server, worker):
    _record("pre_fork")


def post_fork(server, worker):
    server.log.info("Worker spawned (pid: %s)", worker.pid)
    _record("post_fork", worker.pid)


def post_worker_init(worker):
    _record("post_worker_init", worker.pid)


def pre_request(worker, req):
    req.start_time = time.time()
    _record("pre_request", req.method, req.path)


def post_request(worker, req, environ, resp):
    _record("post_request", req.method, req.path, resp.status)


def worker_int(worker):
    _record("worker_int", worker.pid)


def worker_abort(worker):
    _record("worker_abort", worker.pid)


def worker_exit(server, worker):
    _record("worker_exit", worker.pid)


def child_exit(server, worker):
    _record("child_exit", worker.pid)


def nworkers_changed(server, new_value, old_value):
    _record("nworkers_changed", old_value, new_value)


def on_exit(server):
    _record("on_exit")
