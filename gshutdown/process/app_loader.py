"""Finding and importing the WSGI application named on the command line."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Optional


class AppNotLoadable(Exception):
    """The application cannot be imported or is not callable (a usage error)."""


def load_app(spec: Optional[str]) -> Any:
    """Import ``MODULE:NAME``, ``MODULE`` or ``FILE.py[:NAME]`` and return the app.

    ``NAME`` may end in ``()`` to call a factory with no arguments. Without a
    name, ``app`` and then ``application`` are looked up.

    Raises:
        AppNotLoadable: it cannot be imported, is missing, or is not callable;
            the message is one line fit for the user.
    """
    if not spec:
        raise AppNotLoadable("no application given (APP, or wsgi_app in the config file)")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    target, _, name = spec.partition(":")
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise AppNotLoadable(f"no such file: {target}")
        directory, filename = os.path.split(os.path.abspath(target))
        sys.path.insert(0, directory)
        target = filename[:-3]
    try:
        module = importlib.import_module(target)
    except ImportError as exc:
        if getattr(exc, "name", None) and target.startswith(exc.name or "\0"):
            raise AppNotLoadable(f"cannot import {target!r}: {exc}") from None
        raise AppNotLoadable(f"importing {target!r} failed: {exc}") from None
    except Exception as exc:
        raise AppNotLoadable(f"importing {target!r} failed: {type(exc).__name__}: {exc}") from None
    names = [name] if name else ["app", "application"]
    for candidate in names:
        call = candidate.endswith("()")
        attr = candidate[:-2] if call else candidate
        obj = getattr(module, attr, None)
        if obj is None:
            continue
        if call:
            try:
                obj = obj()
            except Exception as exc:
                raise AppNotLoadable(f"{target}:{candidate} failed: {type(exc).__name__}: {exc}") from None
        if not callable(obj):
            raise AppNotLoadable(f"{target}:{attr} is not a WSGI application (not callable)")
        return obj
    raise AppNotLoadable(f"no {' or '.join(names)} in module {target!r}")
