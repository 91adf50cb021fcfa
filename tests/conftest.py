from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from tests.helpers import ServerThread


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
