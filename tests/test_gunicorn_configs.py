"""The corpus of gunicorn configuration files (tests/gunicorn_configs) under ``gshutdown -c FILE``.

Each file is run unchanged by a real ``gshutdown`` process, bound with ``-b``
on a free port: it must start, serve what the file asks for (its mount, its
scheme headers, its environment, its logging, its process title), and exit 0
on SIGTERM. Server hooks in them must not stop anything (``config_file``
hands them on; calling them is another part's job).
"""

from __future__ import annotations

import json
import re
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from gshutdown.process.exit_status import ExitStatus
from tests.process_helpers import ROOT, GProcess, connect, free_port, gshutdown_argv, read_response, wait_until

CORPUS = ROOT / "tests" / "gunicorn_configs"
CORPUS_APP = "tests.apps.corpus:app"
#: What a master logs once its first workers serve.
WORKERS_READY = r"master \d+: (\d+) worker\(s\) ready"


@dataclass
class Served:
    """A running corpus server: its process, port and scratch directory."""

    proc: GProcess
    port: int
    tmp: Path

    def ask(self, path: str = "/", headers: str = "") -> tuple[int, dict[str, Any]]:
        """Status and JSON answer of one request on a new connection."""
        with connect(self.port) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: corpus\r\n{headers}Connection: close\r\n\r\n".encode())
            status, _, body = read_response(sock)
        return status, (json.loads(body) if status == 200 else {})


@dataclass
class Case:
    #: The file in tests/gunicorn_configs.
    file: str
    #: APP on the command line (None: the file's wsgi_app).
    app: Optional[str] = CORPUS_APP
    env: dict[str, str] = field(default_factory=dict)
    #: Workers the master must report ready (None: a single process).
    workers: Optional[int] = None
    check: Callable[[Served], None] = lambda served: None


def _check_classic(served: Served) -> None:
    status, seen = served.ask("/orders?page=2")
    assert (status, seen["path_info"], seen["script_name"]) == (200, "/orders", "")
    # The file's access_log_format, %(D)s included, on stderr.
    wait_until(lambda: re.search(r'"GET /orders\?page=2 HTTP/1\.1" 200 \d+ "-" "-" \d+$', served.proc.log(), re.M))


def _check_docker_env(served: Served) -> None:
    assert served.ask()[0] == 200
    log = served.proc.log()
    printed = json.loads(re.search(r"^\{.*\"workers_per_core\".*\}$", log, re.M).group(0))  # type: ignore[union-attr]
    assert printed["workers"] == 2 and printed["keepalive"] == 5
    # Helper names of the file's own are not settings and not warned about.
    assert "use_loglevel" not in log and "web_concurrency" not in log
    assert "gunicorn's worker_tmp_dir is ignored: no heartbeat files" in log


def _check_monkey_patched(served: Served) -> None:
    status, seen = served.ask()
    assert status == 200
    assert seen["patched"] == {"socket": True, "threading": True, "ssl": True}
    assert seen["pid"] != served.proc.pid  # a worker answered, forked from the patched, preloaded master
    assert "MonkeyPatchWarning" not in served.proc.log()


def _check_django(served: Served) -> None:
    status, seen = served.ask("/admin/")
    assert status == 200
    assert seen["sys_path"][0] == str(CORPUS / "site")  # pythonpath, first
    assert seen["env"]["DJANGO_SETTINGS_MODULE"] == "mysite.settings.production"  # raw_env, before the import
    assert seen["env"]["APP_MODE"] == "production"


def _check_mounted(served: Served) -> None:
    seen = served.ask("/shop/cart/items?x=1")[1]
    assert (seen["script_name"], seen["path_info"]) == ("/shop", "/cart/items")
    assert seen["env"]["FEATURE_FLAGS"] == "checkout-v2,search"
    seen = served.ask("/shop")[1]
    assert (seen["script_name"], seen["path_info"]) == ("/shop", "")
    # Not under the mount (a prefix of a segment is not the mount): as it came.
    seen = served.ask("/shopping")[1]
    assert (seen["script_name"], seen["path_info"]) == ("", "/shopping")
    # A client's Script-Name header is a header, never the mount.
    seen = served.ask("/shop/x", "Script-Name: /evil\r\n")[1]
    assert (seen["script_name"], seen["path_info"], seen["http_script_name"]) == ("/shop", "/x", "/evil")


