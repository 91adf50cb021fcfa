"""Launchers for the servers under test, one module each.

Each module has ``NAME``, ``unavailable()`` (None, or why it cannot run here)
and ``command(opts)`` (the argv that starts it on ``opts.port``). Modules that
start a Python program of their own are also that program (``main()``).
Nothing here imports a server at import time: ``run.py`` imports them all.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parent.parent

#: Benchmark name -> module in this package, in table order.
MODULES = {
    "gshutdown": "gshutdown_cli",
    "pywsgi": "pywsgi_plain",
    "pywsgi-nodelay": "pywsgi_nodelay",
    "gunicorn-gevent": "gunicorn_gevent",
    "uwsgi-gevent": "uwsgi_gevent",
    "waitress": "waitress_threads",
    "granian": "granian_wsgi",
    "bjoern": "bjoern_libev",
    "raw-gevent": "raw_gevent",
}


@dataclass(frozen=True)
class Options:
    """How to start a server for one workload or test."""

    port: int
    #: Memory and shutdown tests: long idle timeouts, pools big enough for 10,000 connections.
    idle: bool = False
    #: Seconds a graceful stop may take (gshutdown and the pywsgi launcher).
    graceful_timeout: float = 10.0
    #: raw-gevent only: the canned body's size (13 for hello, 65536 for /64k).
    body_size: int = 13
    #: raw-gevent only: answer with ``Connection: close`` and close.
    close: bool = False
    #: Worker processes (the workers phase); 1: the single-process launchers' default.
    workers: int = 1
    #: gshutdown only: more command-line options (e.g. ``("--reuse-port",)``).
    extra_args: tuple[str, ...] = ()


def load(name: str) -> ModuleType:
    """The launcher module for benchmark name ``name``."""
    return importlib.import_module(f"servers.{MODULES[name]}")
