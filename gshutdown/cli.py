"""``gshutdown [options] APP``: parse the options, then hand over.

The options are the settings of ``gshutdown.config.settings`` (each also a
``GSHUTDOWN_<NAME>`` environment variable and a name in a ``-c`` configuration
file). Without ``--workers`` the runner serves in this process
(``serve.serve``); with it, the master supervises worker processes
(``master.main``). Bad input ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import logging
import os
import shlex
import sys
from typing import Callable, NoReturn, Optional, Sequence

from gshutdown.config import config_file, settings
from gshutdown.process.exit_status import ExitStatus
from gshutdown.process.setup import working_directory
from gshutdown.wsgi import access_format

log = logging.getLogger("gshutdown")

#: Settings that only a master can act on.
_NEED_WORKERS = ("max_requests", "timeout", "reuse_port")
#: Read when neither -c nor GSHUTDOWN_CONFIG names a file, as gunicorn does (relative to the working directory).
GUNICORN_DEFAULT_CONFIG = "./gunicorn.conf.py"


class _Parser(argparse.ArgumentParser):
    #: Before each error message: where the options came from, when not the command line.
    origin = ""

    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the brief for every bad input.
        self.exit(ExitStatus.USAGE, f"{self.prog}: error: {self.origin}{message}\n")


def build_parser() -> _Parser:
    from gshutdown import __version__

    parser = _Parser(
        prog="gshutdown",
        description="Serve a WSGI application on gevent, and stop it without losing a request. "
        "Every option is also an environment variable GSHUTDOWN_<NAME> and a NAME in a -c file; "
        "the command line wins over the environment, which wins over the file.",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="a Python file of settings (gunicorn's names are understood too); default: ./gunicorn.conf.py if there",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print every setting, and where its value came from, then exit"
    )
    settings.add_arguments(parser)
    # gunicorn's -k, so that a gunicorn command line runs unchanged: gshutdown
    # is a gevent server whatever it names (see gunicorn_names' worker_class).
    parser.add_argument("-k", "--worker-class", dest="worker_class", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"gshutdown {__version__}")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> settings.Settings:
    """The settings for ``argv``, by precedence; exits with status 2 on bad input."""
    return _parse(argv)[0]


def _parse(argv: Optional[Sequence[str]]) -> tuple[settings.Settings, bool, Optional[Callable[[], settings.Settings]]]:
    """The settings; whether ``--print-config`` asks for them to be printed; how to read them again.

    Reading them again (a master's SIGHUP, as gunicorn's) re-reads the config
    file by its absolute path (``--chdir`` may have moved the working
    directory since), over the same command line and environment; it raises
    ``SettingError`` where this exits. None when no config file was read.
    """
    parser = build_parser()
    given = parser.parse_args(argv)
    from_env = _gunicorn_cmd_args()
    config_path: Optional[str] = (
        given.config or os.environ.get("GSHUTDOWN_CONFIG") or (from_env.config if from_env else None)
    )
    if not config_path and os.path.isfile(GUNICORN_DEFAULT_CONFIG):
        # gunicorn reads it when no -c is given: a deployment that relies on
        # that must not lose its settings by switching servers.
        config_path = GUNICORN_DEFAULT_CONFIG
    try:
        resolved = _resolve(given, from_env, config_path)
    except settings.SettingError as exc:
        parser.error(str(exc))
    if config_path == GUNICORN_DEFAULT_CONFIG:
        notice = f"config file: {config_path} read, as gunicorn reads it without -c (-c FILE names another)"
        resolved = resolved.replace(warnings=(notice, *resolved.warnings))
    # By the path the working directory was entered through: after a deploy's
    # symlink switch, a SIGHUP reads the new release's file.
    if config_path and not config_path.startswith("python:"):
        config_path_again: Optional[str] = os.path.normpath(os.path.join(working_directory(), config_path))
    else:
        config_path_again = config_path  # python:MODULE, or none
    reread = functools.partial(_resolve, given, from_env, config_path_again) if config_path_again else None
    return resolved, given.print_config, reread


def _resolve(
    given: argparse.Namespace, from_env: Optional[argparse.Namespace], config_path: Optional[str]
) -> settings.Settings:
    """The settings from the command line, ``GUNICORN_CMD_ARGS`` and the config file; raises ``SettingError``."""
    config = config_file.read_config_file(config_path) if config_path else config_file.ConfigFile("")
    resolved = settings.resolve(given, config.values, gunicorn_cmd_args=from_env)
    warnings = list(config.warnings)
    for namespace in (given, from_env):
        if namespace is not None and namespace.worker_class is not None:
            ignored = config_file.ignored_gunicorn_value("worker_class", namespace.worker_class)
            if ignored:
                warnings.append(f"--worker-class {namespace.worker_class} is ignored: {ignored}")
    if resolved.access_log_format:
        try:
            access_format.check(resolved.access_log_format)
        except ValueError as exc:
            raise settings.SettingError(f"--access-log-format: {exc}") from None
    if not resolved.app and not given.print_config:
        raise settings.SettingError("the following arguments are required: APP (or wsgi_app in the config file)")
    if resolved.reload and not given.print_config and importlib.util.find_spec("watchfiles") is None:
        raise settings.SettingError("--reload needs watchfiles: pip install 'gshutdown[reload]'")
    if not resolved.workers:
        for name in _NEED_WORKERS:
            if getattr(resolved, name):
                if resolved.sources[name] != settings.FILE:
                    raise settings.SettingError(f"--{name.replace('_', '-')} needs --workers")
                # A gunicorn file sets it for its workers: without any, say so.
                warnings.append(f"config file: {name} ignored without workers")
                resolved = resolved.replace(**{name: settings.BY_NAME[name].default})
    return resolved.replace(warnings=tuple(warnings), hooks=config.hooks)


def _gunicorn_cmd_args() -> Optional[argparse.Namespace]:
    """The options in ``GUNICORN_CMD_ARGS``, parsed as the command line's (None when it is unset or empty)."""
    text = os.environ.get(settings.GUNICORN_CMD_ARGS, "")
    parser = build_parser()
    parser.origin = f"{settings.GUNICORN_CMD_ARGS}: "
    try:
        words = shlex.split(text)
    except ValueError as exc:
        parser.error(str(exc))
    return parser.parse_args(words) if words else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console script; returns the exit status."""
    resolved, print_config, reread = _parse(argv)
    if print_config:
        sys.stdout.write(settings.render(resolved))
        sys.stdout.writelines(f"# {warning}\n" for warning in resolved.warnings)
        return ExitStatus.OK
    if resolved.reload:
        from gshutdown.process import reload

        reload.remember_launch_dir()
    if resolved.workers:
        from gshutdown.process import master

        return master.main(resolved, reread=reread)
    from gshutdown.process import serve

    return serve.serve(resolved)
