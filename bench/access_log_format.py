"""What formatting an access-log line costs: microseconds per line, per format, in this process.

    python bench/access_log_format.py [--lines 100000] [--repeat 5]

Formats ``--lines`` lines for a typical request (printable ASCII everywhere)
and for a hostile one (CR, LF, ESC and a non-UTF-8 byte in the path, a quote
in the user agent) in the Common Log Format, gunicorn's usual combined format
and JSON, through the emitter the access log uses, with a logger that drops
the record after formatting it (no I/O), and once more with the logger off
(the line is built before the logger is asked, so that is the formatting
alone). Prints the best of ``--repeat`` runs, in microseconds per line.
"""

from __future__ import annotations

import argparse
import functools
import logging
import timeit
from typing import Any

from gshutdown.wsgi import access_format

COMBINED = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
FORMATS = {"clf": None, "combined": COMBINED, "json": "json"}


def environ(path: str, agent: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "RAW_URI": path,
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_REFERER": "https://example.com/",
        "HTTP_USER_AGENT": agent,
    }


REQUESTS = {
    "typical": environ("/api/v1/items/42", "Mozilla/5.0 (X11; Linux x86_64) curl/8.5.0"),
    "hostile": environ("/a\r\nFAKE\x1b[31m\xff", 'evil "agent"'),
}


class _Formatted(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        record.getMessage()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    logged = logging.getLogger("bench.access.logged")
    logged.propagate = False
    logged.addHandler(_Formatted())
    logged.setLevel(logging.INFO)
    silent = logging.getLogger("bench.access.silent")
    silent.setLevel(logging.WARNING)
    headers = [("Content-Type", "text/plain"), ("Content-Length", "13")]
    print(f"{args.lines} lines, best of {args.repeat}, us per line")
    print(f"{'format':<10} {'request':<8} {'format only':>12} {'+ logging':>10}")
    for name, fmt in FORMATS.items():
        for kind, env in REQUESTS.items():
            figures = []
            for logger in (silent, logged):
                emit = access_format.emitter(fmt, logger)
                best = min(
                    timeit.repeat(
                        functools.partial(emit, env, "200 OK", headers, 13, 0.0012),
                        number=args.lines,
                        repeat=args.repeat,
                    )
                )
                figures.append(best / args.lines * 1e6)
            print(f"{name:<10} {kind:<8} {figures[0]:>12.2f} {figures[1]:>10.2f}")


if __name__ == "__main__":
    main()
