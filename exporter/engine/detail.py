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
        # The last poll's readings: netns → source → reading.
        self._rows: dict[str, dict[str, object]] = {}
        # source → counter → increments of quiet namespaces (DetailView.folds, by source).
        self._folds: dict[str, dict[str, int]] = {}
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
            row = by_netns.get(result.netns)
            if row is None:
                continue
            if result.ok:
                row[result.source] = result.data
            else:
                failed.setdefault(result.netns, f"source {result.source} failing")
        for label, reason in failed.items():
            self._mark(label, reason, now)
        last = self._rows
        for source in self._sources:
            if source.notable is None:
                continue
            name = source.name
            readings = {n: r[name] for n, r in by_netns.items() if name in r}
            peers = source.peers(list(readings.values())) if source.peers is not None else None
            for label, data in readings.items():
                before = last.get(label)
                previous = before.get(name) if before is not None else None
                reason = source.notable(Notable(data, previous, by_netns[label], peers))
                if reason:
                    self._mark(label, reason, now)
        until = self._until
        shown = frozenset(label for label in labels if until.get(label, 0.0) >= now)
        for label in [k for k in until if k not in by_netns]:
            del until[label]
            self._reasons.pop(label, None)
        entering = shown - self._shown
        previous_values = (
            {
                (source, label): data
                for label, row in last.items()
                if label in entering
                for source, data in row.items()
            }
            if entering
            else {}
        )
        if not scraped:
            for label, held in self._pending.items():
                if label in shown:
                    entering |= {label}
                    previous_values.update(held)
        self._pending = {}
        for key, data in previous_values.items():
            self._pending.setdefault(key[1], {})[key] = data
        self._fold(by_netns, shown)
        self._rows = by_netns
        self._shown = shown
        return DetailView(
            full=False,
            detailed=shown,
            entering=entering,
            previous=previous_values,
            folds={
                (source, name): grown
                for source, counters in self._folds.items()
                for name, grown in counters.items()
            },
            reasons={label: self._reasons[label] for label in shown if label in self._reasons},
        )

    def _mark(self, label: str, reason: str, now: float) -> None:
        self._until[label] = now + self.hold
        self._reasons[label] = reason

    def _fold(self, by_netns: Mapping[str, Mapping[str, object]], shown: frozenset[str]) -> None:
        """Add each quiet namespace's counter increments since the previous poll."""
        last = self._rows
        for source in self._sources:
            counters_of = source.counters
            if counters_of is None:
                continue
            name = source.name
            folds = self._folds.setdefault(name, {})
            for label, row in by_netns.items():
                if name not in row:
                    continue
                counters = counters_of(row[name])
                if not folds.keys() >= counters.keys():
                    for counter in counters:
                        folds.setdefault(counter, 0)
                if label in shown:
                    continue
                before_row = last.get(label)
                before = before_row.get(name) if before_row is not None else None
                if before is None:
                    continue  # first seen: its past is not ours to count
                earlier = counters_of(before)
                if counters == earlier:
                    continue  # nothing moved (the quiet namespaces' usual poll)
                for counter, value in counters.items():
                    grown = value - earlier.get(counter, value)
                    if grown > 0:  # a counter never goes down; a reset adds nothing
                        folds[counter] += grown
