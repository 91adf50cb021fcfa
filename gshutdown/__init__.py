"""gshutdown: an HTTP/1.1 WSGI server on gevent that shuts down gracefully."""

from gshutdown.addresses import bind_unix
from gshutdown.config import Config
from gshutdown.conn import BadRequestBody, ClientDisconnected, Connection
from gshutdown.hooks import HookOutcome, HookPhase, on_shutdown
from gshutdown.jobs import every
from gshutdown.runner import Runner, run
from gshutdown.server import (
    ForcedConnection,
    Server,
    ShutdownPhase,
    ShutdownResult,
)
from gshutdown.state import TRANSITIONS, ConnState, IllegalTransition

__version__ = "0.1.0"

__all__ = [
    "TRANSITIONS",
    "BadRequestBody",
    "ClientDisconnected",
    "Config",
    "ConnState",
    "Connection",
    "ForcedConnection",
    "HookOutcome",
    "HookPhase",
    "IllegalTransition",
    "Runner",
    "Server",
    "ShutdownPhase",
    "ShutdownResult",
    "__version__",
    "bind_unix",
    "every",
    "on_shutdown",
    "run",
]
