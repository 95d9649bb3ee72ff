"""The benchmark report's sections: each benchmark owns the text between its markers."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, begin: str, end: str, section: str) -> None:
    """Replace the text from `begin` to `end` (both markers included in `section`), or
    append `section` when the file has no such markers yet."""
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + section + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(new)
