"""Kernel data sources: pure parse/decode functions plus thin readers, one source per module.

Every reader takes a `NetnsView` (which namespace, and where its /proc lives) and raises
`SourceError` with a message fit for a log line when its input is missing or malformed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class SourceError(Exception):
    """A source could not produce data; the message says why (shown in logs)."""


@dataclass(frozen=True, slots=True)
class NetnsView:
    """One network namespace as the sources see it.

    `label` is the `netns` label value; `proc_net` is the /proc/net directory of the
    namespace and `proc_sys_net` its /proc/sys/net (both resolved by the reading thread,
    which has entered the namespace when it is not the exporter's own).
    """

    label: str
    proc_net: Path
    proc_sys_net: Path


def read_text(path: Path) -> str:
    """Read a /proc or /sys file; missing or unreadable files become SourceError."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path} is not text (byte {exc.start} is {raw[exc.start]:#x})") from exc
