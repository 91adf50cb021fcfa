"""Rewrite the README's generated tables from the code that defines them.

    python scripts/readme_tables.py          # rewrite README.md in place
    python scripts/readme_tables.py --check  # exit 1 if README.md is out of date

Each table stands between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``
lines; ``tests/test_settings.py`` fails when one has drifted from its source.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

from gshutdown.config import table

README = Path(__file__).resolve().parents[1] / "README.md"
#: Table name -> what makes it.
TABLES: dict[str, Callable[[], str]] = {
    "options": table.readme_table,
}


def rewrite(text: str) -> str:
    """``text`` with every generated table made anew."""
    for name, make in TABLES.items():
        pattern = re.compile(rf"(<!-- generated: {name} -->\n).*?(<!-- end: {name} -->)", re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no '<!-- generated: {name} -->' ... '<!-- end: {name} -->' section")
        text = pattern.sub(lambda match, make=make: match.group(1) + make() + match.group(2), text)
    return text


def main() -> int:
    current = README.read_text()
    fresh = rewrite(current)
    if "--check" in sys.argv[1:]:
        if fresh != current:
            print("README.md is out of date: run python scripts/readme_tables.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
