"""A custom prometheus_client collector that renders the latest Snapshot at scrape time.

There are no global Gauge objects: every scrape builds its metric families from the
snapshot it is handed, so a series whose socket bucket emptied simply is not rendered.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.snapshot import Snapshot, SourceResult
from exporter.socket_stats import SocketStats
from exporter.sources import PAGE_SIZE
from exporter.sources.netstat import snake_case
from exporter.sources.slab import SlabCache
from exporter.sources.sysctl import Sysctls

LAST_POLL = " (value from the last poll)"

SOCKSTAT_HELP = {
    "inuse": "TCP sockets in use in the namespace, TIME-WAIT excluded (/proc/net/sockstat inuse)",
    "orphan": "Orphaned TCP sockets, host-wide (/proc/net/sockstat orphan)",
    "tw": "TCP sockets in TIME-WAIT in the namespace (/proc/net/sockstat tw)",
    "alloc": "Allocated TCP sockets, host-wide (/proc/net/sockstat alloc)",
}

# sysctl name → (metric suffix, help)
SYSCTL_METRICS = {
    "tcp_tw_reuse": ("tcp_tw_reuse", "net.ipv4.tcp_tw_reuse: 0 off, 1 on, 2 loopback only"),
    "tcp_tw_reuse_delay": (
        "tcp_tw_reuse_delay_seconds",
        "net.ipv4.tcp_tw_reuse_delay: minimum TIME-WAIT age before reuse",
    ),
    "tcp_tw_recycle": ("tcp_tw_recycle", "net.ipv4.tcp_tw_recycle (kernels before 4.12 only)"),
    "tcp_max_tw_buckets": (
        "tcp_max_tw_buckets",
        "net.ipv4.tcp_max_tw_buckets: TIME-WAIT sockets beyond this are destroyed at once",
    ),
    "tcp_timestamps": ("tcp_timestamps", "net.ipv4.tcp_timestamps (tcp_tw_reuse needs them)"),
    "tcp_fin_timeout": ("tcp_fin_timeout_seconds", "net.ipv4.tcp_fin_timeout: FIN-WAIT-2 lifetime"),
    "tcp_ehash_entries": (
        "tcp_ehash_entries",
        "net.ipv4.tcp_ehash_entries: established hash size; negative when shared with the host",
    ),
}


def netns_gauge(name: str, text: str) -> GaugeMetricFamily:
    """A gauge with only the netns label; HELP says the value is from the last poll."""
    return GaugeMetricFamily(name, text + LAST_POLL, labels=["netns"])


class SnapshotCollector(Collector):
    def __init__(self) -> None:
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
            return
        yield from render(snapshot)


def render(snapshot: Snapshot) -> Iterator[Metric]:
    yield from _self_metrics(snapshot)
    by_source: dict[str, list[SourceResult]] = {}
    for result in snapshot.results:
        if result.ok:
            by_source.setdefault(result.source, []).append(result)
    yield from _sockets(by_source.get("sockdiag", []))
    yield from _ports(by_source.get("sockdiag", []))
    yield from _tcpext(by_source.get("netstat", []))
    yield from _sockstat(by_source.get("sockstat", []))
    yield from _sysctls(by_source.get("sysctl", []))
    yield from _slab(by_source.get("slab", []))


def _self_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    success = GaugeMetricFamily(
        "tcptw_source_success",
        "1 when the source was read successfully in the last poll, 0 when it failed",
        labels=["netns", "source"],
    )
    duration = GaugeMetricFamily(
        "tcptw_source_duration_seconds",
        "Time the source took in the last poll",
        labels=["netns", "source"],
    )
    for result in snapshot.results:
        success.add_metric([result.netns, result.source], 1 if result.ok else 0)
        duration.add_metric([result.netns, result.source], result.duration_seconds)
    yield success
    yield duration
    yield GaugeMetricFamily(
        "tcptw_poll_duration_seconds",
        "Wall time of the last complete poll of all namespaces and sources",
        value=snapshot.duration_seconds,
    )
    yield GaugeMetricFamily(
        "tcptw_last_poll_timestamp_seconds",
        "Unix time at which the last complete poll started",
        value=snapshot.started_at,
    )
    yield CounterMetricFamily(
        "tcptw_poll_overruns",
        "Polls that outlasted the poll interval (the next poll was delayed, never overlapped)",
        value=snapshot.poll_overruns,
    )


def _sockets(results: list[SourceResult]) -> Iterator[Metric]:
    if not results:
        return
    scopes = sorted({r.data.scope for r in results if r.data.scope})
    scope = f"; non-listening sockets only where {' / '.join(scopes)}" if scopes else ""
    family = GaugeMetricFamily(
        "tcptw_sockets",
        "TCP sockets by address family and state, from sock_diag" + scope + LAST_POLL,
        labels=["netns", "family", "state"],
    )
    for result in results:
        stats: SocketStats = result.data
        for (fam, state), count in stats.states.items():
            family.add_metric([result.netns, fam, state], count)
    yield family


OUTBOUND_LABELS = ["netns", "local_addr", "remote_addr", "remote_port"]
INBOUND_LABELS = ["netns", "local_addr", "local_port", "remote_addr"]
FOLDED = " Buckets beyond --buckets.top are summed into one series labelled other."


def _ports(results: list[SourceResult]) -> Iterator[Metric]:
    usages = [(r.netns, r.data.ports) for r in results if r.data.ports is not None]
    if not usages:
        return
    used = GaugeMetricFamily(
        "tcptw_outbound_ports_used",
        "Sockets of an outbound bucket (local addr, remote addr, remote port), any state: "
        "each holds one local ephemeral port" + FOLDED + LAST_POLL,
        labels=OUTBOUND_LABELS,
    )
    capacity = GaugeMetricFamily(
        "tcptw_outbound_ports_capacity",
        "Local ports connect() may use for an outbound bucket: ip_local_port_range minus "
        "reserved ports minus ports held by listeners" + FOLDED + LAST_POLL,
        labels=OUTBOUND_LABELS,
    )
    out_tw = GaugeMetricFamily(
        "tcptw_outbound_timewait_sockets",
        "TIME-WAIT sockets of an outbound bucket" + FOLDED + LAST_POLL,
        labels=OUTBOUND_LABELS,
    )
    inbound = GaugeMetricFamily(
        "tcptw_inbound_sockets",
        "Sockets of an inbound bucket (local addr, local port, remote addr), any state"
        + FOLDED
        + LAST_POLL,
        labels=INBOUND_LABELS,
    )
    in_tw = GaugeMetricFamily(
        "tcptw_inbound_timewait_sockets",
        "TIME-WAIT sockets of an inbound bucket" + FOLDED + LAST_POLL,
        labels=INBOUND_LABELS,
    )
    max_ratio = netns_gauge(
        "tcptw_outbound_port_utilization_max_ratio",
        "Highest used/capacity of any outbound bucket, before folding; TIME-WAIT sockets "
        "that tcp_tw_reuse lets connect() take over are not counted as used",
    )
    in_use = netns_gauge(
        "tcptw_ephemeral_ports_in_use",
        "Distinct local ports inside ip_local_port_range used by any socket",
    )
    available = netns_gauge(
        "tcptw_ephemeral_ports_available",
        "Ports in ip_local_port_range minus ip_local_reserved_ports",
    )
    folded = GaugeMetricFamily(
        "tcptw_buckets_folded",
        "Buckets summed into the other series of a metric (beyond --buckets.top or under "
        "--buckets.min-sockets)" + LAST_POLL,
        labels=["netns", "metric"],
    )
    for netns, usage in usages:
        for row in usage.outbound:
            labels = [netns, row.local_addr, row.remote_addr, row.remote_port]
            used.add_metric(labels, row.sockets)
            capacity.add_metric(labels, row.capacity)
            out_tw.add_metric(labels, row.timewait)
        for irow in usage.inbound:
            labels = [netns, irow.local_addr, irow.local_port, irow.remote_addr]
            inbound.add_metric(labels, irow.sockets)
            in_tw.add_metric(labels, irow.timewait)
        max_ratio.add_metric([netns], usage.max_ratio)
        in_use.add_metric([netns], usage.ephemeral_in_use)
        available.add_metric([netns], usage.ephemeral_available)
        for family in (used, capacity, out_tw):
            folded.add_metric([netns, family.name], usage.outbound_folded)
        for family in (inbound, in_tw):
            folded.add_metric([netns, family.name], usage.inbound_folded)
    yield from (used, capacity, out_tw, inbound, in_tw, max_ratio, in_use, available, folded)


def _tcpext(results: list[SourceResult]) -> Iterator[Metric]:
    families: dict[str, CounterMetricFamily] = {}
    for result in results:
        counters: dict[str, int] = result.data
        for field, value in counters.items():
            metric = families.get(field)
            if metric is None:
                metric = CounterMetricFamily(
                    f"tcptw_tcpext_{snake_case(field)}",
                    f"TcpExt {field} counter from /proc/net/netstat" + LAST_POLL,
                    labels=["netns"],
                )
                families[field] = metric
            metric.add_metric([result.netns], value)
    yield from families.values()


def _sockstat(results: list[SourceResult]) -> Iterator[Metric]:
    if not results:
        return
    gauges = {
        name: netns_gauge(f"tcptw_sockstat_tcp_{name}", text)
        for name, text in SOCKSTAT_HELP.items()
    }
    memory = netns_gauge(
        "tcptw_sockstat_tcp_memory_bytes",
        "TCP buffer memory, host-wide (/proc/net/sockstat mem pages times the page size)",
    )
    for result in results:
        fields: dict[str, int] = result.data
        for name, gauge in gauges.items():
            if name in fields:
                gauge.add_metric([result.netns], fields[name])
        if "mem" in fields:
            memory.add_metric([result.netns], fields["mem"] * PAGE_SIZE)
    yield from gauges.values()
    yield memory


def _sysctls(results: list[SourceResult]) -> Iterator[Metric]:
    if not results:
        return
    port_min = netns_gauge(
        "tcptw_sysctl_ip_local_port_range_min",
        "net.ipv4.ip_local_port_range: first ephemeral port",
    )
    port_max = netns_gauge(
        "tcptw_sysctl_ip_local_port_range_max",
        "net.ipv4.ip_local_port_range: last ephemeral port",
    )
    reserved = netns_gauge(
        "tcptw_sysctl_ip_local_reserved_ports",
        "Number of ports listed in net.ipv4.ip_local_reserved_ports",
    )
    values = {
        name: netns_gauge(f"tcptw_sysctl_{suffix}", text)
        for name, (suffix, text) in SYSCTL_METRICS.items()
    }
    for result in results:
        data: Sysctls = result.data
        if data.port_range is not None:
            port_min.add_metric([result.netns], data.port_range[0])
            port_max.add_metric([result.netns], data.port_range[1])
        count = data.reserved_count()
        if count is not None:
            reserved.add_metric([result.netns], count)
        for name, value in data.values.items():
            values[name].add_metric([result.netns], value)
    yield port_min
    yield port_max
    yield reserved
    yield from (family for family in values.values() if family.samples)


def _slab(results: list[SourceResult]) -> Iterator[Metric]:
    if not results:
        return
    labels = ["cache", "merged", "shared_cache"]
    spec = [
        ("tcptw_slab_objects", "Object slots allocated in the slab cache", "objects"),
        ("tcptw_slab_active_objects", "Object slots in use in the slab cache", "active_objects"),
        ("tcptw_slab_object_size_bytes", "Bytes per object slot, metadata included", "object_size"),
        ("tcptw_slab_memory_bytes", "Memory held by the cache's slabs", "memory_bytes"),
    ]
    note = '; merged="true": SLUB merged the cache, figures are the shared cache\'s' + LAST_POLL
    for name, text, attribute in spec:
        family = GaugeMetricFamily(name, text + note, labels=labels)
        for result in results:
            caches: tuple[SlabCache, ...] = result.data
            for cache in caches:
                merged = "true" if cache.merged else "false"
                family.add_metric(
                    [cache.name, merged, cache.shared_cache], getattr(cache, attribute)
                )
        yield family
