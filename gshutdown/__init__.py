"""gshutdown: an HTTP/1.1 WSGI server on gevent that shuts down gracefully."""

from gshutdown.config.addresses import bind_unix
from gshutdown.config.server_config import Config
from gshutdown.process.runner import Runner, run
from gshutdown.server.connection import Connection
from gshutdown.server.errors import BadRequestBody, BodyTimeout, ClientDisconnected, HijackRefused
from gshutdown.server.hooks import HookOutcome, HookPhase, on_shutdown
from gshutdown.server.http_server import HTTPServer
from gshutdown.server.jobs import every
from gshutdown.server.shutdown import ForcedConnection, ShutdownPhase, ShutdownResult
from gshutdown.server.state import TRANSITIONS, ConnState, IllegalTransition
from gshutdown.wsgi.server import Server

__version__ = "0.1.0"

__all__ = [
    "TRANSITIONS",
    "BadRequestBody",
    "BodyTimeout",
    "ClientDisconnected",
    "Config",
    "ConnState",
    "Connection",
    "ForcedConnection",
    "HTTPServer",
    "HijackRefused",
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
