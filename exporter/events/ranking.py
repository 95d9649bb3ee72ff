"""Counters under bounded cardinality: per-bucket totals, and the node-wide top K.

Every bucket's total is kept, idle ones are forgotten after IDLE_EVICT seconds, at most
MAX_BUCKETS per namespace and direction (more are counted in `other` only). The node-wide
top K by recent rate (decayed with RATE_TAU) is exported; a bucket's series counts only
the increments made while it is in the top K, and each namespace's `other` series the
increments of its buckets while outside it; both only grow, so sum(increase()) over all
series is the number of connections closed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from exporter.sources.declare import FOLDED, FULL, DetailView

IDLE_EVICT = 600.0  # seconds without a close before a bucket is forgotten
MAX_BUCKETS = 10_000  # per namespace and direction
RATE_TAU = 60.0  # seconds: the decay time of the rate that ranks the top K


class Bucket:
    __slots__ = (
        "base",
        "exposed",
        "inside",
        "ranked_total",
        "score",
        "seen",
        "shown",
        "stamp",
        "total",
    )

    def __init__(self, now: float, inside: bool) -> None:
        self.total = 0  # every close counted, top K or not (`report` reads it)
        self.ranked_total = 0  # `total` at the last ranking
        self.shown = 0  # the exported counter: increments made while in the top K
        self.inside = inside
        # Entering the top K, a series is first exposed at `base` (its value when it
        # entered, 0 the first time): increase() ignores a series' first sample, so the
        # increments since entering show from the next exposition on.
        self.base = 0
        self.exposed: int | None = None  # the value last exposed since entering
        self.score = 0.0  # closes decayed with RATE_TAU, as of `stamp`
        self.stamp = now
        self.seen = now

    def rate_score(self, now: float) -> float:
        return self.score * math.exp(-(now - self.stamp) / RATE_TAU)


@dataclass
class Direction:
    """One namespace's buckets of one direction."""

    outbound: bool
    buckets: dict[bytes, Bucket] = field(default_factory=dict)
    other: int = 0  # increments of buckets while outside the top K (and untracked ones)
    uncounted: int = 0  # closes in no bucket's total: beyond MAX_BUCKETS, or forgotten idle
    # Compact detail: the part of `other` already folded or exposed, and where the
    # namespace's own other series started (it shows other - start).
    accounted: int = 0
    start: int = 0
    shown: bool = True
    other_seen: bool = False  # sparse others: exposed once non-zero (first at 0)


@dataclass(frozen=True, slots=True)
class Ranked:
    """One exported row: a top-K bucket's key, or None for the namespace's `other`."""

    label: str
    key: bytes | None
    value: int


class TopK:
    """The node-wide top K of one direction (the caller holds the table's lock)."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.inside = 0  # buckets of this direction in the top K
        self.folded = 0  # the quiet namespaces' other increments (compact detail)

    def add(self, direction: Direction, keys: list[bytes], counts: list[int], now: float) -> None:
        """Count closes per bucket key."""
        buckets = direction.buckets
        for raw, count in zip(keys, counts, strict=True):
            bucket = buckets.get(raw)
            if bucket is None:
                if len(buckets) >= MAX_BUCKETS:
                    direction.other += count
                    direction.uncounted += count
                    continue
                # A free place in the node's top K is taken at once, so a burst toward a
                # new destination is counted in its own series (not in a quiet namespace:
                # compact detail keeps the top K for namespaces shown in full).
                inside = direction.shown and self.inside < self.top
                bucket = buckets[raw] = Bucket(now, inside)
                self.inside += inside
            bucket.total += count
            if bucket.inside:
                bucket.shown += count
            else:
                direction.other += count
            bucket.score = bucket.rate_score(now) + count
            bucket.stamp = bucket.seen = now

    def evict_idle(self, direction: Direction, now: float) -> None:
        idle = [k for k, b in direction.buckets.items() if now - b.seen > IDLE_EVICT]
        for key in idle:
            gone = direction.buckets.pop(key)
            direction.uncounted += gone.total
            self.leave(direction, gone)

    def leave(self, direction: Direction, bucket: Bucket) -> None:
        """A bucket leaves the top K (or memory): its series ends at its last exposed
        value; increments never exposed move to `other`."""
        if not bucket.inside:
            return
        last = bucket.base if bucket.exposed is None else bucket.exposed
        direction.other += bucket.shown - last
        bucket.shown = last
        bucket.inside = False
        bucket.exposed = None
        self.inside -= 1

    def forget(self, direction: Direction) -> None:
        for bucket in direction.buckets.values():
            self.leave(direction, bucket)
        if not direction.shown:  # what a quiet namespace counted since the last poll
            self.folded += direction.other - direction.accounted
            direction.accounted = direction.other

    def rank(
        self,
        namespaces: Sequence[tuple[str, Direction]],
        now: float,
        detail: DetailView = FULL,
        sparse_other: bool = False,
    ) -> list[Ranked]:
        """Choose the top K by recent rate and expose the counters, atomically with the
        counting: a bucket entering the top K resumes its series at the value it had when
        it left (0 the first time), so every increment shows in exactly one series. Then
        one `other` row per namespace shown in full, and (compact detail) one for the
        quiet ones, labelled FOLDED. sparse_other: a namespace's other row only once it
        is non-zero, first at 0 (so that increase() counts what made it appear)."""
        ranked: list[tuple[float, bool, str, bytes, Bucket, Direction]] = []
        for label, direction in namespaces:
            if not detail.shows(label):  # compact detail: a quiet namespace has no top K
                for bucket in direction.buckets.values():
                    self.leave(direction, bucket)
                continue
            for raw, bucket in direction.buckets.items():
                score = bucket.rate_score(now)
                ranked.append((score, bucket.inside, label, raw, bucket, direction))
        ranked.sort(key=_order)
        for *_, bucket, direction in ranked[self.top :]:
            self.leave(direction, bucket)
        rows: list[Ranked] = []
        for _, _, label, raw, bucket, direction in ranked[: self.top]:
            if not bucket.inside:
                bucket.inside = True
                bucket.base = bucket.shown
                self.inside += 1
                if not direction.shown:
                    # Its namespace was quiet until now (compact detail): the closes that
                    # made it notable went to `other`; they belong to this series, which
                    # is first exposed at its base, so increase() counts them.
                    grown = bucket.total - bucket.ranked_total
                    direction.other -= grown
                    bucket.shown += grown
            value = bucket.base if bucket.exposed is None else bucket.shown
            bucket.exposed = value
            rows.append(Ranked(label, raw, value))
        for label, direction in namespaces:
            shown = detail.shows(label)
            if not shown or not direction.shown:  # quiet, or shown in full from now on
                self.folded += direction.other - direction.accounted
                direction.start = direction.other
            direction.accounted = direction.other
            direction.shown = shown
            if not shown:
                continue
            if sparse_other and not direction.other_seen:
                if direction.other > direction.start:
                    rows.append(Ranked(label, None, 0))
                    direction.other_seen = True
                continue
            rows.append(Ranked(label, None, direction.other - direction.start))
        if not detail.full:
            rows.append(Ranked(FOLDED, None, self.folded))
        for _, direction in namespaces:
            for bucket in direction.buckets.values():
                bucket.ranked_total = bucket.total
        return rows


def _order(
    row: tuple[float, bool, str, bytes, Bucket, Direction],
) -> tuple[float, bool, str, bytes]:
    """Highest rate first; among equals those already inside, then by label and key."""
    return -row[0], not row[1], row[2], row[3]