def _check_behind_proxy(served: Served) -> None:
    assert served.ask("/")[1]["scheme"] == "http"
    assert served.ask("/", "X-Forwarded-Ssl: on\r\n")[1]["scheme"] == "https"
    assert served.ask("/", "X-Forwarded-Protocol: ssl\r\nX-Forwarded-Proto: https\r\n")[1]["scheme"] == "https"
    assert served.ask("/", "X-Forwarded-Proto: http\r\n")[1]["scheme"] == "http"
    # Two of the file's scheme headers disagree: 400, as gunicorn answers.
    assert served.ask("/", "X-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off\r\n")[0] == 400
    # forwarder_headers: a trusted proxy's SCRIPT_NAME mounts, its REMOTE_USER reaches the app.
    seen = served.ask("/api/users", "SCRIPT_NAME: /api\r\nREMOTE_USER: alice\r\n")[1]
    assert (seen["script_name"], seen["path_info"], seen["remote_user"]) == ("/api", "/users", "alice")
    assert "gunicorn's proxy_allow_ips is ignored" in served.proc.log()


def _check_logging_dict(served: Served) -> None:
    status, seen = served.ask()
    # The file patched the master (no preload): its workers, forked from it, serve patched.
    assert status == 200 and seen["patched"] == {"socket": True, "threading": True, "ssl": True}
    server_log = served.tmp / "server.log"
    wait_until(lambda: server_log.exists() and '"msg": "master' in server_log.read_text())
    assert re.search(r'^\{"time": "[^"]+", "level": "INFO", "msg": "worker \d+ ready', server_log.read_text(), re.M)


def _check_named(served: Served) -> None:
    assert served.ask("/?print=captured-42")[0] == 200
    cmdline = Path(f"/proc/{served.proc.pid}/cmdline").read_bytes()
    assert cmdline.startswith(b"gshutdown: [corpus-shop]"), cmdline
    error_log = served.tmp / "error.log"
    wait_until(lambda: error_log.exists() and "stderr: captured-42" in error_log.read_text())
    assert "stdout: captured-42" in error_log.read_text()
    assert "captured-42" not in served.proc.log()  # not on the process's own stdout or stderr
    # logrotate's rename and SIGUSR1: what the app prints follows the error log to its new file.
    error_log.rename(served.tmp / "error.log.1")
    served.proc.send_signal(signal.SIGUSR1)
    wait_until(error_log.exists)
    assert served.ask("/?print=rotated-43")[0] == 200
    wait_until(lambda: "stderr: rotated-43" in error_log.read_text())
    assert "stdout: rotated-43" in error_log.read_text()
    assert "rotated-43" not in (served.tmp / "error.log.1").read_text()


def _check_hooks(served: Served) -> None:
    assert served.ask("/hooked")[0] == 200


def _check_ops(served: Served) -> None:
    assert served.ask()[0] == 200
    log = served.proc.log()
    for name in ("worker_tmp_dir", "statsd_host", "statsd_prefix"):
        assert f"gunicorn's {name} is ignored: " in log, name
    for name in (
        "threads",
        "syslog",
        "daemon",
        "spew",
        "check_config",
        "tmp_upload_dir",
        "strip_header_spaces",
        "sendfile",
    ):
        assert f"gunicorn's {name} is ignored" not in log, name  # set to what asks for nothing


def _check_typos(served: Served) -> None:
    status, seen = served.ask()
    assert status == 200 and seen["loaded_from"] == "tests.apps.corpus"
    log = served.proc.log()
    assert "'worker' is not a setting; ignored (did you mean 'workers'?)" in log
    assert "'graceful_timout' is not a setting; ignored (did you mean 'graceful_timeout'?)" in log
    assert "DEBUG" not in log and "ENVIRONMENT" not in log


