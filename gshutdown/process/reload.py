"""``--reload``: restart when the app's code changes (for development).

The watching is ``watchfiles``' (inotify, or polling where there is none;
``pip install 'gshutdown[reload]'``), in a real OS thread, whatever gevent
patched: it blocks in Rust without holding the GIL. It watches the directory
the app's top-level module or package is in, for ``.py`` files (its
``DefaultFilter`` skips ``.git``, ``.venv``, ``__pycache__`` ...), and the
``reload_extra_files``: files, or glob patterns (``templates/**/*.html``)
matched against each changed path, so a file created later counts. On a
change:

- a master (``--workers``) sends itself SIGHUP: new workers import the new
  code, and the old ones drain only once those are ready; if the new code
  fails, the old workers keep serving. With ``--preload`` the master holds
  the old code, so it sends SIGUSR2 instead: a new master with the new code.
- the one process drains gracefully (as on SIGTERM), then re-executes its
  own command line in the same process (same pid); a SIGTERM or SIGINT
  during that drain makes it exit once the drain is over instead.
"""

from __future__ import annotations

import fnmatch
import glob
import importlib.util
import logging
import os
import re
import sys
from typing import Any, Callable, Iterable, NoReturn, Optional

from gshutdown.config.settings import Settings

log = logging.getLogger("gshutdown")

#: Milliseconds without a further change before a batch of changes counts.
QUIET_MS = 50
#: Milliseconds the watching thread waits in Rust before looking at its stop flag.
STOP_CHECK_MS = 500
#: Seconds ``start()`` waits for the watches to be in place.
WATCH_SETUP_WAIT = 5.0

#: The directory the command was started in (``remember_launch_dir``): a re-exec
#: starts there, so relative paths on its command line mean what they meant.
_launch_dir: Optional[str] = None


def remember_launch_dir() -> None:
    """Record the working directory before ``--chdir`` changes it."""
    global _launch_dir
    _launch_dir = os.getcwd()


def app_directory(spec: Optional[str]) -> str:
    """The directory holding the app's top-level module or package (without importing it).

    ``FILE.py[:NAME]``: the file's directory. ``pkg.module:app``: where ``pkg``
    is found on ``sys.path`` (the current directory first, as the app loader
    looks). Anything not found: the current directory.
    """
    target = (spec or "").partition(":")[0]
    if target.endswith(".py"):
        return os.path.dirname(os.path.abspath(target))
    top = target.split(".")[0]
    if top:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            found = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            found = None
        if found is not None:
            if found.submodule_search_locations:
                return os.path.dirname(os.path.abspath(next(iter(found.submodule_search_locations))))
            if found.origin and os.path.isfile(found.origin):
                return os.path.dirname(os.path.abspath(found.origin))
    return os.getcwd()


#: What makes an entry a glob pattern rather than a file's name (as gunicorn decides).
_GLOB_CHARACTERS = frozenset("*?[")


def _is_pattern(path: str) -> bool:
    return not _GLOB_CHARACTERS.isdisjoint(path)


