"""The ``gshutdown`` command line, run as a real process.

Bad input ends in exactly one line on stderr (no traceback) and exit status 2;
a busy port, in one line and status 1. Options and their ``GSHUTDOWN_*``
environment variables are checked by what the running server does.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gshutdown import __version__
from tests.process_helpers import (
    PROBE,
    ROOT,
    GProcess,
    free_port,
    get,
    read_response,
    recv_eof,
    request_bytes,
    run_cli,
    start_gshutdown,
    start_master,
)


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    stderr = result.stderr
    assert result.returncode == status, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"want exactly one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("gshutdown: error: ")
    return lines[0]


# -- bad input: one line, exit 2 ----------------------------------------------------------


def test_unknown_option_is_one_line_and_exit_2() -> None:
    result = run_cli("--no-such-option", PROBE)
    line = assert_one_line_error(result, 2)
    assert "--no-such-option" in line


@pytest.mark.parametrize(
    "address",
    ["nope", "::1:8000", "[::1:8000", "127.0.0.1:99999", "127.0.0.1:http", "unix:", "127.0.0.1:-1"],
)
def test_bad_bind_address_is_one_line_and_exit_2(address: str) -> None:
    result = run_cli("--bind", address, PROBE)
    line = assert_one_line_error(result, 2)
    assert "--bind" in line


@pytest.mark.parametrize("option", ["--error-log", "--access-log"])
def test_a_log_file_that_cannot_be_opened_is_one_line_and_exit_2(tmp_path: Path, option: str) -> None:
    path = tmp_path / "no-such-directory" / "server.log"
    line = assert_one_line_error(run_cli(option, str(path), PROBE), 2)
    assert f"cannot open the log file {path}: No such file or directory" in line


def test_bad_seconds_value_is_one_line_and_exit_2() -> None:
    result = run_cli("--graceful-timeout", "soon", PROBE)
    assert "--graceful-timeout" in assert_one_line_error(result, 2)


@pytest.mark.parametrize(("option", "value"), [("--idle-timeout", "0"), ("--read-header-timeout", "-0.5")])
def test_zero_or_negative_timeout_is_one_line_and_exit_2(option: str, value: str) -> None:
    """0 used to mean "no limit" without saying so: now it is an error that names 'none'."""
    line = assert_one_line_error(run_cli(f"{option}={value}", PROBE), 2)
    assert option in line
    assert "more than 0 seconds, or 'none'" in line


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--unix-socket-mode", "rw", "not an octal mode"),
        ("--unix-socket-mode", "1777", "permission bits go from 000 to 777"),
        ("--max-body-size", "0", "must be at least 1"),
        ("--max-body-size", "1k", "not a whole number"),
        ("--idle-timeout", "-1", "more than 0 seconds, or 'none'"),
        ("--read-header-timeout", "soon", "not a number of seconds"),
    ],
)
def test_bad_limit_value_is_one_line_and_exit_2(
    option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Parsed in this process (the subprocess cases above show the same path ends the CLI)."""
    from gshutdown.cli import parse_args

    with pytest.raises(SystemExit) as exited:
        parse_args([option, value, PROBE])
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert option in line and message in line


def test_none_means_no_limit_and_max_connections_defaults_to_1000() -> None:
    from gshutdown.cli import parse_args

    args = parse_args(["--idle-timeout", "none", "--read-header-timeout", "NONE", PROBE])
    assert (args.idle_timeout, args.read_header_timeout) == (None, None)
    assert parse_args([PROBE]).max_connections == 1000
    assert (parse_args([PROBE]).idle_timeout, parse_args([PROBE]).read_header_timeout) == (5.0, 10.0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_for_gshutdown:app", "cannot import 'no_such_module_for_gshutdown'"),
        ("tests.apps:app", "no app in module 'tests.apps'"),
        ("tests.apps", "no app or application in module 'tests.apps'"),
        ("tests.apps.probe:NOT_CALLABLE", "not callable"),
        ("tests.apps.broken:app", "RuntimeError: this module is broken on purpose"),
        ("tests/apps/no_such_file.py", "no such file"),
    ],
    ids=["unimportable", "no-named-app", "no-app-or-application", "not-callable", "raises", "missing-file"],
)
def test_app_that_cannot_be_loaded_is_one_line_and_exit_2(spec: str, message: str) -> None:
    result = run_cli("--bind", f"127.0.0.1:{free_port()}", spec)
    line = assert_one_line_error(result, 2)
    assert message in line


