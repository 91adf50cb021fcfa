"""gshutdown behind a real nginx, restarted under load: no client sees an error.

nginx proxies to gshutdown with keep-alive upstream connections (the setting
that turns a careless server shutdown into 502s: nginx reuses an idle
upstream connection the server is closing). Clients keep requests going to
nginx while gshutdown instances are stopped and started one after the other
(a rolling restart), and while a ``--workers`` instance reloads (SIGHUP) and
upgrades in place (SIGUSR2). The requests are POSTs: nginx passes a
non-idempotent request to another upstream only if it was never sent, so a
request an upstream lost mid-way shows up as nginx's 502 instead of being
retried out of sight. Every response must be the application's own echo.

Needs nginx (Debian: ``apt-get install nginx-light``); without it these tests fail.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from gshutdown.process.exit_status import ExitStatus
from tests.nginx_helpers import Nginx
from tests.process_helpers import PROBE, GProcess, free_port, gone, gshutdown_argv, wait_until


class Clients:
    """Threads looping keep-alive POSTs through nginx; every response's status is counted."""

    def __init__(self, port: int, count: int = 6) -> None:
        self.port = port
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.pids: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(count)]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)

    @property
    def ok(self) -> int:
        with self._lock:
            return self.statuses[200]

    def _loop(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        deadline = time.monotonic() + 90
        n = 0
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                n += 1
                sent = f"{threading.get_ident()}-{n}".encode()
                try:
                    conn.request("POST", "/echo", body=sent)
                    response = conn.getresponse()
                    body = response.read()
                except OSError as exc:  # nginx itself never goes away in these tests
                    with self._lock:
                        self.errors.append(repr(exc))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                    continue
                with self._lock:
                    if response.status == 200 and body != sent:
                        self.errors.append(f"echo {sent!r} answered {body!r}")
                    self.statuses[response.status] += 1
        finally:
            conn.close()


def _instance(tmp_path: Path, name: str, port: int, *extra: str) -> GProcess:
    return GProcess(gshutdown_argv(PROBE, "-b", f"127.0.0.1:{port}", *extra), tmp_path / f"{name}.log")


@pytest.fixture
def two_instances(tmp_path: Path) -> Iterator[tuple[Nginx, list[int]]]:
    ports = [free_port(), free_port()]
    nginx = Nginx(tmp_path, free_port(), ports)
    yield nginx, ports
    nginx.stop()


def test_a_rolling_restart_of_two_instances_behind_nginx_loses_no_request(
    tmp_path: Path, two_instances: tuple[Nginx, list[int]]
) -> None:
    nginx, ports = two_instances
    running = [_instance(tmp_path, f"a{index}", port) for index, port in enumerate(ports)]
    try:
        for proc in running:
            proc.wait_listening()
        wait_until(lambda: _get(nginx.port) == 200, timeout=10)
        with Clients(nginx.port) as clients:
            wait_until(lambda: clients.ok > 200, timeout=20)
            for index, port in enumerate(ports):
                running[index].send_signal(signal.SIGTERM)
                assert running[index].wait() == ExitStatus.OK
                running[index].stop()
                _serves_on(clients)  # the other one alone
                running[index] = _instance(tmp_path, f"b{index}", port)
                running[index].wait_listening()
                _serves_on(clients)
    finally:
        for proc in running:
            proc.stop()
    print(f"\nrolling restart behind nginx: {dict(clients.statuses)}, {len(clients.errors)} errors")
    assert clients.errors == []
    assert set(clients.statuses) == {200}, clients.statuses


def test_reload_and_upgrade_of_a_master_behind_nginx_lose_no_request(tmp_path: Path) -> None:
    port = free_port()
    nginx = Nginx(tmp_path, free_port(), [port])
    master = _instance(tmp_path, "master", port, "-w", "2", "--ready-timeout", "10")
    new_master = 0
    try:
        master.wait_for_log(r"master \d+: 2 worker\(s\) ready", timeout=20)
        wait_until(lambda: _get(nginx.port) == 200, timeout=10)
        with Clients(nginx.port) as clients:
            wait_until(lambda: clients.ok > 200, timeout=20)
            master.send_signal(signal.SIGHUP)
            master.wait_for_log(r"reload done: generation 2 serving")
            wait_until(lambda: len(re.findall(r"worker \d+ exited with status 0", master.log())) >= 2, timeout=20)
            _serves_on(clients)
            master.send_signal(signal.SIGUSR2)
            new_master = int(master.wait_for_log(r"upgrade: new master (\d+) is serving", timeout=20).group(1))
            assert master.wait() == ExitStatus.OK
            _serves_on(clients)
    finally:
        master.stop()
        if new_master and not gone(new_master):
            os.kill(new_master, signal.SIGTERM)  # started by our master's upgrade
            wait_until(lambda: gone(new_master), timeout=20)
        nginx.stop()
    print(f"\nreload + upgrade behind nginx: {dict(clients.statuses)}, {len(clients.errors)} errors")
    assert clients.errors == []
    assert set(clients.statuses) == {200}, clients.statuses


def _serves_on(clients: Clients, more: int = 200) -> None:
    """Until ``more`` further requests have been answered."""
    served = clients.ok
    wait_until(lambda: clients.ok >= served + more, timeout=20)


def _get(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()
