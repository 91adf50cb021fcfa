from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from tests.helpers import ServerThread
from tests.tls_helpers import TLSFiles, make_tls_files


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerThread]]:
    """Start ``ServerThread(app, **options)``; every one is stopped at teardown."""
    started: list[ServerThread] = []

    def start(app: Callable[..., Any], **options: Any) -> ServerThread:
        thread = ServerThread(app, **options).start()
        started.append(thread)
        return thread

    yield start
    for thread in started:
        thread.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """Certificates made with ``openssl`` for this run (see ``tests.tls_helpers``)."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))
