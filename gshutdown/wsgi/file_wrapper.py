"""``environ['wsgi.file_wrapper']``: a file as a response body, sent zero-copy when it can be.

PEP 3333's optional extension, as Django's ``FileResponse`` and WhiteNoise use
it: ``environ['wsgi.file_wrapper'](filelike, block_size)`` returns an iterable
of the file's blocks. When the application returns that object unchanged, the
adapter special-cases it (``Response.write_file``):

- a regular file (it has ``fileno()``) on a plain socket goes out with
  ``os.sendfile``, from the file's current position, never through Python;
- anything else (TLS, ``io.BytesIO``, a pipe) is read ``block_size`` bytes at
  a time and written as any body is.

Either way the body is exactly the application's ``Content-Length`` bytes
when it set one, and otherwise the rest of a regular file (its size is known:
it becomes the ``Content-Length``, as the whole-body list does) or, for other
file-likes, everything ``read()`` returns (chunked). gunicorn sends the same
bytes for a file without ``Content-Length`` as one chunk whose size comes
from ``fstat``; declaring the length instead lets HTTP/1.0 clients keep the
connection and every client show progress.
"""

from __future__ import annotations

import io
import os
import stat
from typing import Any, NamedTuple, Optional


class FileExtent(NamedTuple):
    """Where the unsent rest of a regular file is."""

    #: The file's descriptor.
    fd: int
    #: The position the body starts at, in bytes (the file object's, buffered reads included).
    offset: int
    #: Bytes from ``offset`` to the end of the file (0 if the position is past it).
    size: int


class FileWrapper:
    """``wsgi.file_wrapper``: iterates over ``filelike`` in ``block_size`` pieces.

    Args:
        filelike: an object with ``read(size)``; ``close()`` is called at the
            end of the response when it has one, as PEP 3333 requires.
        block_size: bytes per read (and, for ``sendfile``, how much the client
            must take within each ``write_timeout``).
    """

    __slots__ = ("block_size", "filelike", "sent")

    def __init__(self, filelike: Any, block_size: int = 8192) -> None:
        self.filelike = filelike
        self.block_size = block_size if isinstance(block_size, int) and block_size > 0 else 8192
        #: Body bytes taken from the file so far (by iteration, or by the server sending it).
        self.sent = 0

    def __iter__(self) -> FileWrapper:
        return self

    def __next__(self) -> bytes:
        data: bytes = self.filelike.read(self.block_size)
        if data:
            self.sent += len(data)
            return data
        raise StopIteration

    def close(self) -> None:
        """Close the file-like (PEP 3333: the server calls this once the response is over)."""
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()

    def extent(self) -> Optional[FileExtent]:
        """The descriptor, position and remaining size of a regular file; None for anything else.

        The position is the file object's ``tell()`` when it has one: a
        buffered reader that has read ahead holds a descriptor already past
        what it returned.
        """
        filelike = self.filelike
        if isinstance(filelike, io.TextIOBase):
            return None  # its read() gives str: the read loop reports that
        try:
            fd = filelike.fileno()
            if type(fd) is not int:
                return None
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None
            tell = getattr(filelike, "tell", None)
            offset = tell() if tell is not None else os.lseek(fd, 0, os.SEEK_CUR)
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation; a closed file
            return None
        if type(offset) is not int or offset < 0:
            return None
        return FileExtent(fd, offset, max(0, info.st_size - offset))
