"""``gshutdown.config.config_file`` and ``gunicorn_names``: gunicorn configuration files, read as gunicorn reads them.

In-process: ``read_config_file`` on small files (none of them monkey-patches:
that runs in real processes, ``test_gunicorn_configs.py``), the table of
gunicorn's names against the installed gunicorn's own list, and the README's
generated tables against what the script would write.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gshutdown.cli import parse_args
from gshutdown.config.config_file import read_config_file
from gshutdown.config.gunicorn_names import GUNICORN_NAMES, HOOKS, SETTING_FOR, Handling
from gshutdown.config.parsers import SettingError
from gshutdown.config.table import BY_NAME

ROOT = Path(__file__).resolve().parents[1]
APP = "tests.apps.probe:app"


def _file(tmp_path: Path, text: str, name: str = "gunicorn.conf.py") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_every_setting_and_hook_of_the_installed_gunicorn_is_classified() -> None:
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    assert len(names) > 90  # the whole list, not a stub of it
    assert sorted(names - set(GUNICORN_NAMES)) == []
    hooks = {setting.name for setting in KNOWN_SETTINGS if setting.section == "Server Hooks"}
    assert hooks == set(HOOKS)


def test_every_row_that_sets_a_setting_names_one_of_ours() -> None:
    for name, row in GUNICORN_NAMES.items():
        if row.handling is Handling.HONOURED:
            assert (row.target or name) in BY_NAME, name
        if row.handling is Handling.MAPPED and row.target is not None:
            assert row.target in BY_NAME and row.target != name, name
        if row.handling in (Handling.IGNORED, Handling.REFUSED):
            assert row.note and name not in BY_NAME, name
    assert SETTING_FOR["keepalive"] == "idle_timeout" and SETTING_FOR["bind"] == "bind"


def test_the_readme_tables_are_what_the_script_writes() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "readme_tables.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    readme = (ROOT / "README.md").read_text()
    for name in GUNICORN_NAMES:
        assert f"| `{name}` |" in readme, name


def test_names_a_file_defines_for_itself_are_ignored(tmp_path: Path) -> None:
    config = read_config_file(
        _file(
            tmp_path,
            "from multiprocessing import cpu_count\n"
            "CPU_CORES = cpu_count()\n"
            "workers_per_core = 4\n"
            "debug = False\n"
            "max_workers = 8\n"
            "use_loglevel = 'debug'\n"
            "keepalive_str = '5'\n"
            "keepalive = int(keepalive_str)\n"
            "loglevel = use_loglevel\n"
            "workers = CPU_CORES * workers_per_core\n"
            "def helper():\n"
            "    return 1\n",
        )
    )
    assert config.values == {"idle_timeout": 5.0, "log_level": "debug", "workers": config.values["workers"]}
    assert config.values["workers"] >= 4
    assert config.warnings == []


@pytest.mark.parametrize(
    ("text", "warning"),
    [
        ("worker = 4\n", "'worker' is not a setting; ignored (did you mean 'workers'?)"),
        ("graceful_timout = 10\n", "'graceful_timout' is not a setting; ignored (did you mean 'graceful_timeout'?)"),
        ("drain_dealy = 2\n", "(did you mean 'drain_delay'?)"),
        ("def post_frok(server, worker):\n    pass\n", "(did you mean 'post_fork'?)"),
    ],
)
def test_a_near_miss_of_a_setting_is_warned_about_naming_it(tmp_path: Path, text: str, warning: str) -> None:
    config = read_config_file(_file(tmp_path, text))
    assert config.values == {} and len(config.warnings) == 1
    assert warning in config.warnings[0]


def test_a_near_miss_of_a_setting_the_file_sets_is_its_own_helper(tmp_path: Path) -> None:
    config = read_config_file(_file(tmp_path, "worker = 4\nworkers = worker\n"))
    assert config.values == {"workers": 4} and config.warnings == []


def test_a_gunicorn_setting_that_means_nothing_here_gets_one_warning_with_the_reason(tmp_path: Path) -> None:
    config = read_config_file(
        _file(
            tmp_path,
            "worker_class = 'sync'\nstatsd_host = 'localhost:8125'\nspew = False\nthreads = 1\n"
            "worker_tmp_dir = None\nheader_map = 'drop'\n",
        )
    )
    assert config.warnings == [
        "config file: gunicorn's worker_class is ignored: " + GUNICORN_NAMES["worker_class"].note,
        "config file: gunicorn's statsd_host is ignored: no StatsD: Prometheus metrics with --metrics-path",
    ]


def test_hooks_are_handed_on_not_warned_about_by_the_reader(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        "calls = []\n"
        "def post_fork(server, worker):\n"
        "    calls.append(worker)\n"  # a hook that uses the file's own names still finds them
        "def when_ready(server):\n"
        "    return 'ready'\n",
    )
    config = read_config_file(path)
    assert sorted(config.hooks) == ["post_fork", "when_ready"]
    config.hooks["post_fork"](None, "w1")
    assert config.hooks["when_ready"](None) == "ready"
    assert config.hooks["post_fork"].__globals__["calls"] == ["w1"]
    assert config.warnings == [] and config.values == {}
    # The command line hands them on to be called (gshutdown.process.gunicorn_hooks), with no warning.
    resolved = parse_args(["-c", path, APP])
    assert sorted(resolved.hooks) == ["post_fork", "when_ready"]
    assert not any("post_fork" in warning for warning in resolved.warnings)


def test_a_hook_that_is_not_a_function_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match=r"post_fork must be a function of \(server, worker\)"):
        read_config_file(_file(tmp_path, "post_fork = 3\n"))


def test_gunicorn_forms_of_values(tmp_path: Path) -> None:
    config = read_config_file(
        _file(
            tmp_path,
            "secure_scheme_headers = {'X-Forwarded-Proto': 'https', 'X-FORWARDED-SSL': 'on'}\n"
            "forwarder_headers = ['SCRIPT_NAME', 'remote_user']\n"
            "proxy_protocol = 'auto'\n"
            "pythonpath = '/srv/app, /srv/lib'\n"
            "protocol = 'http'\n"
            "raw_env = ['SCRIPT_NAME=/app']\n"
            "proc_name = 'shop'\n"
            "capture_output = True\n"
            "reload = True\n"
            "reload_extra_files = ['templates/base.html']\n",
        )
    )
    assert config.values == {
        "secure_scheme_headers": [("X-FORWARDED-PROTO", "https"), ("X-FORWARDED-SSL", "on")],
        "forwarder_headers": "SCRIPT_NAME,REMOTE_USER",
        "proxy_protocol": True,
        "pythonpath": "/srv/app,/srv/lib",
        "raw_env": ["SCRIPT_NAME=/app"],
        "proc_name": "shop",
        "capture_output": True,
        "reload": True,
        "reload_extra_files": ["templates/base.html"],
    }
    assert config.warnings == []
    assert read_config_file(_file(tmp_path, "proxy_protocol = 'off'\n")).values == {"proxy_protocol": False}


def test_logconfig_dict_wins_over_the_other_logging_names_as_in_gunicorn(tmp_path: Path) -> None:
    text = "logconfig = 'logging.ini'\nlogconfig_dict = {'version': 1}\nlogconfig_json = 'logging.json'\n"
    assert read_config_file(_file(tmp_path, text)).values == {"log_config": {"version": 1}}
    text = "logconfig_dict = {}\nlogconfig = 'logging.ini'\n"  # {}: gunicorn's default, no dictionary
    assert read_config_file(_file(tmp_path, text)).values == {"log_config": "logging.ini"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("daemon = True\n", "daemon = True is not supported: run under systemd or a container"),
        ("protocol = 'uwsgi'\n", "protocol = 'uwsgi' is not supported: HTTP only"),
        ("secure_scheme_headers = {'X PROTO': 'https'}\n", "want HEADER=VALUE"),
    ],
)
def test_what_cannot_be_done_as_asked_is_a_one_line_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SettingError, match=message):
        read_config_file(_file(tmp_path, text))


def test_a_file_of_any_name_or_a_python_module(tmp_path: Path) -> None:
    assert read_config_file(_file(tmp_path, "workers = 3\n", name="gunicorn.conf")).values == {"workers": 3}
    assert read_config_file("python:tests.apps.gunicorn_conf").warnings == []


def test_reload_without_watchfiles_is_a_one_line_error() -> None:
    # watchfiles made unimportable in the child, as when the extra is not installed.
    code = "import sys; sys.modules['watchfiles'] = None; from gshutdown.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "--reload", APP],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr == "gshutdown: error: --reload needs watchfiles: pip install 'gshutdown[reload]'\n"


@pytest.mark.parametrize(
    ("line", "no_sendfile"), [("sendfile = False", True), ("sendfile = True", False), ("sendfile = None", False)]
)
def test_gunicorns_sendfile_is_the_opposite_of_no_sendfile(tmp_path: Path, line: str, no_sendfile: bool) -> None:
    config = read_config_file(_file(tmp_path, line + "\n"))
    assert config.values == {"no_sendfile": no_sendfile} and config.warnings == []
