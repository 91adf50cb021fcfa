"""A test application serving one file through ``wsgi.file_wrapper`` (process tests, bench).

``GET /file``       the file named by ``$SERVE_FILE``, through ``environ['wsgi.file_wrapper']``,
                    with its Content-Length; logs "file response started"
``GET /file?loop=1`` the same bytes through a file-like without ``fileno()``: the read loop
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable

log = logging.getLogger("tests.apps.files")


class ReadOnly:
    """A file-like with ``read`` and ``close`` only: no ``fileno()``, so no ``sendfile``."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close(), called by the server

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def close(self) -> None:
        self._file.close()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = os.environ["SERVE_FILE"]
    size = os.path.getsize(path)
    filelike: Any = ReadOnly(path) if "loop=1" in environ["QUERY_STRING"] else open(path, "rb")  # noqa: SIM115
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
    log.info("file response started")
    return environ["wsgi.file_wrapper"](filelike, 64 * 1024)  # type: ignore[no-any-return]