class FilePattern:
    """A glob pattern over absolute paths, as ``glob.glob(..., recursive=True)`` reads it.

    ``*``, ``?`` and ``[...]`` match within one path component, ``**`` any
    number of components; a name starting with ``.`` is matched only by a
    component starting with ``.``, as glob skips hidden files.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        parts = pattern.split(os.sep)
        fixed = next(index for index, part in enumerate(parts) if _is_pattern(part) and not _is_escaped(part))
        #: The deepest directory the pattern cannot leave: watched recursively.
        self.root = os.sep.join(_unescape(part) for part in parts[:fixed]) or os.sep
        self._parts = parts[fixed:]

    def matches(self, path: str) -> bool:
        relative = os.path.relpath(path, self.root)
        if relative == os.curdir or relative.startswith(os.pardir + os.sep) or relative == os.pardir:
            return False
        return _match_parts(self._parts, relative.split(os.sep))

    def expand(self) -> list[str]:
        return glob.glob(self.pattern, recursive=True)


def _is_escaped(part: str) -> bool:
    """A component ``glob.escape`` made: every special character inside brackets, as ``[*]``."""
    return not _GLOB_CHARACTERS.isdisjoint(part) and glob.escape(_unescape(part)) == part


def _unescape(part: str) -> str:
    return re.sub(r"\[([*?\[])\]", r"\1", part)


def _match_parts(patterns: list[str], names: list[str]) -> bool:
    if not patterns:
        return not names
    head, rest = patterns[0], patterns[1:]
    if head == "**":
        for skipped in range(len(names) + 1):
            if _match_parts(rest, names[skipped:]):
                return True
            if skipped < len(names) and names[skipped].startswith("."):
                return False  # ** does not descend into hidden directories
        return False
    if not names or (names[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(names[0], head) and _match_parts(rest, names[1:])


def _watchable(directory: str, within: str) -> Optional[str]:
    """``directory``, or its nearest ancestor that exists if that is ``within`` or under it; else None.

    watchfiles cannot watch what is not there, and watching far up (``/``
    for a mistyped path) would walk half the file system.
    """
    path = directory
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    if path in (directory, within) or path.startswith(within.rstrip(os.sep) + os.sep):
        return path
    return None


class CodeWatcher:
    """Calls ``on_change(paths)`` from its own thread for each batch of changed files.

    Args:
        directory: watched recursively for ``.py`` files.
        extra_files: files of any kind watched too, or glob patterns
            (``**`` recursive), relative to the launch directory.
        on_change: called with the changed paths; it must be safe to call
            from another thread (``os.kill``, ``loop.run_callback_threadsafe``).
    """

    def __init__(self, directory: str, extra_files: Iterable[str], on_change: Callable[[list[str]], Any]) -> None:
        self.directory = os.path.abspath(directory)
        # Relative to where the command was started, as gunicorn's are (not to --chdir).
        base = _launch_dir or os.getcwd()
        # A pattern by what the user wrote: the launch directory's own name may hold a "[".
        entries = list(extra_files)
        self.extra_files = frozenset(
            os.path.abspath(os.path.join(base, path)) for path in entries if not _is_pattern(path)
        )
        escaped = glob.escape(base)
        patterns = [os.path.normpath(os.path.join(escaped, path)) for path in entries if _is_pattern(path)]
        self.patterns = [FilePattern(pattern) for pattern in patterns]
        self.on_change = on_change
        self._stopped = False
        self._watching: Any = None  # a lock held until the watches are in place

    def is_set(self) -> bool:
        """watchfiles' ``stop_event``: asked first once its watches are in place, then every step."""
        if self._watching is not None and self._watching.locked():
            self._watching.release()
        return self._stopped

    def stop(self) -> None:
        self._stopped = True

    def start(self) -> None:
        """Start watching, in a real thread (``gevent.monkey`` may have patched ``threading``)."""
        from gevent import monkey

        start_new_thread, allocate_lock = monkey.get_original("_thread", ["start_new_thread", "allocate_lock"])
        self._watching = allocate_lock()
        self._watching.acquire()
        start_new_thread(self._watch, ())
        # Until then an edit would go unseen: a change saved just after a restart included.
        if not self._watching.acquire(timeout=WATCH_SETUP_WAIT):
            log.warning("--reload: the file watcher is not watching yet after %g s", WATCH_SETUP_WAIT)
        extra = f" and {len(self.extra_files)} more file(s)" if self.extra_files else ""
        extra += "".join(f" and {pattern.pattern}" for pattern in self.patterns)
        log.info("--reload: watching .py files under %s%s", self.directory, extra)
        for pattern in self.patterns:
            if not pattern.expand():
                # Not an error: the pattern is matched on every change, so a file created later counts.
                log.warning("--reload: %s matches no file yet", pattern.pattern)

    def _watch(self) -> None:
        import watchfiles

        # Its "N changes detected" lines: the reload's own line says which file.
        logging.getLogger("watchfiles").setLevel(logging.WARNING)

        default = watchfiles.DefaultFilter()
        extra = self.extra_files
        patterns = self.patterns

        def wanted_file(change: Any, path: str) -> bool:
            return (
                path in extra
                or (path.endswith(".py") and default(change, path))
                or any(pattern.matches(path) for pattern in patterns)
            )

        def new_directory(change: Any, path: str) -> bool:
            return change == watchfiles.Change.added and default(change, path) and os.path.isdir(path)

        def wanted(change: Any, path: str) -> bool:
            return wanted_file(change, path) or new_directory(change, path)

        def files_within(directory: str) -> set[str]:
            # A file written into a directory just made can precede the watch
            # on that directory, and so raise no event of its own.
            found: set[str] = set()
            for parent, directories, files in os.walk(directory):
                directories[:] = [
                    name for name in directories if default(watchfiles.Change.added, os.path.join(parent, name))
                ]
                found.update(
                    path for name in files if wanted_file(watchfiles.Change.added, path := os.path.join(parent, name))
                )
            return found

        within = _launch_dir or os.getcwd()
        roots = {self.directory}
        for wanted_directory in {*(os.path.dirname(path) for path in extra), *(pattern.root for pattern in patterns)}:
            root = _watchable(wanted_directory, within)
            if root is None:
                log.warning("--reload: %s does not exist: what is in it is not watched", wanted_directory)
            else:
                roots.add(root)
        try:
            for changes in watchfiles.watch(
                *sorted(roots),
                watch_filter=wanted,
                step=QUIET_MS,
                stop_event=self,
                rust_timeout=STOP_CHECK_MS,
                raise_interrupt=False,
            ):
                if self._stopped:
                    return
                paths = set()
                for change, path in changes:
                    if wanted_file(change, path):
                        paths.add(path)
                    else:
                        paths.update(files_within(path))
                if paths:
                    self.on_change(sorted(paths))
        except Exception:
            log.exception("--reload: the file watcher failed; no more reloads")
        finally:
            self.is_set()  # start() waits no longer


