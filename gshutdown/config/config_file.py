"""Configuration files as gunicorn reads them: Python files of ``name = value`` lines.

The file runs as Python (module-level code included); each name it sets
that is a setting, by our name or gunicorn's, is taken; so are gunicorn's
server hooks (``gshutdown.process.gunicorn_hooks`` calls them). gunicorn
settings that mean nothing here are named in warnings.
"""

from __future__ import annotations

import importlib
import inspect
import os
import runpy
from typing import Any, Callable, Mapping

from gshutdown.config.parsers import SettingError, octal
from gshutdown.config.table import SETTINGS, Kind, Setting

BY_FILE_NAME: Mapping[str, Setting] = {
    **{setting.name: setting for setting in SETTINGS},
    **{alias: setting for setting in SETTINGS for alias in setting.gunicorn},
}

#: gunicorn settings that mean nothing here: accepted in a file, with a warning.
GUNICORN_IGNORED = frozenset(
    {
        "worker_class",
        "threads",
        "proc_name",
        "default_proc_name",
        "spew",
        "check_config",
        "print_config",
        "worker_tmp_dir",
        "capture_output",
        "enable_stdio_inheritance",
        "statsd_host",
        "statsd_prefix",
        "sendfile",
        "strip_header_spaces",
        "reload_engine",
        "reload_extra_files",
        "reload",
        "daemon",
        "syslog",
        "syslog_addr",
        "syslog_prefix",
        "syslog_facility",
        "disable_redirect_access_to_syslog",
        "tmp_upload_dir",
        "secure_scheme_headers",
        "initgroups",
        "paste",
        "pythonpath",
        "logger_class",
        "forwarder_headers",
        "header_map",
        "permit_unconventional_http_method",
        "casefold_http_method",
    }
)
#: gunicorn's server hooks, each with the arguments gunicorn calls it with
#: (``gshutdown.process.gunicorn_hooks`` calls them at gunicorn's moments).
HOOK_PARAMETERS: Mapping[str, tuple[str, ...]] = {
    "on_starting": ("server",),
    "on_reload": ("server",),
    "when_ready": ("server",),
    "pre_fork": ("server", "worker"),
    "post_fork": ("server", "worker"),
    "post_worker_init": ("worker",),
    "worker_int": ("worker",),
    "worker_abort": ("worker",),
    "pre_exec": ("server",),
    "pre_request": ("worker", "req"),
    # gunicorn also takes one of two or three parameters: the first ones.
    "post_request": ("worker", "req", "environ", "resp"),
    "child_exit": ("server", "worker"),
    "worker_exit": ("server", "worker"),
    "nworkers_changed": ("server", "new_value", "old_value"),
    "on_exit": ("server",),
    "ssl_context": ("config", "default_ssl_context_factory"),
}
GUNICORN_HOOKS = frozenset(HOOK_PARAMETERS)


def read_config_file(path: str) -> tuple[dict[str, Any], list[str], dict[str, Callable[..., Any]]]:
    """The settings a Python configuration file sets, by our names; warnings to log; its hooks by name.

    Raises:
        SettingError: the file is missing, does not run, sets an unknown name,
            or defines a hook that is not a function of gunicorn's parameters.
    """
    if not os.path.isfile(path):
        raise SettingError(f"config file not found: {path}")
    try:
        namespace = runpy.run_path(path)
    except SyntaxError as exc:
        raise SettingError(f"config file {path}, line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:
        raise SettingError(f"config file {path} failed: {type(exc).__name__}: {exc}") from None
    values: dict[str, Any] = {}
    warnings: list[str] = []
    hooks: dict[str, Callable[..., Any]] = {}
    for key, value in namespace.items():
        if key.startswith("_") or type(value).__name__ == "module":
            continue  # imports and private helpers of the file itself
        setting = BY_FILE_NAME.get(key)
        if setting is not None:
            values[setting.name] = _from_file(setting, key, value, path)
        elif key in GUNICORN_HOOKS:
            hooks[key] = _hook(key, value, path)
        elif key in GUNICORN_IGNORED:
            if key == "daemon" and value:
                raise SettingError("config file: daemon = True is not supported: run under systemd or a container")
            warnings.append(f"config file: gunicorn's {key} means nothing here; ignored")
        elif callable(value):
            continue  # a helper function or class of the file
        else:
            raise SettingError(f"config file {path}: unknown setting {key!r}")
    return values, warnings, hooks


def _hook(name: str, value: Any, path: str) -> Callable[..., Any]:
    """The hook function ``name = value`` gives (gunicorn also takes ``"module.function"``)."""
    if isinstance(value, str):
        module, _, attr = value.rpartition(".")
        try:
            value = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise SettingError(f"config file {path}: {name} = {value!r}: {exc}") from None
    wanted = HOOK_PARAMETERS[name]
    if not callable(value):
        raise SettingError(f"config file {path}: {name} must be a function of ({', '.join(wanted)})")
    given = positional_parameters(value)
    fits = 2 <= given <= 4 if name == "post_request" else given == len(wanted)
    if given >= 0 and not fits:
        raise SettingError(
            f"config file {path}: {name} takes {given} parameter(s); gunicorn calls it with ({', '.join(wanted)})"
        )
    return value


def positional_parameters(function: Callable[..., Any]) -> int:
    """How many positional parameters ``function`` has (-1: it takes ``*args`` or cannot tell)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return -1
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return -1
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional for p in parameters)


def _from_file(setting: Setting, key: str, value: Any, path: str) -> Any:
    try:
        if setting.name == "log_config" and isinstance(value, dict):
            return value  # gunicorn's logconfig_dict: the dictionary itself
        if setting.kind is Kind.FLAG:
            if not isinstance(value, bool):
                raise SettingError(f"want True or False, not {value!r}")
            return value
        if setting.kind is Kind.LIST:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
                raise SettingError(f"want a string or a list of strings, not {value!r}")
            return [setting.parse(item) for item in items]
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise SettingError(f"want a string or a number, not {value!r}")
        if setting.parse is octal and isinstance(value, int):
            return value  # umask = 0o022, as gunicorn files write it
        return setting.parse(str(value))
    except SettingError as exc:
        raise SettingError(f"config file {path}: {key}: {exc}") from None