@pytest.mark.parametrize("option", ["--max-requests=10", "--timeout=10", "--reuse-port"])
def test_worker_options_without_workers_are_one_line_and_exit_2(option: str) -> None:
    result = run_cli(option, PROBE)
    option = option.partition("=")[0]
    assert f"{option} needs --workers" in assert_one_line_error(result, 2)


def test_invalid_env_bind_is_one_line_and_exit_2() -> None:
    result = run_cli(PROBE, env={"GSHUTDOWN_BIND": "not-an-address"})
    assert "GSHUTDOWN_BIND" in assert_one_line_error(result, 2)


def test_invalid_env_graceful_timeout_is_one_line_and_exit_2() -> None:
    result = run_cli(PROBE, env={"GSHUTDOWN_GRACEFUL_TIMEOUT": "forever"})
    assert "forever" in assert_one_line_error(result, 2)


def test_invalid_env_flag_is_one_line_and_exit_2() -> None:
    result = run_cli(PROBE, env={"GSHUTDOWN_NO_MONKEY_PATCH": "maybe"})
    assert "GSHUTDOWN_NO_MONKEY_PATCH" in assert_one_line_error(result, 2)


@pytest.mark.parametrize(
    ("value", "patched"), [("no", True), ("off", True), ("0", True), ("yes", False), ("TRUE", False)]
)
def test_env_no_monkey_patch_reads_yes_and_no(monkeypatch: pytest.MonkeyPatch, value: str, patched: bool) -> None:
    from gshutdown.cli import parse_args

    monkeypatch.setenv("GSHUTDOWN_NO_MONKEY_PATCH", value)
    assert parse_args([PROBE]).no_monkey_patch is not patched


def test_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("--bind", f"127.0.0.1:{port}", PROBE)
    line = assert_one_line_error(result, 1)
    assert f"127.0.0.1:{port}" in line
    assert "address already in use" in line


# -- informational options -------------------------------------------------------------------


def test_version_prints_the_package_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"gshutdown {__version__}"


def test_help_exits_0_and_lists_the_shutdown_options() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for option in ("--bind", "--graceful-timeout", "--drain-delay", "--no-monkey-patch", "--pid"):
        assert option in result.stdout


# -- serving ------------------------------------------------------------------------------------


# -- gunicorn's command line: GUNICORN_CMD_ARGS, -k and gunicorn's option names ---------


def test_gunicorn_cmd_args_ranks_below_the_command_line_and_gshutdown_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gshutdown.cli import parse_args

    monkeypatch.setenv("GUNICORN_CMD_ARGS", "--bind=127.0.0.1:9100 --workers 3 --keep-alive 10 -k gevent")
    settings = parse_args([PROBE])
    assert (settings.bind, settings.workers, settings.idle_timeout) == ([("127.0.0.1", 9100)], 3, 10.0)
    assert settings.sources["workers"] == "GUNICORN_CMD_ARGS" and settings.warnings == ()
    monkeypatch.setenv("GSHUTDOWN_WORKERS", "2")
    assert parse_args([PROBE]).workers == 2
    assert parse_args(["-w", "4", PROBE]).workers == 4


def test_gunicorns_option_names_are_understood(monkeypatch: pytest.MonkeyPatch) -> None:
    from gshutdown.cli import parse_args

    settings = parse_args(
        ["--access-logfile", "-", "--error-logfile", "/tmp/e.log", "--worker-connections", "500", "-k", "gevent", PROBE]
    )
    assert (settings.access_log, settings.error_log, settings.max_connections) == ("-", "/tmp/e.log", 500)
    assert settings.warnings == ()
    # A worker class that is not gevent's: gshutdown serves on gevent all the same, and says so.
    (warning,) = parse_args(["-k", "sync", PROBE]).warnings
    assert warning.startswith("--worker-class sync is ignored: always gevent")


def test_a_server_binds_where_gunicorn_cmd_args_says(tmp_path: Path) -> None:
    port = free_port()
    env = {"GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port} --access-logfile -"}
    with start_gshutdown(tmp_path / "log", PROBE, env=env) as server:
        assert get(port, "/?rid=cmd-args")[0] == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert '"GET /?rid=cmd-args HTTP/1.1" 200' in server.log()


