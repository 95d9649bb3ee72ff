"""Kernel data sources: pure parse/decode functions plus thin readers, one source per module.

A per-namespace reader takes `NetnsFiles`: descriptors opened inside that namespace
(exporter/netns/context.py), so no reader can pick up the ambient namespace by accident. A
host-wide reader takes paths. Readers raise `SourceError` with a message fit for a log line
when their input is missing or malformed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class SourceError(Exception):
    """A source could not produce data; the message says why (shown in logs)."""


class NetnsFiles(Protocol):
    """The /proc files of one namespace, opened inside it."""

    def read_net(self, name: str) -> str:
        """/proc/thread-self/net/<name>; SourceError when it is missing or unreadable."""
        ...

    def read_sysctl(self, name: str) -> str | None:
        """/proc/sys/net/ipv4/<name>; None when the kernel has no such sysctl."""
        ...

    def has_sysctls(self) -> bool:
        """Whether /proc/sys/net/ipv4 could be opened at all."""
        ...


def decode_text(raw: bytes, where: object) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{where} is not text (byte {exc.start} is {raw[exc.start]:#x})") from exc


def read_text(path: Path) -> str:
    """Read a /proc or /sys file; missing or unreadable files become SourceError."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return decode_text(raw, path)