def _check_reload_dev(served: Served) -> None:
    assert served.ask()[0] == 200
    assert "--reload: watching .py files under " in served.proc.log()


CASES = [
    Case("classic_gevent.conf.py", workers=5, check=_check_classic),
    Case("docker_env.conf.py", workers=2, check=_check_docker_env),
    Case(
        "monkey_patched_preload.conf.py",
        app=None,
        env={"GUNICORN_WORKERS": "2"},
        workers=2,
        check=_check_monkey_patched,
    ),
    Case("django_project.conf.py", app=None, workers=2, check=_check_django),
    Case("mounted_prefix.conf.py", workers=1, check=_check_mounted),
    Case("behind_proxy.conf.py", workers=3, check=_check_behind_proxy),
    Case("logging_dict.conf.py", workers=2, check=_check_logging_dict),
    Case("named_process.conf.py", check=_check_named),
    Case("server_hooks.conf.py", workers=2, check=_check_hooks),
    Case("ops_heavy.conf.py", workers=2, check=_check_ops),
    Case("typos.conf.py", app=None, check=_check_typos),
    Case("reload_dev.conf.py", app=None, check=_check_reload_dev),
]


def _serving(proc: GProcess, port: int) -> bool:
    assert proc.proc.poll() is None, f"exited with {proc.proc.returncode}:\n{proc.log()}"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /-/ready HTTP/1.1\r\nHost: corpus\r\nConnection: close\r\n\r\n")
            return read_response(sock)[0] == 200
    except OSError:
        return False


@pytest.mark.parametrize("case", CASES, ids=[case.file.removesuffix(".conf.py") for case in CASES])
def test_a_gunicorn_config_file_starts_serves_and_stops(tmp_path: Path, case: Case) -> None:
    port = free_port()
    env = {"LOG_DIR": str(tmp_path), "HOOK_LOG": str(tmp_path / "hooks.log"), **case.env}
    argv = ["-c", str(CORPUS / case.file), "-b", f"127.0.0.1:{port}", *([case.app] if case.app else [])]
    with GProcess(gshutdown_argv(*argv), tmp_path / "out.log", env=env) as proc:
        wait_until(lambda: _serving(proc, port), timeout=30, interval=0.05)
        if case.workers is not None:
            match = proc.wait_for_log(WORKERS_READY, timeout=30)
            assert int(match.group(1)) == case.workers
        case.check(Served(proc, port, tmp_path))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == ExitStatus.OK, proc.log()
    assert "Traceback" not in proc.log()


def test_the_corpus_has_every_kind_of_file_the_issue_names() -> None:
    texts = {path.name: path.read_text() for path in CORPUS.glob("*.conf.py")}
    assert len(texts) >= 10 and set(texts) == {case.file for case in CASES}
    every = "\n".join(texts.values())
    for needle in (
        "multiprocessing.cpu_count()",
        "monkey.patch_all()",
        "wsgi_app = ",
        "raw_env = ",
        "preload_app = True",
        "pythonpath = ",
        "proc_name = ",
        "logconfig_dict = ",
        "secure_scheme_headers = ",
        "def post_fork(server, worker)",
        "def pre_request(worker, req)",
    ):
        assert needle in every, needle


def test_proc_name_without_setproctitle_changes_nothing_else(tmp_path: Path) -> None:
    # setproctitle as when it is not installed: importing it fails.
    (tmp_path / "stubs").mkdir()
    (tmp_path / "stubs" / "setproctitle.py").write_text("raise ImportError('No module named setproctitle')\n")
    port = free_port()
    argv = ["-c", str(CORPUS / "named_process.conf.py"), "-b", f"127.0.0.1:{port}", CORPUS_APP]
    env = {"LOG_DIR": str(tmp_path), "PYTHONPATH": str(tmp_path / "stubs")}
    with GProcess(gshutdown_argv(*argv), tmp_path / "out.log", env=env) as proc:
        wait_until(lambda: _serving(proc, port), timeout=30, interval=0.05)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:3] == [b"-m", b"gshutdown"]  # the title left alone
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == ExitStatus.OK
    assert "Traceback" not in (tmp_path / "error.log").read_text()
