"""The WSGI adapter: environ, ``wsgi.input``, ``start_response`` and the body.

(Over 500 lines: environ, ``wsgi.input``, ``start_response`` and body framing
are one request's pieces and share its ``Response``; WebSockets are
``websocket``, files ``file_wrapper``.)

One ``WSGIAdapter`` per server calls the application once per request. The
response head is encoded when the first body bytes are ready (or when the
body turns out empty), not at ``start_response`` time, so the keep-alive
decision reflects the server's state at the moment the head goes out.

Integrity rules (the server keeps serving in every case):
- An exception before the head is sent gives a 500 with no traceback shown
  to the client; after it, the connection is closed mid-response.
- Invalid status or header fields from the application raise in
  ``start_response`` and so become a 500 rather than reaching the wire.
- A body longer than its Content-Length is cut off and the connection
  closed; a shorter one closes the connection too (the client would wait).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional
from urllib.parse import unquote_to_bytes

from gevent import GreenletExit

from gshutdown.protocol.events import Request
from gshutdown.protocol.forwarded import ContradictoryScheme, apply_forwarded, secure_scheme, secure_scheme_keys
from gshutdown.protocol.writer import LAST_CHUNK, ResponseHead, chunk, encode_head
from gshutdown.server.errors import BadRequestBody, ClientDisconnected, HijackRefused
from gshutdown.server.state import HIJACKED
from gshutdown.wsgi.file_wrapper import FileWrapper
from gshutdown.wsgi.websocket import WebSockets

if TYPE_CHECKING:  # pragma: no cover
    from gshutdown.server.connection import Connection
    from gshutdown.server.http_server import HTTPServer

log = logging.getLogger("gshutdown")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|^[ \t]|[ \t]\Z")
_STATUS = re.compile(r"[1-9][0-9][0-9] [^\x00-\x08\x0a-\x1f\x7f]*\Z")
_CLIENT_GONE = (ClientDisconnected,)
# A first body write this long (bytes) goes out beside its head (sendmsg)
# rather than copied after it: below it, joining costs less than the call.
_SEPARATE_BODY = 16 * 1024

# Header name -> environ key, for the names clients actually send.
_ENVIRON_KEYS: dict[str, Optional[str]] = {}
_MAX_ENVIRON_KEYS = 1024


def _environ_key(name: str) -> Optional[str]:
    """The environ key for a header name not in ``_ENVIRON_KEYS`` yet (None: dropped)."""
    if "_" in name:
        # X_Forwarded_For would collide with X-Forwarded-For in environ:
        # drop it, as gunicorn and nginx do, rather than let it spoof.
        key = None
    else:
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
    if len(_ENVIRON_KEYS) < _MAX_ENVIRON_KEYS:
        _ENVIRON_KEYS[name] = key
    return key


def _unread_body_too_big(conn: Connection, request: Request) -> bool:
    """Whether the rest of an unfinished body is more than the server would discard."""
    for name, value in request.headers:
        if name.lower() == "content-length":
            return int(value) - conn.body_received > conn.config.max_discard_body
    return False


# (status, headers) pairs that passed _validate(): an application sends the same
# few again and again. Bounded like the writer's cache of prepared heads.
_VALID_HEADS: set[tuple[Any, ...]] = set()
_MAX_VALID_HEADS = 512


def _validate(status: Any, headers: Any) -> None:
    """Raise ValueError unless ``start_response`` got a status and fields fit for the wire."""
    if type(status) is not str or not _STATUS.match(status):
        raise ValueError(f"invalid status {status!r}")
    if status[0] == "1":
        # Informational responses are the server's (100 Continue) or need the
        # socket (101: hijack it); sent as final, they would break framing.
        raise ValueError(f"a 1xx status cannot be a final response: {status!r}")
    has_length = False
    for item in headers:
        name, value = item
        if type(name) is not str or not _TOKEN.match(name):
            raise ValueError(f"invalid header name {name!r}")
        if type(value) is not str or _BAD_VALUE.search(value):
            raise ValueError(f"invalid value for header {name!r}: {value!r}")
        lname = name.lower()
        if lname == "content-length":
            if has_length or not (value.isascii() and value.isdigit()):
                raise ValueError(f"invalid or repeated Content-Length {value!r}")
            has_length = True
        if lname == "transfer-encoding":
            raise ValueError("Transfer-Encoding is the server's to set (hop-by-hop)")


def _declared_length(headers: tuple[tuple[str, str], ...]) -> Optional[int]:
    """The Content-Length among validated ``headers``, if any."""
    for name, value in headers:
        if name.lower() == "content-length":
            return int(value)
    return None


class _ResponseTooLong(Exception):
    pass


class Input:
    """``wsgi.input``: the request body, streamed from the socket on demand."""

    __slots__ = ("_buf", "_conn")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._buf = bytearray()

    def read(self, size: Optional[int] = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when ``size`` is -1 or None)."""
        buf = self._buf
        read_body = self._conn.read_body
        if size is None or size < 0:
            pieces = [bytes(buf)] if buf else []
            buf.clear()
            while True:
                data = read_body()
                if not data:
                    break
                pieces.append(data)
            return b"".join(pieces)
        got = len(buf)
        if got >= size:
            out = bytes(buf[:size])
            del buf[:size]
            return out
        # Pieces are kept as the socket gave them and joined once: a 1 MiB
        # body read in 256 KiB steps is copied once on its way, not thrice.
        pieces = []
        if got:
            pieces.append(bytes(buf))
            buf.clear()
        while got < size:
            data = read_body(size - got)
            if not data:
                break
            if got + len(data) > size:  # a piece the parser held, longer than asked
                cut = size - got
                buf += memoryview(data)[cut:]
                data = data[:cut]
            pieces.append(data)
            got += len(data)
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)

    def readline(self, size: Optional[int] = -1) -> bytes:
        """One line, ``\\n`` included, of at most ``size`` bytes when given."""
        buf = self._buf
        limit = -1 if size is None else size
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end >= 0:
                end += 1
                break
            if 0 <= limit <= len(buf):
                end = limit
                break
            start = len(buf)
            data = self._conn.read_body()
            if not data:
                end = len(buf)
                break
            buf += data
        if 0 <= limit < end:
            end = limit
        out = bytes(buf[:end])
        del buf[:end]
        return out

    def readlines(self, hint: int = -1) -> list[bytes]:
        """Lines until the end, or until their total reaches ``hint`` bytes."""
        lines = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


