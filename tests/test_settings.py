"""``gshutdown.config.settings``: one table for the command line, the environment and config files.

Precedence is command line > environment > config file > default; gunicorn's
names work in a config file (``test_config_file.py`` has the rest); bad values
are one-line errors.
These run ``cli.parse_args`` in-process (no server); ``test_cli.py`` runs the
command for real.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from gshutdown.cli import parse_args
from gshutdown.config import settings, table
from gshutdown.config.server_config import Config
from gshutdown.process.setup import server_options

APP = "tests.apps.probe:app"


@pytest.fixture(autouse=True)
def _no_gshutdown_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("GSHUTDOWN_"):
            monkeypatch.delenv(name)


def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gshutdown.conf.py"
    path.write_text(text)
    return str(path)


def test_every_setting_has_a_flag_an_env_name_and_a_help_text() -> None:
    for setting in settings.SETTINGS:
        assert setting.help
        assert setting.env == f"GSHUTDOWN_{setting.name.upper()}"
        if setting.name != "app":
            assert any(flag.startswith("--") for flag in setting.flags), setting.name


def test_defaults_without_anything_given() -> None:
    args = parse_args([APP])
    assert set(args.sources.values()) == {settings.DEFAULT, settings.CLI}
    assert args.bind == [("127.0.0.1", 8000)]
    assert (args.graceful_timeout, args.workers, args.max_connections) == (30.0, 0, 1000)


@pytest.mark.parametrize(
    ("cli", "env", "expected", "source"),
    [
        (["--graceful-timeout", "9"], "7", 9.0, settings.CLI),
        ([], "7", 7.0, settings.ENV),
        ([], None, 5.0, settings.FILE),
    ],
    ids=["command-line-wins", "environment-over-file", "file-over-default"],
)
def test_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: list[str], env: str | None, expected: float, source: str
) -> None:
    config = _file(tmp_path, "graceful_timeout = 5\n")
    if env is not None:
        monkeypatch.setenv("GSHUTDOWN_GRACEFUL_TIMEOUT", env)
    args = parse_args(["-c", config, *cli, APP])
    assert args.graceful_timeout == expected
    assert args.sources["graceful_timeout"] == source


def test_gunicorn_names_in_a_config_file_map_to_ours(tmp_path: Path) -> None:
    config = _file(
        tmp_path,
        "import multiprocessing\n"
        "bind = '0.0.0.0:9000'\n"
        "workers = 3\n"
        "worker_class = 'gevent'\n"
        "worker_connections = 500\n"
        "keepalive = 2\n"
        "timeout = 20\n"
        "graceful_timeout = 25\n"
        "max_requests = 1000\n"
        "max_requests_jitter = 50\n"
        "accesslog = '-'\n"
        "errorlog = '-'\n"
        "loglevel = 'warning'\n"
        "pidfile = '/tmp/app.pid'\n"
        "preload_app = True\n"
        "umask = 0o027\n"
        "raw_env = ['A=1', 'B=two']\n"
        "wsgi_app = 'tests.apps.probe:app'\n"
        "cert_reqs = 2\n"
        "def post_fork(server, worker):\n"
        "    pass\n",
    )
    args = parse_args(["-c", config])
    assert args.app == APP
    assert args.bind == [("0.0.0.0", 9000)]
    assert (args.workers, args.max_connections, args.idle_timeout, args.timeout) == (3, 500, 2.0, 20.0)
    assert (args.max_requests, args.max_requests_jitter, args.graceful_timeout) == (1000, 50, 25.0)
    assert (args.access_log, args.error_log, args.log_level, args.pid) == ("-", "-", "warning", "/tmp/app.pid")
    assert (args.preload, args.umask, args.raw_env) == (True, 0o027, ["A=1", "B=two"])
    assert args.cert_reqs == "required"  # gunicorn's ssl.CERT_REQUIRED
    assert [hook.__name__ for hook in args.hooks.values()] == ["post_fork"]  # taken, not warned about
    assert not any("post_fork" in warning for warning in args.warnings)
    assert not any("worker_class" in warning for warning in args.warnings)  # gevent: what happens anyway


def test_a_worker_setting_in_a_file_without_workers_is_a_warning_not_an_error(tmp_path: Path) -> None:
    args = parse_args(["-c", _file(tmp_path, "timeout = 30\nmax_requests = 10\n"), APP])
    assert (args.timeout, args.max_requests) == (0.0, 0)
    assert any("timeout ignored without workers" in warning for warning in args.warnings)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("graceful_timeout = 'soon'\n", "graceful_timeout: not a number of seconds"),
        ("workers = True\n", "workers: want a string or a number"),
        ("bind = 8000\n", "bind: want a string or a list of strings"),
        ("preload_app = 'yes'\n", "preload_app: want True or False"),
        ("daemon = True\n", "daemon = True is not supported"),
        ("bind = = 1\n", "line 1"),
        ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ],
    ids=["bad-seconds", "bool-for-count", "int-for-bind", "str-for-flag", "daemon", "syntax", "raises"],
)
def test_bad_config_files_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["-c", _file(tmp_path, text), APP])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_missing_config_file_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["-c", "/nonexistent/gshutdown.conf.py", APP])
    assert "config file not found" in capsys.readouterr().err


def test_print_config_output_is_a_config_file_that_gives_the_same_settings(tmp_path: Path) -> None:
    first = parse_args(
        [
            "--print-config",
            "-b",
            "[::1]:9001",
            "-b",
            "unix:/tmp/s.sock",
            "--max-blocking-time",
            "250",
            "--umask",
            "022",
            "-e",
            "X=1",
            "--workers",
            "2",
            "--reuse-port",
            "--secure-scheme-header",
            "X-Forwarded-Ssl=on",
            "--forwarder-headers",
            "script_name,remote_user",
            "--pythonpath",
            "lib,vendor",
            "--reload-extra-file",
            "a.toml",
            "-n",
            "shop",
            APP,
        ]
    )
    again = parse_args(["-c", _file(tmp_path, settings.render(first)), "--print-config"])
    for setting in settings.SETTINGS:
        assert getattr(again, setting.name) == getattr(first, setting.name), setting.name
    assert again.max_blocking_time == 0.25
    assert again.secure_scheme_headers == [("X-FORWARDED-SSL", "on")]
    assert again.forwarder_headers == "SCRIPT_NAME,REMOTE_USER"


def test_env_lists_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GSHUTDOWN_BIND", "127.0.0.1:1,unix:/tmp/a.sock")
    monkeypatch.setenv("GSHUTDOWN_NO_KEEP_ALIVE", "yes")
    args = parse_args([APP])
    assert args.bind == [("127.0.0.1", 1), "unix:/tmp/a.sock"]
    assert args.no_keep_alive is True


def test_server_settings_reach_the_config() -> None:
    args = parse_args(
        [
            APP,
            "--read-body-timeout",
            "7",
            "--write-timeout",
            "8",
            "--idle-grace",
            "0.3",
            "--limit-request-line",
            "100",
            "--limit-request-fields",
            "20",
            "--limit-request-field-size",
            "300",
            "--no-keep-alive",
            "--server-header",
            "",
            "--max-connections",
            "50",
            "--idle-timeout",
            "4",
            "--read-header-timeout",
            "6",
        ]
    )
    config = Config(**server_options(args))
    assert (config.read_body_timeout, config.write_timeout, config.idle_grace) == (7.0, 8.0, 0.3)
    assert (config.max_request_line, config.max_header_count, config.max_field_size) == (100, 20, 300)
    assert (config.keep_alive, config.server_header, config.max_connections) == (False, "", 50)
    assert (config.idle_timeout, config.read_header_timeout) == (4.0, 6.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--access-log-format", "%(zz)s"], "unknown access log atom %(zz)s"),
        (["--umask", "9"], "not an octal mode"),
        (["-e", "NOVALUE"], "want NAME=VALUE"),
        (["--log-level", "loud"], "not a log level"),
        (["--forwarded-allow-ips", "10.0.0.0/33"], "is not an IP address or network"),
        (["--cert-reqs", "maybe"], "want none, optional or required"),
    ],
)
def test_bad_values_are_one_line_errors(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args([*argv, APP])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_the_readme_documents_every_option() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [
        flag
        for setting in settings.SETTINGS
        for flag in setting.flags
        if flag.startswith("--") and not re.search(rf"`[^`|]*{re.escape(flag)}\b[^`|]*`", readme)
    ]
    assert missing == []


def test_the_readme_option_table_is_made_from_the_settings_table() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    generated = re.search(r"<!-- generated: options -->\n(.*?)<!-- end: options -->", readme, re.DOTALL)
    assert generated is not None
    assert generated.group(1) == table.readme_table(), "run: python scripts/readme_tables.py"


def test_settings_has_one_typed_field_per_row_of_the_table_in_its_order() -> None:
    fields = [field.name for field in dataclasses.fields(settings.Settings)]
    assert fields == [setting.name for setting in settings.SETTINGS] + ["sources", "warnings", "hooks"]
    hints = typing.get_type_hints(settings.Settings)
    assert all(hints[name] is not typing.Any for name in fields)


def test_settings_are_frozen_and_default_as_the_table_says() -> None:
    defaults = settings.Settings.defaults()
    for setting in settings.SETTINGS:
        assert getattr(defaults, setting.name) == setting.default, setting.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.workers = 2  # type: ignore[misc]
    assert parse_args([APP]) == defaults.replace(app=APP)
