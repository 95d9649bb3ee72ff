"""One immutable snapshot per poll: what every source returned, or why it failed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class SourceResult:
    source: str
    netns: str  # "" for host-wide sources (slab)
    ok: bool
    duration_seconds: float
    data: Any = None  # the source's immutable result when ok
    error: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    results: tuple[SourceResult, ...]
    started_at: float  # unix time the poll started
    duration_seconds: float
    poll_overruns: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def successful(self, source: str) -> list[SourceResult]:
        return [r for r in self.results if r.source == source and r.ok]
