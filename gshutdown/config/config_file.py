"""Configuration files as gunicorn reads them: Python files of ``name = value`` lines.

The file runs as a Python module (``__config__``, as gunicorn names it), its
module-level code included: a ``gevent.monkey.patch_all()`` at its top runs
before the app is imported. Then each name it defines is looked up:

- one of our settings, or a gunicorn setting that maps to one
  (``gunicorn_names``): its value is taken;
- a gunicorn server hook: the function goes to ``ConfigFile.hooks``;
- a gunicorn setting that means nothing here: one warning saying why;
- anything else is the file's own (``CPU_CORES = cpu_count()``,
  ``workers_per_core = 4``) and is ignored, as gunicorn does; a near miss of
  a setting the file does not set (``worker``, ``graceful_timout``) gets a
  warning naming the setting meant.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from gshutdown.config.gunicorn_names import GUNICORN_NAMES, SETTING_FOR, Handling
from gshutdown.config.parsers import SettingError, octal
from gshutdown.config.table import BY_NAME, Kind, Setting

#: The module name a configuration file runs as (gunicorn's).
MODULE_NAME = "__config__"
#: Every name a file may mean: ours, gunicorn's settings and its hooks (for near misses).
KNOWN_NAMES: tuple[str, ...] = tuple(sorted({*BY_NAME, *GUNICORN_NAMES}))
#: How alike a name must be to a known one to be reported as a misspelling of it (difflib's ratio).
NEAR_MISS_CUTOFF = 0.85
#: When a file sets one setting under several names: the lowest rank wins
#: (our own name, then gunicorn's order: logconfig_dict over logconfig_json over logconfig).
_RANK = {"logconfig_dict": 1, "logconfig_json": 2, "logconfig": 3}


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


@dataclass(frozen=True)
class ConfigFile:
    """What a configuration file says."""

    path: str
    #: Setting values, by our names, parsed (``settings.resolve`` takes them).
    values: dict[str, Any] = field(default_factory=dict)
    #: gunicorn server hooks the file defines (``post_fork`` -> its function), for whoever calls them.
    hooks: dict[str, Callable[..., Any]] = field(default_factory=dict)
    #: Warnings to log once logging is set up (ignored settings, near misses).
    warnings: list[str] = field(default_factory=list)


def read_config_file(path: str) -> ConfigFile:
    """Run the configuration file at ``path`` (or ``python:MODULE``) and read its settings and hooks.

    Raises:
        SettingError: the file is missing or fails to run, or a value is bad
            (one line for the user).
    """
    namespace = _run(path)
    found: dict[str, tuple[int, str, Any]] = {}  # setting -> (rank, name in the file, value)
    hooks: dict[str, Callable[..., Any]] = {}
    warnings: list[str] = []
    own: list[str] = []
    for key, value in namespace.items():
        if key.startswith("_") or inspect.ismodule(value):
            continue  # imports, dunders and private helpers of the file itself
        setting_name = key if key in BY_NAME else SETTING_FOR.get(key)
        row = GUNICORN_NAMES.get(key)
        if setting_name is not None:
            if key == "logconfig_dict" and value == {}:
                continue  # gunicorn's default: no dictionary
            rank = 0 if key in BY_NAME else _RANK.get(key, 1)
            if setting_name not in found or rank < found[setting_name][0]:
                found[setting_name] = (rank, key, value)
        elif row is not None and row.handling is Handling.HOOK:
            hooks[key] = _hook(key, value, path)
        elif row is not None and row.handling is Handling.REFUSED:
            if value and value not in row.accepted:
                raise SettingError(f"config file {path}: {key} = {value!r} is not supported: {row.note}")
        elif row is not None and row.handling in (Handling.IGNORED, Handling.MAPPED):
            if ignored_gunicorn_value(key, value):
                warnings.append(f"config file: gunicorn's {key} is ignored: {row.note}")
        else:
            own.append(key)
    values = {name: _from_file(BY_NAME[name], key, value, path) for name, (_, key, value) in found.items()}
    meant = {*values, *hooks}
    for key in own:
        match = difflib.get_close_matches(key, KNOWN_NAMES, n=1, cutoff=NEAR_MISS_CUTOFF)
        if match and _setting_of(match[0]) not in meant:
            warnings.append(f"config file: {key!r} is not a setting; ignored (did you mean {match[0]!r}?)")
    return ConfigFile(path, values, hooks, warnings)


def ignored_gunicorn_value(name: str, value: Any) -> str:
    """Why gunicorn's setting ``name`` at ``value`` means nothing here ("" when it asks for nothing).

    A value such as False, None, 0 or "", or one of the row's ``accepted``
    ones (what happens here anyway), asks for nothing: nothing to say.
    """
    row = GUNICORN_NAMES[name]
    if not value or value in row.accepted:
        return ""
    return row.note


def _setting_of(name: str) -> str:
    return name if name in BY_NAME else SETTING_FOR.get(name, name)


def _run(path: str) -> dict[str, Any]:
    """The module namespace the file leaves, as gunicorn runs it."""
    if path.startswith("python:"):
        module_name = path[len("python:") :]
        try:
            loaded = sys.modules.get(module_name)
            # Run again when read again (a master's SIGHUP), as a file is.
            return vars(importlib.reload(loaded) if loaded is not None else importlib.import_module(module_name))
        except (Exception, SystemExit) as exc:
            raise SettingError(f"config module {module_name} failed: {type(exc).__name__}: {exc}") from None
    if not os.path.isfile(path):
        raise SettingError(f"config file not found: {path}")
    # Any name, not only *.py (gunicorn.conf, settings.cfg): as Python source.
    loader = importlib.machinery.SourceFileLoader(MODULE_NAME, path)
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    # Registered, as gunicorn does: the file's functions (hooks) keep a module to refer to.
    sys.modules[MODULE_NAME] = module
    try:
        loader.exec_module(module)
    except SyntaxError as exc:
        raise SettingError(f"config file {path}, line {exc.lineno}: {exc.msg}") from None
    except (Exception, SystemExit) as exc:  # sys.exit() in the file too: one line, not a silent exit
        raise SettingError(f"config file {path} failed: {type(exc).__name__}: {exc}") from None
    return vars(module)


def _hook(name: str, value: Any, path: str) -> Callable[..., Any]:
    """The hook function ``name = value`` gives (gunicorn also takes ``"module.function"``)."""
    if isinstance(value, str):
        module, _, attr = value.rpartition(".")
        try:
            value = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise SettingError(f"config file {path}: {name} = {value!r}: {exc}") from None
        except Exception as exc:  # the module itself failed as it was imported
            raise SettingError(f"config file {path}: {name} = {value!r}: {type(exc).__name__}: {exc}") from None
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
        if setting.name == "proxy_protocol" and isinstance(value, str):
            # gunicorn 24+: off, v1, v2 or auto; both versions are read here either way.
            return value.strip().lower() not in ("off", "", "0", "false", "no")
        if setting.name == "secure_scheme_headers" and isinstance(value, dict):
            value = [f"{name}={wanted}" for name, wanted in value.items()]
        if key == "sendfile" and (value is None or isinstance(value, bool)):
            return value is False  # gunicorn's is the opposite of no_sendfile; None, its default, sends with it
        if setting.kind is Kind.FLAG:
            if not isinstance(value, bool):
                raise SettingError(f"want True or False, not {value!r}")
            return value
        if setting.kind is Kind.LIST:
            if value is None and setting.default is None:
                return None
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
                raise SettingError(f"want a string or a list of strings, not {value!r}")
            return [setting.parse(item) for item in items]
        if value is None:
            return None
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            value = ",".join(value)  # gunicorn's lists of names (forwarder_headers, pythonpath)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise SettingError(f"want a string or a number, not {value!r}")
        if setting.parse is octal and isinstance(value, int):
            return value  # umask = 0o022, as gunicorn files write it
        return setting.parse(str(value))
    except SettingError as exc:
        raise SettingError(f"config file {path}: {key}: {exc}") from None
