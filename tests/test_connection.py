"""Connection: what a connection leaves behind when it ends."""

from __future__ import annotations

import gc
import weakref
from typing import Any, Callable

from gshutdown import ConnState
from tests.helpers import ServerThread, hello_app, read_response, recv_until_closed, wait_until


def test_finished_connections_are_freed_without_the_cycle_collector(serve: Callable[..., ServerThread]) -> None:
    # A reference cycle per connection would leave every closed one, with its
    # parser, socket and buffers, to the cycle collector: with 10,000 of them
    # that is a pause of a quarter of a second (and at exit, a slow exit).
    refs: list[weakref.ref[Any]] = []

    def keep_a_weak_ref(conn: Any, state: ConnState) -> None:
        if state is ConnState.NEW:
            refs.append(weakref.ref(conn))

    st = serve(hello_app, conn_state=keep_a_weak_ref)
    gc.collect()
    gc.disable()
    try:
        with st.connect() as sock:  # kept alive, then closed by the client
            for _ in range(2):
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                assert read_response(sock)[0] == 200
        with st.connect() as sock:  # closed by the server after Connection: close
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert recv_until_closed(sock).startswith(b"HTTP/1.1 200 ")
        with st.connect() as sock:  # a malformed request: 400 and close
            sock.sendall(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
            assert recv_until_closed(sock).startswith(b"HTTP/1.1 400 ")
        assert len(refs) == 3
        wait_until(lambda: all(ref() is None for ref in refs))
        assert cyclic_garbage_from_gshutdown() == []
    finally:
        gc.enable()


def cyclic_garbage_from_gshutdown() -> list[str]:
    """Type names of gshutdown (and llhttp) objects only the cycle collector would free."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sorted(
            type(obj).__qualname__ for obj in gc.garbage if type(obj).__module__.startswith(("gshutdown", "httptools"))
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_hijacked_connection_is_freed_once_its_handler_is_done(serve: Callable[..., ServerThread]) -> None:
    refs: list[weakref.ref[Any]] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        refs.append(weakref.ref(environ["gshutdown.connection"]))
        sock, _ = environ["gshutdown.hijack"]()
        sock.sendall(b"raw bytes")
        sock.close()
        return []

    st = serve(app)
    gc.collect()
    gc.disable()
    try:
        with st.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert recv_until_closed(sock) == b"raw bytes"
        wait_until(lambda: refs and refs[0]() is None)
        assert st.server.registry.counts()["hijacked"] == 0
        assert cyclic_garbage_from_gshutdown() == []
    finally:
        gc.enable()
