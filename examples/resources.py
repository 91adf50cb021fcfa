"""Shutdown hooks that release what the application holds: a pool and a file.

Run::

    JOURNAL_PATH=/tmp/journal.log gshutdown examples.resources:app

Observe: each ``curl localhost:8000/`` borrows a connection from the (toy)
pool and appends a line to the journal, which is buffered, not yet on disk.
On SIGTERM, after the last request has finished, the log shows ``pool
closed`` and ``journal flushed``, and the journal file holds every line.

``gshutdown.on_shutdown`` declares a hook from the application module (the
module never sees the ``Server``): "stopped" hooks (the default) run once the
connections are drained, one after another, each bounded by its ``timeout``
and by the shutdown deadline; a hook that fails is logged and the next still runs.
"""

import contextlib
import itertools
import logging
import os
import tempfile

from gevent.queue import Queue

import gshutdown

log = logging.getLogger("examples.resources")


class ToyPool:
    """Stands in for a database pool: connections out of a queue."""

    def __init__(self, size):
        self._free = Queue()
        for number in range(size):
            self._free.put(f"conn-{number}")
        self.size = size
        self.closed = False

    @contextlib.contextmanager
    def connection(self):
        if self.closed:
            raise RuntimeError("pool is closed")
        connection = self._free.get(timeout=5)
        try:
            yield connection
        finally:
            self._free.put(connection)

    def close(self):
        self.closed = True
        for _ in range(self.size):
            self._free.get(timeout=5)  # each borrowed connection must come back first


pool = ToyPool(size=4)
journal = open(  # noqa: SIM115 - closed by the hook below
    os.environ.get("JOURNAL_PATH", os.path.join(tempfile.gettempdir(), "gshutdown-journal.log")),
    "a",
    buffering=1 << 16,
)
request_numbers = itertools.count(1)


@gshutdown.on_shutdown(timeout=5)
def close_pool():
    pool.close()
    log.info("pool closed (%d connections)", pool.size)


@gshutdown.on_shutdown(timeout=5)
def flush_journal():
    journal.flush()
    os.fsync(journal.fileno())
    journal.close()
    log.info("journal flushed: %s", journal.name)


def app(environ, start_response):
    number = next(request_numbers)
    with pool.connection() as connection:
        journal.write(f"request {number} {environ['PATH_INFO']} via {connection}\n")
    body = f"request {number} journaled\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
