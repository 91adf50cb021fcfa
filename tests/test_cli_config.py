"""The command line's settings in real processes: a gunicorn config file, log formats, process options.

A gunicorn configuration file that uses only common settings runs unchanged;
``--access-log-format`` speaks gunicorn's atoms and JSON; ``--log-config``
takes a ``dictConfig`` file; ``--chdir``, ``--env``, ``--umask``, ``--user``
and ``--group`` shape the process; the server flags reach the wire.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
from pathlib import Path

from gshutdown.process.exit_status import ExitStatus
from tests.process_helpers import (
    PROBE,
    ROOT,
    connect,
    free_port,
    get,
    read_response,
    recv_eof,
    run_cli,
    start_gshutdown,
    wait_until,
)

GUNICORN_CONF = """\
import multiprocessing

bind = "127.0.0.1:{port}"
workers = 2
worker_class = "gevent"
worker_connections = 1000
keepalive = 5
timeout = 30
graceful_timeout = 20
max_requests = 5000
max_requests_jitter = 100
backlog = 512
accesslog = "{access}"
errorlog = "-"
loglevel = "info"
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
pidfile = "{pid}"
preload_app = False
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
forwarded_allow_ips = "127.0.0.1"
proc_name = "probe"


def post_fork(server, worker):
    server.log.info("Worker spawned (pid: %s)", worker.pid)
