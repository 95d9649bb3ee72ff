"""Two polls `--window` apart on the poll engine of `serve` and `dump` (exporter.engine.poller),
and the report built from them: one Report object, which both renderers print, so text
and JSON always show the same numbers."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from exporter.config import Config
from exporter.engine.poller import Poller
from exporter.engine.registry import FEEDS
from exporter.engine.snapshot import Snapshot
from exporter.events import feed
from exporter.events.table import EventTable, FailureTotals, OutboundTotals
from exporter.report import holders
from exporter.report.findings import THRESHOLDS, all_findings
from exporter.report.model import (
    EVENTS,
    NO_EVENTS,
    RATE_COUNTERS,
    TIME_WAIT_SECONDS,
    TIMEWAIT,
    Bucket,
    Closes,
    Direction,
    Events,
    Failures,
    Finding,
    LocalPort,
    NamespaceView,
    buckets,
    direction,
    local_ports,
    slab_caches,
    states,
    views,
)

MILLION = 1_000_000
INSPECTED = 5  # buckets per namespace whose sockets and holders are read
REPORT_VERSION = 1


def observe(config: Config, window: float) -> tuple[Snapshot, Snapshot, Events]:
    """Two polls of every selected namespace, the second `window` seconds after the
    first one started (the counters' deltas over that time become rates), and the
    connections closed per outbound bucket in between, counted from the socket-destroy
    events (unless --no-events): the first poll opens each namespace's listener, which
    counts from then on, and the second one reads the totals."""
    poller = Poller(config, feeds=FEEDS)
    session = poller.session(feed.FEED)
    table = session.table if isinstance(session, feed.EventsSession) else None
    try:
        first = poller.poll_once()
        opened = table.outbound_totals() if table is not None else {}
        failed = table.failure_totals() if table is not None else {}
        pause = first.started_at + window - time.time()
        if pause > 0:
            time.sleep(pause)
        second = poller.poll_once()
        events = counted(config, table, opened, failed)
    finally:
        poller.close()
    inspections = holders.inspect(config, inspected(first, second))
    return first, second, dataclasses.replace(events, inspections=inspections)


def inspected(first: Snapshot, second: Snapshot) -> dict[str, holders.Target]:
    """Per namespace, its outbound buckets whose used/capacity reaches the port warning
    (Thresholds.port_warning), worst first, at most INSPECTED of them."""
    wanted: dict[str, holders.Target] = {}
    for view in views(first, second):
        policy = view.policy
        hot = [b for b in buckets(view) if b.ratio >= THRESHOLDS.port_warning][:INSPECTED]
        if hot and policy is not None:
            keys = tuple((b.local_addr, b.remote_addr, b.remote_port) for b in hot)
            wanted[view.label] = holders.Target(policy.port_range, keys)
    return wanted


def counted(
    config: Config,
    table: EventTable | None,
    opened: dict[str, OutboundTotals],
    failed: dict[str, FailureTotals] | None = None,
) -> Events:
    """The closes and connect() failures of each namespace whose listener counted since
    the first poll; the others, and why their rates are estimated from TIME-WAIT and
    their failures unknown."""
    if table is None:
        off = "--no-events" if not feed.ENABLED.value(config) else "the sockdiag collector is off"
        return Events(reason=off)
    closes: dict[str, Closes] = {}
    failures: dict[str, Failures] = {}
    unavailable = table.unavailable()
    after = table.failure_totals()
    for label, totals in table.outbound_totals().items():
        before = opened.get(label)
        if before is None or before.listener != totals.listener:
            unavailable[label] = "events listener opened after the first poll"
            continue
        closes[label] = Closes(totals.closed, complete=totals.uncounted == 0)
        failures[label] = failures_between((failed or {}).get(label), after.get(label))
    return Events(
        closes,
        unavailable,
        reason="no events listener (no successful socket dump)",
        failures=failures,
    )


def failures_between(before: FailureTotals | None, after: FailureTotals | None) -> Failures:
    """The failures per destination counted between two readings of one listener. Every
    failure is in a destination's total or in `uncounted` (which takes the totals of
    destinations forgotten after 10 idle minutes), so the sum of both only grows: the
    window's total is exact, and what no destination's total explains is `uncounted`."""
    if after is None:
        return Failures({})
    if before is not None and before.listener != after.listener:
        before = None
    start = before.failed if before is not None else {}
    failed = {}
    for remote, total in after.failed.items():
        n = total - start.get(remote, 0)
        if n > 0:
            failed[remote] = n
    grand = sum(after.failed.values()) + after.uncounted
    if before is not None:
        grand -= sum(before.failed.values()) + before.uncounted
    uncounted = max(0, grand - sum(failed.values()))
    return Failures(dict(sorted(failed.items(), key=lambda x: (-x[1], x[0]))), uncounted)


@dataclass(frozen=True, slots=True)
class Slab:
    cache: str
    objects: int
    active_objects: int
    object_size: int
    memory_bytes: int
    merged: bool
    million_bytes: int  # what a million objects of this cache would take


@dataclass(frozen=True, slots=True)
class PortRange:
    min: int
    max: int
    reserved: int
    available: int  # the range minus reserved ports
    capacity: int | None  # per outbound bucket: also minus ports held by listeners
    limit_per_second: float  # capacity (else available) / 60


@dataclass(frozen=True, slots=True)
class NamespaceReport:
    netns: str
    errors: tuple[str, ...]
    sysctls: dict[str, float]
    port_range: PortRange | None
    states: dict[str, int]
    direction: Direction | None
    timewait: int | None  # sockstat tw
    tcp_max_tw_buckets: int | None
    max_ratio: float | None
    rates: dict[str, float]  # counter → per second over the window
    deltas: dict[str, int]
    outbound: tuple[Bucket, ...]
    inbound: tuple[LocalPort, ...]
    rate_method: str  # how its buckets' rate_now was found: events, else timewait
    rate_method_reason: str  # why timewait ("" with events)
    # sockstat tw counts every timewait minisocket: TIME-WAIT ones, and orphaned FIN-WAIT-2
    # ones (closed by this side, waiting for the peer's FIN; tcp_time_wait(sk,
    # TCP_FIN_WAIT2, ...) in net/ipv4/tcp.c); sock_diag tells them apart by state. This is
    # sockstat tw minus sock_diag's time_wait (the two are read moments apart: never < 0).
    orphan_fin_wait2: int | None
    connect_failures: Failures | None  # during the window; None: not counted
    connect_failures_reason: str  # why not counted ("" when counted)
    inspections: tuple[holders.Inspection, ...]  # buckets at port_warning+: sockets, holders

    @property
    def has_sockets(self) -> bool:
        return bool(self.states) or bool(self.timewait)


@dataclass(frozen=True, slots=True)
class Report:
    version: int
    generated_at: float
    window_seconds: float
    poll_seconds: float  # the two polls' wall time together
    timewait_seconds: int
    fail_on: float | None
    exit_code: int
    # Why exit_code is 3: "max_ratio" (a bucket reached fail_on), "connect_failures" (a
    # connect() failed with EADDRNOTAVAIL in the window); empty otherwise.
    fail_on_reasons: tuple[str, ...]
    namespaces: tuple[NamespaceReport, ...]
    slab: tuple[Slab, ...]
    findings: tuple[Finding, ...]


def _port_range(view: NamespaceView) -> PortRange | None:
    if view.sysctls is None or view.sysctls.port_range is None:
        return None
    low, high = view.sysctls.port_range
    policy = view.policy
    ports = view.stats.ports if view.stats is not None else None
    available = ports.ephemeral_available if ports is not None else None
    if available is None and policy is not None:
        from exporter.sources.sockdiag.capacity import ephemeral_available

        available = ephemeral_available(policy)
    available = available if available is not None else high - low + 1
    capacity = ports.capacity if ports is not None else None
    return PortRange(
        low,
        high,
        view.sysctls.reserved_count() or 0,
        available,
        capacity,
        (capacity if capacity is not None else available) / TIME_WAIT_SECONDS,
    )


def namespace_report(view: NamespaceView, events: Events = NO_EVENTS) -> NamespaceReport:
    limit = view.sysctl("tcp_max_tw_buckets")
    rates = {c: r for c in RATE_COUNTERS if (r := view.rate(c)) is not None}
    deltas = {c: d for c in RATE_COUNTERS if (d := view.delta(c)) is not None}
    ports = view.stats.ports if view.stats is not None else None
    tw = view.sockstat.tw if view.sockstat is not None else None
    counts = states(view)
    orphans = None
    if tw is not None and view.stats is not None:
        orphans = max(0, tw - counts.get("time_wait", 0))
    return NamespaceReport(
        netns=view.label,
        errors=view.errors,
        sysctls=dict(view.sysctls.values) if view.sysctls is not None else {},
        port_range=_port_range(view),
        states=counts,
        direction=direction(view),
        timewait=tw,
        tcp_max_tw_buckets=int(limit) if limit is not None else None,
        max_ratio=ports.max_ratio if ports is not None else None,
        rates=rates,
        deltas=deltas,
        outbound=tuple(buckets(view)),
        inbound=tuple(local_ports(view)),
        rate_method=TIMEWAIT if view.closes is None else EVENTS,
        rate_method_reason="" if view.closes is not None else events.why_not(view.label),
        orphan_fin_wait2=orphans,
        connect_failures=view.failures,
        connect_failures_reason=view.failures_reason,
        inspections=view.inspections,
    )


def fail_on_reasons(
    namespaces: tuple[NamespaceReport, ...], fail_on: float | None
) -> tuple[str, ...]:
    """With --fail-on: "max_ratio" when any namespace's highest bucket ratio reaches it,
    "connect_failures" when any connect() failed with EADDRNOTAVAIL during the window
    (whatever the ratio: the forecast can miss what happened)."""
    if fail_on is None:
        return ()
    reasons = []
    if any(ns.max_ratio is not None and ns.max_ratio >= fail_on for ns in namespaces):
        reasons.append("max_ratio")
    if any(ns.connect_failures is not None and ns.connect_failures.total for ns in namespaces):
        reasons.append("connect_failures")
    return tuple(reasons)


def exit_code(namespaces: tuple[NamespaceReport, ...], fail_on: float | None) -> int:
    """3 when --fail-on is given and any namespace's highest bucket ratio reaches it or
    any connect() failed with EADDRNOTAVAIL during the window, else 0."""
    return 3 if fail_on_reasons(namespaces, fail_on) else 0


def build(
    first: Snapshot, second: Snapshot, fail_on: float | None = None, events: Events = NO_EVENTS
) -> Report:
    """events: the closes counted during the window (observe); without them every rate
    now is estimated from TIME-WAIT."""
    all_views = views(first, second, events)
    namespaces = tuple(namespace_report(v, events) for v in all_views)
    slab = tuple(
        Slab(
            c.name,
            c.objects,
            c.active_objects,
            c.object_size,
            c.memory_bytes,
            c.merged,
            c.object_size * MILLION,
        )
        for c in slab_caches(second)
    )
    return Report(
        version=REPORT_VERSION,
        generated_at=second.started_at,
        window_seconds=round(max(0.0, second.started_at - first.started_at), 3),
        poll_seconds=round(first.duration_seconds + second.duration_seconds, 3),
        timewait_seconds=TIME_WAIT_SECONDS,
        fail_on=fail_on,
        exit_code=exit_code(namespaces, fail_on),
        fail_on_reasons=fail_on_reasons(namespaces, fail_on),
        namespaces=namespaces,
        slab=slab,
        findings=tuple(all_findings(all_views, second)),
    )
