"""The process title (``proc_name``): what ``ps`` and ``top`` show, as gunicorn sets it.

Setting it needs the ``setproctitle`` package; without it the title is left
alone, and nothing else changes (gunicorn does the same).
"""

from __future__ import annotations

import logging
from typing import Optional

log = logging.getLogger("gshutdown")


def title(name: str, role: Optional[str]) -> str:
    """``gshutdown: master [NAME]``, ``gshutdown: worker [NAME]``, or ``gshutdown: [NAME]`` for the one process."""
    return f"gshutdown: {role} [{name}]" if role else f"gshutdown: [{name}]"


def set_title(name: Optional[str], role: Optional[str] = None) -> bool:
    """Set this process's title for ``name`` (None: leave it); True if it was set.

    Args:
        name: the ``proc_name`` setting.
        role: ``"master"``, ``"worker"``, or None for a process on its own.
    """
    if not name:
        return False
    try:
        import setproctitle  # optional: pip install setproctitle
    except ImportError:
        log.debug("proc_name %r: setproctitle is not installed; the process title is left alone", name)
        return False
    setproctitle.setproctitle(title(name, role))
    return True
