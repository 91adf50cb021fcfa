"""The shutdown deadline: what is still running is force-closed, reported, and not faked."""

from __future__ import annotations

import logging
import threading
import time

import gevent

from gshutdown import ConnState
from tests.shutdown_helpers import EOF, recv_all, request_bytes, wait_for_state_count


def test_handler_past_the_deadline_is_force_closed_reported_and_gets_no_fake_500(serve, caplog, capfd):
    """A 30 s handler with shutdown(timeout=1): closed at ~1 s, listed in result.forced
    (ACTIVE, peer, request line, age), result.clean False; the client sees the connection
    end with no response bytes; no GreenletExit traceback is logged or printed."""
    caplog.set_level(logging.DEBUG)
    started = threading.Event()
    finished = []

    def app(environ, start_response):
        started.set()
        gevent.sleep(30)
        finished.append(True)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    st = serve(app)
    sock = st.connect()
    try:
        sock.sendall(request_bytes("/thirty?x=1"))
        assert started.wait(5)
        began = time.monotonic()
        future = st.shutdown_async(timeout=1)
        data, ending = recv_all(sock, timeout=5)
        closed_after = time.monotonic() - began
        result = future.result(5)
        local = sock.getsockname()
    finally:
        sock.close()
    assert (data, ending) == (b"", EOF), f"client saw {data[:100]!r}, {ending}"
    assert 0.9 <= closed_after < 1.5, f"connection closed {closed_after:.3f} s after shutdown()"
    assert result.clean is False
    assert len(result.forced) == 1
    forced = result.forced[0]
    assert forced.state is ConnState.ACTIVE
    assert tuple(forced.peer)[:2] == local[:2]
    assert forced.request_line == "GET /thirty?x=1 HTTP/1.1"
    assert 1.0 <= forced.age < 2.5
    assert result.duration < 1.5
    assert not finished, "the handler ran past its forced close"
    text = caplog.text
    assert "GreenletExit" not in text
    assert "Traceback" not in text
    assert not [r for r in caplog.records if r.exc_info], "an exception was logged with a traceback"
    assert "Traceback" not in capfd.readouterr().err, "something printed a traceback (e.g. the gevent hub)"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("forced ACTIVE" in m and "GET /thirty?x=1" in m for m in warnings), warnings
    assert st.states_of(st.conn_ids()[0])[-1] is ConnState.CLOSED
    assert len(st.server.registry) == 0


def test_deadline_forces_only_what_is_left_and_finished_work_is_not_listed(serve):
    """With one request that ends in time and one that does not, only the second is forced;
    the first got its response with Connection: close."""
    started = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/long":
            started.set()
            gevent.sleep(30)
        else:
            gevent.sleep(0.3)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    st = serve(app)
    long_sock, short_sock = st.connect(), st.connect()
    try:
        long_sock.sendall(request_bytes("/long"))
        assert started.wait(5)
        short_sock.sendall(request_bytes("/short"))
        wait_for_state_count(st, "active", 2)
        future = st.shutdown_async(timeout=1)
        short_data, short_end = recv_all(short_sock, timeout=5)
        long_data, long_end = recv_all(long_sock, timeout=5)
        result = future.result(5)
    finally:
        long_sock.close()
        short_sock.close()
    assert short_data.startswith(b"HTTP/1.1 200 OK\r\n") and short_data.endswith(b"\r\n\r\nok")
    assert b"\r\nConnection: close\r\n" in short_data and short_end == EOF
    assert (long_data, long_end) == (b"", EOF)
    assert [f.request_line for f in result.forced] == ["GET /long HTTP/1.1"]
    assert not result.clean