class Response:
    """The response to one request: ``start_response``, ``write`` and framing."""

    __slots__ = ("_conn", "_request", "_sent", "head", "headers", "status")

    def __init__(self, conn: Connection, request: Request) -> None:
        self._conn = conn
        self._request = request
        self.status: Optional[str] = None
        #: The fields as validated: a snapshot, so the head sent is the head checked.
        self.headers: tuple[tuple[str, str], ...] = ()
        self.head: Optional[ResponseHead] = None
        self._sent = 0

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        """PEP 3333 ``start_response``."""
        if exc_info:
            try:
                if self.head is not None:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        fields = tuple(headers)
        key = (status, fields)
        try:
            known_good = key in _VALID_HEADS
            hashable = True
        except TypeError:  # e.g. [name, value] lists: validated every time
            known_good = hashable = False
        if not known_good:
            _validate(status, fields)
            if hashable:
                if len(_VALID_HEADS) >= _MAX_VALID_HEADS:
                    _VALID_HEADS.clear()
                _VALID_HEADS.add(key)
        self.status = status
        # The writer's cache keys on tuple(headers): of a tuple, that is itself.
        self.headers = fields
        return self.write

    def _start(self, length_hint: Optional[int]) -> ResponseHead:
        conn = self._conn
        request = self._request
        if self.status is None:
            raise AssertionError("the application sent a body before calling start_response")
        keep_alive = (
            request.keep_alive
            and conn.server.keep_alives_enabled
            and not request.upgrade
            # Never invite a body (100 Continue) only to discard it.
            and not conn.expect_continue
            # A body too big to discard will close the connection: say so
            # (Go's chunkWriter.writeHeader does the same).
            and (conn.body_done or not _unread_body_too_big(conn, request))
        )
        head = encode_head(
            self.status,
            self.headers,
            http_version=request.http_version,
            method=request.method,
            keep_alive=keep_alive,
            body_length_hint=length_hint,
            date=conn.server.http_date(),
            server=conn.config.server_header,
        )
        self.head = head
        conn.response_started = True
        conn.response_status = self.status
        return head

    def write(self, data: bytes, _length_hint: Optional[int] = None) -> None:
        """Send ``data`` as body (also PEP 3333's ``write`` callable)."""
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"response body must be bytes, not {type(data).__name__}")
            data = bytes(data)
        head = self.head
        if head is None:
            head = self._start(_length_hint)
            out = head.data
        else:
            out = b""
        too_long = False
        if data and head.send_body:
            if head.chunked:
                out += chunk(data)
            else:
                limit = head.content_length
                if limit is not None and self._sent + len(data) > limit:
                    data = data[: limit - self._sent]
                    too_long = True
                self._sent += len(data)
                if out and len(data) >= _SEPARATE_BODY:
                    # Head and a big body in one system call, not joined first.
                    self._conn.send_parts(out, data)
                    out = b""
                else:
                    out += data
        if out:
            self._conn.send(out)
        if too_long:
            raise _ResponseTooLong()

    def write_file(self, wrapper: FileWrapper) -> None:
        """Send a ``wsgi.file_wrapper`` body, the head not sent yet (see ``gshutdown.wsgi.file_wrapper``).

        Exactly Content-Length bytes from the file's position when the
        application set one (a file that ends sooner closes the connection,
        as a short body does); else the rest of a regular file, or all a
        file-like reads. ``sendfile`` for a regular file on a plain socket.
        """
        if self.status is None:
            raise AssertionError("the application returned a body before calling start_response")
        conn = self._conn
        extent = wrapper.extent()
        length = _declared_length(self.headers)
        if length is None and extent is not None:
            length = extent.size
        if extent is not None and conn.config.sendfile and conn.can_send_file():
            head = self._start(length)
            count = (head.content_length or 0) if head.send_body else 0
            self._sent = wrapper.sent = conn.send_file(head.data, extent.fd, extent.offset, count, wrapper.block_size)
            return
        read = wrapper.filelike.read
        block_size = wrapper.block_size
        left = length
        while True:
            data = read(block_size if left is None else min(block_size, left))
            self.write(data, length)  # the first write sends the head
            if not data or not self.head.send_body:  # type: ignore[union-attr]
                return
            wrapper.sent += len(data)
            if left is not None:
                left -= len(data)
                if left <= 0:
                    return

    def finish(self) -> bool:
        """End the body; True if the connection may carry another request."""
        head = self.head
        if head is None:
            head = self._start(0)
            self._conn.send(head.data)
        elif head.chunked:
            self._conn.send(LAST_CHUNK)
        if head.send_body and head.content_length is not None and self._sent < head.content_length:
            log.error(
                "%s: application sent %d of %d body bytes declared; closing the connection",
                self._conn.request_line,
                self._sent,
                head.content_length,
            )
            return False
        return head.keep_alive


