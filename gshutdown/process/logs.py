"""Log handlers: configured once per process tree, reopened on SIGUSR1.

The master (or the single process) configures logging before it forks, and
workers inherit the handlers. A master configures again on SIGHUP, which
replaces the handlers the first call added, so no line is written twice. The
files are opened in append mode, so lines from several processes never
overwrite each other.

``reopen()`` is logrotate's ``postrotate`` step: after the file was renamed,
new lines go to a new file at the configured path (no ``copytruncate``).
"""

from __future__ import annotations

import faulthandler
import json
import logging
import logging.config
import os
import sys
from typing import Any, Optional, TextIO, Union

from gshutdown.wsgi.access_format import access_log

_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"
#: Handlers writing to files, by logger: the ones ``reopen()`` replaces.
_file_handlers: list[tuple[logging.Logger, logging.FileHandler]] = []
#: Every handler ``configure()`` added, by logger: the ones its next call replaces.
_added: list[tuple[logging.Logger, logging.Handler]] = []
_stack_dump_signal: Optional[int] = None
#: ``capture_output``: file descriptors 1 and 2 follow the error log.
_capturing = False
_stack_dump_chain = False


def configure(
    level: str,
    *,
    access_log_path: Optional[str] = None,
    error_log_path: Optional[str] = None,
    dict_config: Union[str, dict[str, Any], None] = None,
    capture_output: bool = False,
) -> None:
    """Send gshutdown's log (and the root logger's) to ``error_log_path``.

    Args:
        level: a logging level name (``"info"``).
        access_log_path: file for request lines, ``"-"`` for stderr, None for none.
        error_log_path: file for everything else, ``"-"`` or None for stderr.
        dict_config: a ``logging.config.dictConfig()`` dictionary, or the path
            of a JSON file holding one, applied after the rest (so it may
            replace any of it; files it opens are not reopened by SIGUSR1).
            A file that does not hold JSON is read by ``logging.config.fileConfig()``
            (gunicorn's ``logconfig``).
        capture_output: point file descriptors 1 and 2 at the error log, so
            what the app (or a C library) prints goes there (gunicorn's
            ``capture_output``); with the error log on stderr, stdout joins it.

    A second call replaces what the first added (a master's SIGHUP),
    including the handlers ``dict_config`` attached; the files open first,
    so one that cannot be opened leaves the logging as it was.

    Raises:
        ValueError: a log file cannot be opened, or ``dict_config`` cannot be
            read or applied (one line).
    """
    error_handler = _open(error_log_path, logging.Formatter(_FORMAT))
    access_handler = _open(access_log_path, logging.Formatter("%(message)s")) if access_log_path else None
    for logger, handler in _added:
        logger.removeHandler(handler)
        handler.close()
    _added.clear()
    _file_handlers.clear()
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper()))
    _attach(root, error_handler)
    access_log.propagate = False
    if access_handler is not None:
        _attach(access_log, access_handler)
        access_log.setLevel(logging.INFO)
    if dict_config is not None:
        before = _every_handler()
        try:
            _apply_dict_config(dict_config)
        finally:
            # Its handlers too are the next call's to replace, even those of a half-applied one.
            _added.extend(_every_handler() - before)
    if capture_output:
        global _capturing
        _capturing = True
        _capture(error_stream())


def _capture(stream: TextIO) -> None:
    """Point fds 1 and 2 at ``stream``'s file (gunicorn's ``capture_output``)."""
    for std in (sys.stdout, sys.stderr):
        std.flush()
    target = stream.fileno()
    for fd in (1, 2):
        if fd != target:
            os.dup2(target, fd)
    # A print() to a file is block-buffered: line by line, it reaches the log as it happens.
    for std in (sys.stdout, sys.stderr):
        reconfigure = getattr(std, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)


def _apply_dict_config(config: Union[str, dict[str, Any]]) -> None:
    try:
        if isinstance(config, str):
            with open(config, encoding="utf-8") as fh:
                text = fh.read()
            if not text.lstrip().startswith("{"):
                # gunicorn's logconfig: an INI file for fileConfig().
                logging.config.fileConfig(config, disable_existing_loggers=False)
                return
            config = json.loads(text)
        assert isinstance(config, dict)
        config.setdefault("version", 1)
        config.setdefault("disable_existing_loggers", False)
        logging.config.dictConfig(config)
    except (OSError, ValueError, TypeError, AttributeError, ImportError, AssertionError, KeyError) as exc:
        raise ValueError(f"--log-config: {exc}") from None


def _open(path: Optional[str], formatter: logging.Formatter) -> logging.Handler:
    handler: logging.Handler
    if path in (None, "", "-"):
        handler = logging.StreamHandler(sys.stderr)
    else:
        assert path is not None
        try:
            handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot open the log file {path}: {exc.strerror}") from None
    handler.setFormatter(formatter)
    return handler


def _attach(logger: logging.Logger, handler: logging.Handler) -> None:
    logger.addHandler(handler)
    _added.append((logger, handler))
    if isinstance(handler, logging.FileHandler):
        _file_handlers.append((logger, handler))


def _every_handler() -> set[tuple[logging.Logger, logging.Handler]]:
    loggers = [logging.getLogger()]
    loggers += [logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)]
    return {(logger, handler) for logger in loggers for handler in logger.handlers}


def reopen() -> int:
    """Reopen every log file at its path (after logrotate renamed it); the number reopened."""
    for index, (logger, old) in enumerate(_file_handlers):
        new = logging.FileHandler(old.baseFilename, mode="a", encoding="utf-8")
        new.setFormatter(old.formatter)
        new.setLevel(old.level)
        # Add first, then remove: no record falls between the two.
        logger.addHandler(new)
        logger.removeHandler(old)
        old.close()
        _file_handlers[index] = (logger, new)
        _added[_added.index((logger, old))] = (logger, new)
    if _stack_dump_signal is not None:
        install_stack_dump(_stack_dump_signal, chain=_stack_dump_chain)
    if _capturing:
        _capture(error_stream())
    return len(_file_handlers)


def error_stream() -> TextIO:
    """Where the error log goes now: its file, or stderr."""
    for logger, handler in _file_handlers:
        if logger is logging.getLogger() and handler.stream is not None:
            return handler.stream
    return sys.stderr


def install_stack_dump(signum: int, *, chain: bool = False) -> None:
    """On ``signum``, write every thread's stack to the error log, from C.

    From C, because the stack is wanted exactly when Python cannot run a
    handler: the hub is blocked by a CPU loop or an unpatched C call, and the
    running frame is the blocking greenlet's. With ``chain``, the Python
    handler installed before this runs next (gunicorn's ``worker_abort``).
    """
    global _stack_dump_signal, _stack_dump_chain
    _stack_dump_signal = signum
    _stack_dump_chain = chain
    faulthandler.register(signum, file=error_stream(), all_threads=True, chain=chain)
