"""Rewrite the README's generated tables from the code that defines them.

    python scripts/readme_tables.py          # rewrite README.md in place
    python scripts/readme_tables.py --check  # exit 1 if README.md is out of date

Each table stands between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``
lines; ``tests/test_settings.py`` and ``tests/test_config_file.py`` fail when one has
drifted from its source (the settings table, ``gshutdown.config.gunicorn_names``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

from gshutdown.config import table
from gshutdown.config.gunicorn_names import GUNICORN_NAMES, HOOK_HANDLING, Handling
from gshutdown.config.table import BY_NAME

README = Path(__file__).resolve().parents[1] / "README.md"


def _ours(name: str) -> str:
    """Our setting as a user writes it on the command line."""
    setting = BY_NAME[name]
    flags = [flag for flag in setting.flags if flag.startswith("--")]
    if not flags:
        return f"`{name.upper()}`"
    return f"`{flags[0]}`"


def _here(name: str) -> str:
    row = GUNICORN_NAMES[name]
    note = f": {row.note}" if row.note else ""
    if row.handling is Handling.HONOURED:
        return f"honoured ({_ours(row.target or name)}){note}"
    if row.handling is Handling.MAPPED:
        return f"mapped to {_ours(row.target)}{note}" if row.target else f"mapped{note}"
    if row.handling is Handling.IGNORED:
        return f"ignored{note}"
    if row.handling is Handling.REFUSED:
        accepted = " or ".join(f"`{value!r}`" for value in row.accepted)
        return f"refused (exit 2) unless false{' or ' + accepted if accepted else ''}{note}"
    raise AssertionError(name)


def gunicorn_tables() -> str:
    """gunicorn's settings and hooks, each with what it becomes here (``gunicorn_names``)."""
    settings = [name for name, row in GUNICORN_NAMES.items() if row.handling is not Handling.HOOK]
    hooks = [name for name, row in GUNICORN_NAMES.items() if row.handling is Handling.HOOK]
    counts = {handling: 0 for handling in Handling}
    for row in GUNICORN_NAMES.values():
        counts[row.handling] += 1
    lines = [
        f"{len(settings)} settings: {counts[Handling.HONOURED]} honoured, {counts[Handling.MAPPED]} mapped, "
        f"{counts[Handling.IGNORED]} ignored, {counts[Handling.REFUSED]} refused. In a `-c` file an ignored one "
        "logs one warning saying why (unless its value asks for nothing: False, None, 0, or what happens here "
        "anyway); a name that is no setting at all is the file's own and is ignored silently, unless it is a "
        "near miss of a setting the file does not set (`worker`, `graceful_timout`): then a warning names the "
        "setting meant.",
        "",
        "| gunicorn setting | here |",
        "|---|---|",
        *(f"| `{name}` | {_here(name)} |" for name in settings),
        "",
        f"{len(hooks)} server hooks: {HOOK_HANDLING}.",
        "",
        "| gunicorn hook | gunicorn calls it in |",
        "|---|---|",
        *(f"| `{name}` | {GUNICORN_NAMES[name].note} |" for name in hooks),
    ]
    return "\n".join(lines) + "\n"


#: Table name -> what makes it.
TABLES: dict[str, Callable[[], str]] = {
    "options": table.readme_table,
    "gunicorn": gunicorn_tables,
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