def mount_prefix(script_name: str) -> str:
    """``SCRIPT_NAME`` as a mount point: ``/app`` from ``/app/`` or ``app``; ``""`` for the root."""
    script_name = script_name.strip().rstrip("/")
    if script_name and not script_name.startswith("/"):
        script_name = "/" + script_name
    return script_name


class WSGIAdapter:
    """The ``Handler`` that runs a WSGI application for each request a connection reads.

    Mounting under a prefix is gunicorn's: ``SCRIPT_NAME`` in the process
    environment when the server starts (``-e SCRIPT_NAME=/app``, or
    ``raw_env``), or a ``SCRIPT_NAME`` header from a trusted peer when it is
    one of ``Config.forwarder_headers``. A request under the prefix gets it
    as ``SCRIPT_NAME`` and the rest as ``PATH_INFO``; any other request
    reaches the app unchanged, so the server's own paths (``/-/ready``) still
    answer (gunicorn answers 500). A client's ``Script-Name`` header is an
    ``HTTP_SCRIPT_NAME`` entry like any other header, never the mount.

    Args:
        app: any PEP 3333 application.
        multiprocess: other processes serve the same listeners (a master's
            workers): PEP 3333's ``wsgi.multiprocess``.
    """

    server: HTTPServer
    base_environ: dict[str, Any]
    websockets: WebSockets

    def __init__(self, app: WSGIApp, *, multiprocess: bool = False) -> None:
        self.app = app
        self.multiprocess = multiprocess
        self._warned_untrusted_proxy = False

    def bind(self, server: HTTPServer) -> None:
        """Take the environ entries that come from ``server`` (its address, TLS)."""
        self.server = server
        #: WebSocket upgrade requests: admission, environ entries, their end.
        self.websockets = WebSockets(server)
        config = server.config
        self.script_name = mount_prefix(os.environ.get("SCRIPT_NAME", ""))
        self.forwarder_headers = frozenset(config.forwarder_headers)
        self.secure_scheme = (
            None if config.secure_scheme_headers is None else secure_scheme_keys(config.secure_scheme_headers)
        )
        host, port = server.server_host_port()
        self.base_environ = {
            "SERVER_NAME": host,
            "SERVER_PORT": port,
            "SCRIPT_NAME": "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if server.ssl_context else "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": self.multiprocess,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
            "gshutdown.shutting_down": server.shutting_down,
        }

    def environ(self, conn: Connection, request: Request) -> dict[str, Any]:
        """The PEP 3333 environ for ``request``."""
        base = conn.environ_base
        if base is None:
            base = conn.environ_base = self._connection_environ(conn)
        env = base.copy()
        target = request.target
        authority = None
        if target[:1] == "/":
            path, _, query = target.partition("?")
        elif target == "*":
            path, query = "*", ""
        else:  # absolute-form: the path only (RFC 9112 3.2.2)
            rest = target.partition("://")[2]
            ends = [i for i in (rest.find("/"), rest.find("?")) if i >= 0]
            start = min(ends, default=len(rest))
            authority = rest[:start]
            path, _, query = rest[start:].partition("?")
            path = path or "/"
        if "%" in path:
            path = unquote_to_bytes(path).decode("latin-1")
        env["REQUEST_METHOD"] = request.method
        env["PATH_INFO"] = path
        env["QUERY_STRING"] = query
        env["RAW_URI"] = target
        env["SERVER_PROTOCOL"] = "HTTP/1.1" if request.http_version == "1.1" else "HTTP/1.0"
        keys = _ENVIRON_KEYS
        script_name = self.script_name
        for name, value in request.headers:
            key = keys.get(name)
            if key is None and name not in keys:
                key = _environ_key(name)
            if key is None:
                # A name with "_": dropped, unless a trusted proxy may send it.
                if not (conn.forwarded_trusted and self.forwarder_headers):
                    continue
                key = self._forwarder_key(name)
                if key is None:
                    continue
                if key == "SCRIPT_NAME":
                    script_name = mount_prefix(value)
                    continue
            if key in env:
                env[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
            else:
                env[key] = value
        if authority is not None:
            # RFC 9112 3.2.2: the target's authority replaces the Host field.
            env["HTTP_HOST"] = authority
        if conn.forwarded_trusted:
            secure = self.secure_scheme
            if "HTTP_X_FORWARDED_FOR" in env or "HTTP_X_FORWARDED_PROTO" in env or "HTTP_FORWARDED" in env:
                apply_forwarded(env, self.server.trusted_proxies, scheme=secure is None)
            if secure is not None:
                scheme = secure_scheme(env, secure)
                if scheme is not None:
                    env["wsgi.url_scheme"] = scheme
        if script_name and path.startswith(script_name):
            rest = path[len(script_name) :]
            if not rest or rest[0] == "/":
                env["SCRIPT_NAME"] = script_name
                env["PATH_INFO"] = rest
        env["wsgi.input"] = Input(conn)
        env["gshutdown.hijack"] = conn.hijack
        env["gshutdown.connection"] = conn
        return env

    def _forwarder_key(self, name: str) -> Optional[str]:
        """The environ key of a ``_`` header a trusted peer sent, if ``forwarder_headers`` lets it in."""
        upper = name.upper()
        if upper not in self.forwarder_headers and "*" not in self.forwarder_headers:
            return None
        return upper if upper == "SCRIPT_NAME" else "HTTP_" + upper.replace("-", "_")

    def _connection_environ(self, conn: Connection) -> dict[str, Any]:
        """The part of the environ that is the same for every request of ``conn``."""
        env = self.base_environ.copy()
        server = self.server
        peer = conn.peer
        proxied = conn.proxy_header
        if proxied is not None:
            env["gshutdown.proxy_header"] = proxied
            if proxied.source is not None:
                # Believed only from a trusted peer, as nginx's realip module
                # does (set_real_ip_from); otherwise the real peer stands.
                if server.trusted_proxies.trusts_peer(peer):
                    peer = proxied.source
                elif not self._warned_untrusted_proxy:
                    self._warned_untrusted_proxy = True
                    log.warning(
                        "PROXY protocol addresses from %s ignored (logged once): the peer is not in "
                        "forwarded_allow_ips (%s)",
                        peer[0],
                        server.trusted_proxies.spec,
                    )
        conn.forwarded_trusted = server.config.proxy_headers and server.trusted_proxies.trusts_peer(peer)
        if isinstance(peer, tuple):
            env["REMOTE_ADDR"] = peer[0]
            env["REMOTE_PORT"] = str(peer[1])
        else:
            env["REMOTE_ADDR"] = ""
        # Nothing that refers back to ``conn``: the connection holds this
        # dict, and a cycle would leave every closed connection to the GC.
        return env

    def handle(self, conn: Connection, request: Request) -> bool:
        """Run the application for one request; True to keep the connection."""
        response = Response(conn, request)
        result: Any = None
        try:
            environ = self.environ(conn, request)
            if request.upgrade and not self.websockets.admit(conn, request, environ):
                return False  # refused, and answered (400, 426, 503)
            result = self.app(environ, response.start_response)
            if conn.state is HIJACKED:
                return False
            if isinstance(result, list) and len(result) == 1 and response.head is None:
                # The whole body at once: Content-Length and a single write.
                body = result[0]
                response.write(body, len(body))
            elif isinstance(result, FileWrapper) and response.head is None:
                # Returned unchanged (PEP 3333): sendfile, or reads of its block size.
                response.write_file(result)
            else:
                for data in result:
                    if data:
                        response.write(data)
                    if conn.state is HIJACKED:
                        return False
            return response.finish()
        except _CLIENT_GONE:
            return False
        except BadRequestBody as exc:
            if not conn.response_started:
                conn.send_error(exc.status, str(exc))
            return False
        except ContradictoryScheme as exc:
            # gunicorn's answer too: which one to believe is not ours to guess.
            conn.send_error(400, f"Bad Request ({exc})")
            return False
        except HijackRefused:
            if not conn.response_started:
                conn.send_error(503, "Service Unavailable (too many hijacked connections)")
            return False
        except _ResponseTooLong:
            log.error("%s: application sent more than its Content-Length; cut off", conn.request_line)
            return False
        except GreenletExit:
            raise
        except Exception as exc:
            if conn.state is HIJACKED:
                if request.upgrade and self.websockets.ended_quietly(conn, exc):
                    return False  # the end of a WebSocket, as its library signals it
                log.exception("error in hijacked handler for %s", conn.request_line)
                return False
            log.exception("error handling %s", conn.request_line)
            if not conn.response_started:
                conn.send_error(500, "Internal Server Error")
            return False
        finally:
            close = None if type(result) is list else getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("error closing the response of %s", conn.request_line)
            if request.upgrade:
                self.websockets.handler_done(conn)
