"""``gevent.pywsgi.WSGIServer`` with TCP_NODELAY set on every accepted socket.

The same launcher as ``pywsgi_plain`` with ``--nodelay`` (a ``handle()``
override that sets the option before pywsgi's handler sees the socket).
"""

from __future__ import annotations

from typing import Optional

NAME = "pywsgi-nodelay"


def unavailable() -> Optional[str]:
    return None


def command(opts) -> list[str]:
    from servers import pywsgi_plain

    return pywsgi_plain.command(opts, nodelay=True)