def watch_for_master(settings: Settings) -> CodeWatcher:
    """Watch the app's code; on a change, signal this master to reload (SIGHUP, or SIGUSR2 with preload)."""
    import signal

    signum = signal.SIGUSR2 if settings.preload else signal.SIGHUP

    def changed(paths: list[str]) -> None:
        log.info("--reload: %s changed: %s", _describe(paths), signal.Signals(signum).name)
        os.kill(os.getpid(), signum)

    watcher = CodeWatcher(app_directory(settings.app), settings.reload_extra_files, changed)
    watcher.start()
    return watcher


class SingleProcessReload:
    """For the one process: a change drains the runner gracefully (``deliver``); then ``exec_again()``."""

    def __init__(self, settings: Settings, deliver: Callable[[], Any]) -> None:
        import gevent

        self.changed = False
        loop = gevent.get_hub().loop

        def changed(paths: list[str]) -> None:
            if self.changed:
                return
            self.changed = True
            self.watcher.stop()
            log.info("--reload: %s changed: draining, then restarting", _describe(paths))
            loop.run_callback_threadsafe(deliver)

        self.watcher = CodeWatcher(app_directory(settings.app), settings.reload_extra_files, changed)
        self.watcher.start()

    def exec_again(self) -> NoReturn:
        """Replace this process with a fresh run of the same command line (same pid); never returns."""
        argv = [sys.executable, "-m", "gshutdown", *sys.argv[1:]]
        log.info("--reload: restarting: %s", " ".join(argv))
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        if _launch_dir is not None:
            os.chdir(_launch_dir)
        os.execv(argv[0], argv)


def _describe(paths: list[str]) -> str:
    shown = ", ".join(os.path.basename(path) for path in paths[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