@pytest.mark.parametrize(("value", "message"), [("--no-such-option", "unrecognized"), ("--bind 'x", "quotation")])
def test_bad_gunicorn_cmd_args_is_one_line_and_exit_2(value: str, message: str) -> None:
    line = assert_one_line_error(run_cli(PROBE, env={"GUNICORN_CMD_ARGS": value}), 2)
    assert line.startswith("gshutdown: error: GUNICORN_CMD_ARGS: ") and message in line


def test_python_m_gshutdown_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    with start_gshutdown(tmp_path / "log", "--bind", f"127.0.0.1:{port}", PROBE) as server:
        status, _, body = get(port, "/")
        assert (status, body) == (200, b"Hello, World!")
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    log = server.log()
    assert f"listening on http://127.0.0.1:{port}" in log
    # 30 s graceful timeout and no drain delay fit Kubernetes' default grace.
    assert "WARNING" not in log


def test_console_script_serves(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("gshutdown")
    executable = str(script) if script.exists() else shutil.which("gshutdown")
    assert executable, "the gshutdown console script is not installed"
    port = free_port()
    with GProcess([executable, "--bind", f"127.0.0.1:{port}", PROBE], tmp_path / "log") as server:
        server.wait_listening()
        assert get(port, "/")[2] == b"Hello, World!"
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0


def test_monkey_patching_is_on_by_default_and_logged(tmp_path: Path) -> None:
    port = free_port()
    with start_gshutdown(tmp_path / "log", "--bind", f"127.0.0.1:{port}", PROBE) as server:
        assert get(port, "/patched")[2] == b"True"
        assert "gevent monkey-patching applied before importing the app" in server.log()
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0


def test_the_start_up_objects_are_frozen_out_of_the_collector_in_a_single_process_and_a_worker(
    tmp_path: Path,
) -> None:
    # gc.freeze() once the app is loaded: full collections and the exit then skip them.
    port = free_port()
    with start_gshutdown(tmp_path / "log", "--bind", f"127.0.0.1:{port}", PROBE) as server:
        assert int(get(port, "/gc-frozen")[2]) > 10_000
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    with start_master(tmp_path / "master.log", PROBE, port, workers=1) as master:
        assert int(get(port, "/gc-frozen")[2]) > 10_000
        master.send_signal(signal.SIGTERM)
        assert master.wait() == 0


def test_no_monkey_patch_leaves_socket_unpatched_and_says_so(tmp_path: Path) -> None:
    port = free_port()
    with start_gshutdown(tmp_path / "log", "--no-monkey-patch", "--bind", f"127.0.0.1:{port}", PROBE) as server:
        assert get(port, "/patched")[2] == b"False"
        # The server itself still runs on gevent: a sleeping request is served.
        assert get(port, "/slow?s=0.01")[2] == b"slept 0.01"
        assert "gevent monkey-patching disabled (--no-monkey-patch)" in server.log()
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0


def test_env_vars_set_bind_and_graceful_timeout(tmp_path: Path) -> None:
    port = free_port()
    env = {"GSHUTDOWN_BIND": f"127.0.0.1:{port}", "GSHUTDOWN_GRACEFUL_TIMEOUT": "7"}
    with start_gshutdown(tmp_path / "log", PROBE, env=env) as server:
        assert get(port, "/")[0] == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert "shutdown: started (timeout 7 s)" in server.log()


def test_command_line_wins_over_env_var(tmp_path: Path) -> None:
    port = free_port()
    env = {"GSHUTDOWN_BIND": "127.0.0.1:1", "GSHUTDOWN_GRACEFUL_TIMEOUT": "7"}
    with start_gshutdown(
        tmp_path / "log", "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "9", PROBE, env=env
    ) as server:
        assert get(port, "/")[0] == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert "shutdown: started (timeout 9 s)" in server.log()


def test_binds_tcp_and_unix_socket_together_and_removes_the_socket_file(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "gs.sock"
    with start_gshutdown(tmp_path / "log", "--bind", f"127.0.0.1:{port}", "--bind", f"unix:{path}", PROBE) as server:
        server.wait_for_log(r"listening on unix:")
        assert get(port, "/")[2] == b"Hello, World!"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(request_bytes("/", close=True))
            status, _, body = read_response(sock)
        assert (status, body) == (200, b"Hello, World!")
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert f"listening on unix:{path}" in server.log()
    assert not path.exists()


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_binds_ipv6_loopback_in_brackets(tmp_path: Path) -> None:
    port = free_port("::1")
    with start_gshutdown(tmp_path / "log", "--bind", f"[::1]:{port}", PROBE) as server:
        status, _, body = get(port, "/", host="::1")
        assert (status, body) == (200, b"Hello, World!")
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert f"listening on http://[::1]:{port}" in server.log()


def test_app_given_as_a_file_path_from_another_directory(tmp_path: Path) -> None:
    port = free_port()
    spec = f"{ROOT / 'tests' / 'apps' / 'probe.py'}:app"
    with start_gshutdown(tmp_path / "log", "--bind", f"127.0.0.1:{port}", spec, cwd=tmp_path) as server:
        assert get(port, "/")[2] == b"Hello, World!"
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0


CLF = re.compile(
    r"^127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] "
    r'"GET /slow\?s=0 HTTP/1\.1" 200 7$',
    re.MULTILINE,
)


def test_access_log_dash_writes_common_log_format_to_stderr(tmp_path: Path) -> None:
    port = free_port()
    with start_gshutdown(tmp_path / "log", "--access-log", "-", "--bind", f"127.0.0.1:{port}", PROBE) as server:
        assert get(port, "/slow?s=0")[2] == b"slept 0"
        server.wait_for_log(CLF.pattern)
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert len(CLF.findall(server.log())) == 1


def test_pid_file_holds_the_pid_while_serving_and_is_removed_at_exit(tmp_path: Path) -> None:
    port = free_port()
    pidfile = tmp_path / "gs.pid"
    with start_gshutdown(tmp_path / "log", "--pid", str(pidfile), "--bind", f"127.0.0.1:{port}", PROBE) as server:
        assert pidfile.read_text().strip() == str(server.pid)
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert not pidfile.exists()


def test_drain_delay_plus_graceful_timeout_over_30_s_warns(tmp_path: Path) -> None:
    port = free_port()
    with start_gshutdown(
        tmp_path / "log",
        "--drain-delay",
        "5",
        "--graceful-timeout",
        "30",
        "--bind",
        f"127.0.0.1:{port}",
        PROBE,
    ) as server:
        line = server.wait_for_log(r"^.*\[WARNING\].*$").group(0)
        assert "35 s" in line
        assert "terminationGracePeriodSeconds" in line
        # Readiness already turns 503 during the 5 s delay: SIGQUIT ends it now.
        server.send_signal(signal.SIGQUIT)
        assert server.wait() == 0


def test_no_monkey_patch_serves_several_requests_on_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "gs.sock"
    with start_gshutdown(tmp_path / "log", "--no-monkey-patch", "--bind", f"unix:{path}", PROBE) as server:
        answers = []
        for _ in range(3):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(path))
                sock.sendall(request_bytes("/", close=True))
                answers.append(read_response(sock, timeout=5)[2])
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert answers == [b"Hello, World!"] * 3


def test_limits_reach_the_server(tmp_path: Path) -> None:
    """--max-body-size, --unix-socket-mode and --idle-timeout, as the running server applies them."""
    port = free_port()
    path = tmp_path / "gs.sock"
    args = ("--max-body-size", "10", "--unix-socket-mode", "600", "--idle-timeout", "0.5")
    with start_gshutdown(
        tmp_path / "log", *args, "--bind", f"127.0.0.1:{port}", "--bind", f"unix:{path}", PROBE
    ) as server:
        server.wait_for_log(r"listening on unix:")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n" + b"x" * 11)
            assert read_response(sock)[0] == 413
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request_bytes("/"))
            assert read_response(sock)[0] == 200
            assert recv_eof(sock) == b""  # closed by the 0.5 s idle timeout
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0


def test_unix_socket_mode_applies_to_the_masters_sockets_too(tmp_path: Path) -> None:
    path = tmp_path / "gs.sock"
    with start_gshutdown(
        tmp_path / "log", "--workers", "1", "--unix-socket-mode", "640", "--bind", f"unix:{path}", PROBE
    ) as server:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(request_bytes("/", close=True))
            assert read_response(sock)[0] == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
