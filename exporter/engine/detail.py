"""Which namespaces a poll shows in full: the compact detail rule (--metrics.detail).

A namespace is shown in full while it is *notable*, and for --metrics.detail-hold after
(so that its series do not flap in and out with each poll):
- a source failed in it;
- a source's own rule says so (`Source.notable`): a bucket or the ephemeral range at
  Thresholds.detail_ratio of capacity (sockdiag), TIME-WAIT at detail_ratio of
  tcp_max_tw_buckets (sockstat), a sysctl unlike most namespaces' or tcp_tw_recycle on
  (sysctl), a problem TcpExt counter that moved since the previous poll (netstat).

Every other namespace is quiet: it shows only the series the alerts read (each source
decides which), and the rest of its figures are summed into rows labelled netns="".
Counters are summed as increments: each poll adds to the netns="" row what a quiet
namespace's counter grew by since the previous poll, so the row only grows and keeps
counting after the namespace is gone. A namespace that becomes notable has its counters
first exposed at their previous poll's values, then at the kernel's: increase() over its
new series counts the move that made it notable, and nothing is counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from exporter.config import Config
from exporter.engine.snapshot import SourceResult
from exporter.sources.declare import DetailView, Notable, Scope, Source

FULL_DETAIL = "full"
COMPACT_DETAIL = "compact"


class DetailTracker:
    def __init__(self, config: Config, sources: Sequence[Source[Any]]) -> None:
        self.full = config.detail == FULL_DETAIL
        self.hold = config.detail_hold
        self._sources = [s for s in sources if s.scope is Scope.NETNS]
        self._until: dict[str, float] = {}  # netns → shown in full until (monotonic)
        self._reasons: dict[str, str] = {}
        self._shown: frozenset[str] = frozenset()
        self._last: dict[tuple[str, str], object] = {}  # (source, netns) → last reading
        self._folds: dict[tuple[str, str], int] = {}
        # Namespaces whose counters were last exposed at their previous values, with
        # those values: kept so until a scraper has seen them.
        self._pending: dict[str, dict[tuple[str, str], object]] = {}

    def view(
        self, results: Sequence[SourceResult], labels: Sequence[str], scraped: bool = True
    ) -> DetailView:
        """The detail of this poll, from every namespace's results (once per poll).
        scraped: whether the previous poll's exposition was served; if not, a namespace
        that became notable then shows its previous values once more (a scrape interval
        longer than the poll's must still see them, or increase() misses the move)."""
        if self.full:
            return DetailView(full=True)
        now = time.monotonic()
        by_netns: dict[str, dict[str, object]] = {label: {} for label in labels}
        failed: dict[str, str] = {}
        for result in results:
            if result.netns not in by_netns:
                continue
            if result.ok:
                by_netns[result.netns][result.source] = result.data
            else:
                failed.setdefault(result.netns, f"source {result.source} failing")
        for label, reason in failed.items():
            self._mark(label, reason, now)
        for source in self._sources:
            if source.notable is None:
                continue
            readings = {n: r[source.name] for n, r in by_netns.items() if source.name in r}
            peers = source.peers(list(readings.values())) if source.peers is not None else None
            for label, data in readings.items():
                previous = self._last.get((source.name, label))
                reason = source.notable(Notable(data, previous, by_netns[label], peers))
                if reason:
                    self._mark(label, reason, now)
        shown = frozenset(label for label in labels if self._until.get(label, 0.0) >= now)
        for label in [k for k in self._until if k not in by_netns]:
            del self._until[label]
            self._reasons.pop(label, None)
        entering = shown - self._shown
        previous = {
            (source, label): data
            for (source, label), data in self._last.items()
            if label in entering
        }
        if not scraped:
            for label, held in self._pending.items():
                if label in shown:
                    entering |= {label}
                    previous.update(held)
        self._pending = {}
        for key, data in previous.items():
            self._pending.setdefault(key[1], {})[key] = data
        self._fold(by_netns, shown)
        self._last = {
            (source, label): data for label, row in by_netns.items() for source, data in row.items()
        }
        self._shown = shown
        return DetailView(
            full=False,
            detailed=shown,
            entering=entering,
            previous=previous,
            folds=dict(self._folds),
            reasons={label: self._reasons[label] for label in shown if label in self._reasons},
        )

    def _mark(self, label: str, reason: str, now: float) -> None:
        self._until[label] = now + self.hold
        self._reasons[label] = reason

    def _fold(self, by_netns: Mapping[str, Mapping[str, object]], shown: frozenset[str]) -> None:
        """Add each quiet namespace's counter increments since the previous poll."""
        for source in self._sources:
            if source.counters is None:
                continue
            for label, row in by_netns.items():
                if source.name not in row:
                    continue
                counters = source.counters(row[source.name])
                for name in counters:
                    self._folds.setdefault((source.name, name), 0)
                if label in shown:
                    continue
                before = self._last.get((source.name, label))
                if before is None:
                    continue  # first seen: its past is not ours to count
                earlier = source.counters(before)
                for name, value in counters.items():
                    grown = value - earlier.get(name, value)
                    if grown > 0:  # a counter never goes down; a reset adds nothing
                        self._folds[(source.name, name)] += grown