"""


def test_a_gunicorn_config_file_with_the_common_settings_runs_unchanged(tmp_path: Path) -> None:
    port = free_port()
    access, pid = tmp_path / "access.log", tmp_path / "app.pid"
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(GUNICORN_CONF.format(port=port, access=access, pid=pid))
    with start_gshutdown(tmp_path / "log", "-c", str(conf), PROBE, wait=False) as server:
        server.wait_for_log(r"master \d+: 2 worker\(s\) ready", timeout=20)
        assert pid.read_text().strip() == str(server.pid)
        with connect(port) as sock:
            sock.sendall(b"GET /pid?rid=1 HTTP/1.1\r\nHost: x\r\nReferer: http://r/\r\nUser-Agent: probe-ua\r\n\r\n")
            assert read_response(sock)[0] == 200
        wait_until(lambda: access.exists() and access.read_text())
        server.send_signal(signal.SIGTERM)
        assert server.wait() == ExitStatus.OK
    assert re.fullmatch(
        r'127\.0\.0\.1 - - \[[^]]+\] "GET /pid\?rid=1 HTTP/1\.1" 200 \d+ "http://r/" "probe-ua"\n', access.read_text()
    )
    log = server.log()
    # The file's post_fork hook ran in each worker, as gunicorn calls it.
    spawned = re.findall(r"\[(\d+)\] \[INFO\] Worker spawned \(pid: (\d+)\)", log)
    assert len(spawned) == 2 and all(logged_by == pid for logged_by, pid in spawned)
    assert "worker_class" not in log  # "gevent": what happens here anyway
    assert not pid.exists()


def _serve_and_get(tmp_path: Path, *options: str, path: str = "/", headers: str = "") -> tuple[str, bytes]:
    port = free_port()
    with start_gshutdown(tmp_path / "log", "-b", f"127.0.0.1:{port}", *options, PROBE) as server:
        with connect(port) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
            body = read_response(sock)[2]
        server.send_signal(signal.SIGTERM)
        assert server.wait() == ExitStatus.OK
    return server.log(), body


def test_access_log_format_with_gunicorn_atoms(tmp_path: Path) -> None:
    fmt = "%(m)s %(U)s q=%(q)s %(s)s %(B)s ua=%({user-agent}i)s ct=%({content-type}o)s D=%(D)s p=%(p)s"
    log, _ = _serve_and_get(
        tmp_path, "--access-log", "-", "--access-log-format", fmt, path="/slow?s=0.05", headers="User-Agent: me\r\n"
    )
    match = re.search(r"^GET /slow q=s=0.05 200 10 ua=me ct=text/plain D=(\d+) p=<(\d+)>$", log, re.MULTILINE)
    assert match, log
    assert int(match.group(1)) >= 50_000  # microseconds: the app slept 0.05 s


def test_access_log_format_json_has_the_response_time(tmp_path: Path) -> None:
    log, _ = _serve_and_get(tmp_path, "--access-log", "-", "--access-log-format", "json", path="/slow?s=0.05")
    [line] = [line for line in log.splitlines() if line.startswith("{")]
    record = json.loads(line)
    assert (record["method"], record["path"], record["query"], record["status"]) == ("GET", "/slow", "s=0.05", 200)
    assert record["bytes"] == 10 and record["remote_addr"] == "127.0.0.1"
    assert 0.05 <= record["duration_s"] < 5


def test_log_config_dict_file_routes_the_log(tmp_path: Path) -> None:
    target = tmp_path / "server.log"
    config = {
        "version": 1,
        "formatters": {"custom": {"format": "CUSTOM %(levelname)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(target), "formatter": "custom"}},
        "loggers": {"gshutdown": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }
    (tmp_path / "logging.json").write_text(json.dumps(config))
    port = free_port()
    argv = ("-b", f"127.0.0.1:{port}", "--log-config", str(tmp_path / "logging.json"), PROBE)
    with start_gshutdown(tmp_path / "stderr", *argv, wait=False) as server:
        wait_until(lambda: target.exists() and "listening on" in target.read_text(), timeout=20)
        assert get(port, "/")[0] == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait() == ExitStatus.OK
    text = target.read_text()
    assert re.search(r"^CUSTOM INFO listening on http://127\.0\.0\.1:\d+$", text, re.MULTILINE), text
    assert "CUSTOM INFO exit: clean" in text


def test_a_bad_log_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "logging.json").write_text("{not json")
    result = run_cli("--log-config", str(tmp_path / "logging.json"), PROBE)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--log-config" in result.stderr, result.stderr


def test_chdir_and_env_prepare_the_process_before_the_app_loads(tmp_path: Path) -> None:
    (tmp_path / "envapp.py").write_text(
        "import os\n"
        "GREETING = os.environ['GREETING']  # read at import\n"
        "def app(environ, start_response):\n"
        "    body = f'{GREETING} from {os.getcwd()}'.encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n"
    )
    port = free_port()
    argv = ("-b", f"127.0.0.1:{port}", "--chdir", str(tmp_path), "-e", "GREETING=hi", "envapp:app")
    with start_gshutdown(tmp_path / "log", *argv, cwd=ROOT) as server:
        assert get(port, "/")[2] == f"hi from {tmp_path}".encode()
        server.send_signal(signal.SIGTERM)
        assert server.wait() == ExitStatus.OK


def test_umask_applies_to_the_unix_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with start_gshutdown(tmp_path / "log", "-b", f"unix:{path}", "--umask", "077", PROBE) as server:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        server.send_signal(signal.SIGTERM)
        assert server.wait() == ExitStatus.OK


def test_user_and_group_are_switched_to_after_binding(tmp_path: Path) -> None:
    port = free_port()
    os.chmod(tmp_path, 0o755)  # the log directory, for a process that is no longer root
    with start_gshutdown(tmp_path / "log", "-b", f"127.0.0.1:{port}", "--user", "nobody", PROBE) as server:
        pid = int(get(port, "/pid")[2])
        status = Path(f"/proc/{pid}/status").read_text()
        uid = subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True, check=True).stdout.strip()
        assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$", status, re.MULTILINE), status
        assert re.search(r"^Groups:\s+\d+\s*$", status, re.MULTILINE), "supplementary groups were not dropped"
        server.send_signal(signal.SIGTERM)
        assert server.wait() == ExitStatus.OK


def test_an_unknown_user_is_one_line_and_exit_2() -> None:
    result = run_cli("-b", f"127.0.0.1:{free_port()}", "--user", "no-such-user-gshutdown", PROBE)
    assert result.returncode == 2
    assert result.stderr == "gshutdown: error: --user: no such user: no-such-user-gshutdown\n"


def test_server_flags_reach_the_wire(tmp_path: Path) -> None:
    port = free_port()
    argv = ("-b", f"127.0.0.1:{port}", "--no-keep-alive", "--server-header", "edge", "--limit-request-field-size", "64")
    with start_gshutdown(tmp_path / "log", *argv, PROBE) as server:
        with connect(port) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            _, headers, body = read_response(sock)
            assert (headers["connection"], headers["server"], body) == ("close", "edge", b"Hello, World!")
            assert recv_eof(sock) == b""
        with connect(port) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"v" * 100 + b"\r\n\r\n")
            assert read_response(sock)[0] == 431
        server.send_signal(signal.SIGTERM)
        assert server.wait() == ExitStatus.OK


def test_gunicorn_conf_py_in_the_working_directory_is_read_without_c(tmp_path: Path) -> None:
    # gunicorn's default config file: a deployment relying on it keeps its settings.
    port = free_port()
    (tmp_path / "gunicorn.conf.py").write_text(f'bind = "127.0.0.1:{port}"\nworkers = 2\n')
    env = {"PYTHONPATH": str(ROOT)}
    with start_gshutdown(tmp_path / "log", PROBE, cwd=tmp_path, env=env, wait=False) as server:
        server.wait_for_log(r"master \d+: 2 worker\(s\) ready", timeout=20)
        assert get(port, "/")[0] == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait() == ExitStatus.OK
    assert "config file: ./gunicorn.conf.py read, as gunicorn reads it without -c" in server.log()
    # A file named by -c or GSHUTDOWN_CONFIG is read instead of it.
    other = tmp_path / "other.py"
    other.write_text("workers = 3\n")
    for args, extra in ((("-c", str(other)), {}), ((), {"GSHUTDOWN_CONFIG": str(other)})):
        printed = run_cli(*args, "--print-config", PROBE, cwd=tmp_path, env={**env, **extra})
        assert printed.returncode == 0, printed.stderr
        assert "workers = 3  # config file" in printed.stdout
        assert f"127.0.0.1:{port}" not in printed.stdout
