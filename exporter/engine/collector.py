"""A custom prometheus_client collector that renders the latest Snapshot.

There are no global Gauge objects: every render builds its metric families from the
snapshot it is handed, so a series whose socket bucket emptied, or whose namespace went
away, simply is not rendered. The daemon renders once per poll (exposition.py), so a
scrape costs the same however many namespaces the node has.
"""

from __future__ import annotations

import platform
import threading
from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.config import Config
from exporter.engine.registry import FEEDS, SOURCES
from exporter.engine.snapshot import HOST, Snapshot
from exporter.sources.declare import Scope

# Outcomes of the engine's own, after those the sources declare.
ENGINE_OUTCOMES = (
    ("read", "read (no enabled source said more)"),
    ("deferred", "deferred (figures kept from an earlier poll)"),
    ("failed", "failed (could not be opened)"),
)
OUTCOMES = (*(o for s in SOURCES for o in s.outcomes), *ENGINE_OUTCOMES)


class SnapshotCollector(Collector):
    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()

    def update(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._snapshot = snapshot

    @property
    def snapshot(self) -> Snapshot | None:
        with self._lock:
            return self._snapshot

    def describe(self) -> list[Metric]:
        return []  # names vary with the snapshot; do not let register() call collect()

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        build = GaugeMetricFamily(
            "tcptw_build_info",
            "Build information of the timewait-exporter; always 1",
            labels=["version", "python_version"],
        )
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        if snapshot is None:
            # No poll has completed (the first one may hang): the staleness signal is
            # there from the start, at 0, so TimewaitExporterStale fires for it too.
            yield _interval(self.config)
            yield GaugeMetricFamily(LAST_POLL_NAME, LAST_POLL_HELP, value=0.0)
            return
        yield from render(snapshot, self.config)


def render(snapshot: Snapshot, config: Config) -> Iterator[Metric]:
    yield from _self_metrics(snapshot)
    yield _interval(config)
    yield from _namespaces(snapshot)
    feeds = {result.feed: result.data for result in snapshot.feeds}
    for feed in FEEDS:
        if feed.name in feeds:
            yield from feed.render(feeds[feed.name], config, snapshot.detail)
    for scope in (Scope.NETNS, Scope.HOST):
        for source in SOURCES:
            if source.scope is scope:
                rows = [
                    (r.netns, r.data)
                    for r in snapshot.results
                    if r.source == source.name
                    and (r.netns == HOST) == (scope is Scope.HOST)
                    and r.ok
                ]
                if rows:
                    yield from source.render(rows, config, snapshot.detail)


LAST_POLL_NAME = "tcptw_last_poll_timestamp_seconds"
LAST_POLL_HELP = (
    "Unix time at which the last complete poll started, 0 before the first completes; a "
    "value that stops moving means polls hang or fail (the staleness signal: compare with "
    "tcptw_poll_interval_seconds)"
)


def _interval(config: Config) -> Metric:
    return GaugeMetricFamily(
        "tcptw_poll_interval_seconds",
        "--poll.interval: seconds between polls. The exporter is stale (/readyz fails) once "
        "time() - tcptw_last_poll_timestamp_seconds exceeds 3 of them",
        value=config.poll_interval,
    )


def _self_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    success = GaugeMetricFamily(
        "tcptw_source_success",
        "1 when the source was read successfully in the namespace's last poll, 0 when it "
        'failed; netns="" for host-wide sources',
        labels=["netns", "source"],
    )
    duration = GaugeMetricFamily(
        "tcptw_source_duration_seconds",
        "Time a host-wide source took in the last poll (per namespace, all sources "
        "together: tcptw_netns_poll_duration_seconds)",
        labels=["netns", "source"],
    )
    for result in snapshot.results:
        if result.netns == HOST or snapshot.detail.shows(result.netns):
            success.add_metric([result.netns, result.source], 1 if result.ok else 0)
        if result.netns == HOST:
            duration.add_metric([result.netns, result.source], result.duration_seconds)
    yield success
    yield duration
    yield GaugeMetricFamily(
        "tcptw_poll_duration_seconds",
        "Wall time of the last complete poll of all namespaces and sources",
        value=snapshot.duration_seconds,
    )
    yield GaugeMetricFamily(LAST_POLL_NAME, LAST_POLL_HELP, value=snapshot.started_at)
    yield CounterMetricFamily(
        "tcptw_poll_overruns",
        "Polls that outlasted the poll interval (the next poll was delayed, never overlapped)",
        value=snapshot.poll_overruns,
    )


def _namespaces(snapshot: Snapshot) -> Iterator[Metric]:
    if snapshot.missing:
        missing = GaugeMetricFamily(
            "tcptw_netns_missing",
            "1 for each namespace --netns names that does not exist: it is not polled",
            labels=["netns"],
        )
        for label in snapshot.missing:
            missing.add_metric([label], 1)
        yield missing
    if snapshot.discovery_limited:
        limited = GaugeMetricFamily(
            "tcptw_netns_discovery_limited",
            "1 while --netns=all cannot see or enter other namespaces, for that reason: "
            "no_cap_sys_ptrace (other processes' namespaces are not found), "
            "no_cap_sys_admin (found but cannot be entered), ns_link_denied (refused "
            "despite CAP_SYS_PTRACE, e.g. AppArmor), proc_unreadable (--path.procfs); 0 "
            "otherwise; absent under --netns=self",
            labels=["reason"],
        )
        for reason, holds in snapshot.discovery_limited:
            limited.add_metric([reason], 1 if holds else 0)
        yield limited
    if not snapshot.namespaces:
        return
    info = GaugeMetricFamily(
        "tcptw_netns_info",
        "One series per polled network namespace, always 1: its pod where it belongs to one "
        "(names from kubelet's pod log directories, UID from the cgroup path), else empty",
        labels=["netns", "k8s_namespace_name", "k8s_pod_name", "k8s_pod_uid"],
    )
    age = GaugeMetricFamily(
        "tcptw_netns_poll_age_seconds",
        "How much older than the last poll the namespace's figures are: 0 when read by it, "
        "more when the poll ran out of its interval and kept the last figures",
        labels=["netns"],
    )
    took = GaugeMetricFamily(
        "tcptw_netns_poll_duration_seconds",
        "Time all sources of the namespace took when it was last read",
        labels=["netns"],
    )
    outcomes: Counter[str] = Counter()
    detail = snapshot.detail
    for ns in snapshot.namespaces:
        info.add_metric([ns.label, ns.k8s_namespace, ns.k8s_pod_name, ns.k8s_pod_uid], 1)
        outcomes[ns.outcome] += 1
        if ns.read_at is not None:
            behind = max(0.0, snapshot.started_at - ns.read_at)
            if behind > 0 or detail.shows(ns.label):
                age.add_metric([ns.label], behind)
            if detail.shows(ns.label):
                took.add_metric([ns.label], ns.duration_seconds)
    yield info
    yield age
    yield took
    if not detail.full:
        yield GaugeMetricFamily(
            "tcptw_netns_detailed",
            "Namespaces shown in full in the last poll (--metrics.detail=compact: those "
            "notable within --metrics.detail-hold); the others show only what alerts read",
            value=len(detail.detailed),
        )
    count = GaugeMetricFamily(
        "tcptw_poll_namespaces",
        "Namespaces in the last poll by outcome: " + ", ".join(text for _, text in OUTCOMES),
        labels=["outcome"],
    )
    for outcome, _ in OUTCOMES:
        count.add_metric([outcome], outcomes[outcome])
    yield count
