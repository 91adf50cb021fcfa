"""The app the gunicorn config corpus serves (tests/gunicorn_configs): it answers with what it sees.

``GET /anything`` answers a JSON object: the mount (``SCRIPT_NAME``,
``PATH_INFO``), ``wsgi.url_scheme``, a few environment variables a config's
``raw_env`` sets, whether gevent patched ``socket`` and ``threading``, the pid
and the first entries of ``sys.path``. ``?print=TEXT`` also prints TEXT to
stdout and stderr (for ``capture_output``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs

#: Environment variables the corpus's raw_env lines set.
ENV_NAMES = ("APP_MODE", "DJANGO_SETTINGS_MODULE", "FEATURE_FLAGS", "SCRIPT_NAME")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    from gevent import monkey

    query = parse_qs(environ.get("QUERY_STRING", ""))
    for text in query.get("print", []):
        print(f"stdout: {text}")
        print(f"stderr: {text}", file=sys.stderr)
    seen = {
        "script_name": environ["SCRIPT_NAME"],
        "path_info": environ["PATH_INFO"],
        "scheme": environ["wsgi.url_scheme"],
        "remote_user": environ.get("HTTP_REMOTE_USER"),
        "http_script_name": environ.get("HTTP_SCRIPT_NAME"),
        "env": {name: os.environ.get(name) for name in ENV_NAMES},
        "patched": {name: monkey.is_module_patched(name) for name in ("socket", "threading", "ssl")},
        "pid": os.getpid(),
        "sys_path": sys.path[:4],
        "loaded_from": __name__,
    }
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


application = app
