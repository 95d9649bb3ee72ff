"""Exposition of each source's typed result: one render function per source, registered
with it in exporter/engine/registry.py. Built from plain metric families at render time, so a
series whose bucket emptied or whose namespace went away simply is not rendered."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter.config import Config
from exporter.events.table import EventsSnapshot
from exporter.sources import PAGE_SIZE
from exporter.sources.netstat import snake_case
from exporter.sources.slab import SlabCache
from exporter.sources.sockdiag.capacity import OTHER, select_node_top
from exporter.sources.sockdiag.tally import SocketStats
from exporter.sources.sockstat import SockstatCounts
from exporter.sources.sysctl import Sysctls

T = TypeVar("T")
Rows = list[tuple[str, T]]  # (netns label, the source's result in that namespace)

LAST_POLL = " (value from the last poll)"

HOST_SOCKSTAT_HELP = {
    "orphan": "Orphaned TCP sockets of the node (/proc/net/sockstat orphan)",
    "alloc": "Allocated TCP sockets of the node, TIME-WAIT excluded (/proc/net/sockstat alloc)",
}

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
    "tcp_child_ehash_entries": (
        "tcp_child_ehash_entries",
        "net.ipv4.tcp_child_ehash_entries: established hash size of namespaces created from "
        "this one; 0 means they share the host's, so each of their dumps walks the whole table",
    ),
}


def netns_gauge(name: str, text: str) -> GaugeMetricFamily:
    """A gauge with only the netns label; HELP says the value is from the last poll."""
    return GaugeMetricFamily(name, text + LAST_POLL, labels=["netns"])


def render_sockets(rows: Rows[SocketStats], config: Config) -> Iterator[Metric]:
    if not rows:
        return
    scopes = sorted({stats.scope for _, stats in rows if stats.scope})
    scope = f"; non-listening sockets only where {' / '.join(scopes)}" if scopes else ""
    family = GaugeMetricFamily(
        "tcptw_sockets",
        "TCP sockets by address family and state, from sock_diag" + scope + LAST_POLL,
        labels=["netns", "family", "state"],
    )
    for netns, stats in rows:
        for (fam, state), count in stats.states.items():
            family.add_metric([netns, fam, state], count)
    yield family


OUTBOUND_LABELS = ["netns", "local_addr", "remote_addr", "remote_port"]
INBOUND_LABELS = ["netns", "local_addr", "local_port", "remote_addr"]
FOLDED = " Buckets beyond --buckets.top are summed into one series labelled other."


def render_ports(rows: Rows[SocketStats], config: Config) -> Iterator[Metric]:
    usages = [(netns, stats.ports) for netns, stats in rows if stats.ports is not None]
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
    per_bucket = netns_gauge(
        "tcptw_outbound_bucket_capacity",
        "Local ports connect() may use toward any one destination: the capacity of every "
        "outbound bucket of the namespace. Each closed connection holds its port 60 s "
        "(TIME-WAIT), so this / 60 is the sustainable connections/s per destination",
    )
    folded = GaugeMetricFamily(
        "tcptw_buckets_folded",
        "Buckets of the whole node summed into the namespaces' other series, per direction "
        "(beyond the node-wide --buckets.top or under --buckets.min-sockets)" + LAST_POLL,
        labels=["direction"],
    )
    node = select_node_top(usages, config.buckets.top)
    for netns, row in node.outbound:
        labels = [netns, row.local_addr, row.remote_addr, row.remote_port]
        used.add_metric(labels, row.sockets)
        capacity.add_metric(labels, row.capacity)
        out_tw.add_metric(labels, row.timewait)
    for netns, rest in node.outbound_other.items():
        labels = [netns, OTHER, OTHER, OTHER]
        used.add_metric(labels, rest.sockets)
        capacity.add_metric(labels, rest.capacity)
        out_tw.add_metric(labels, rest.timewait)
    for netns, irow in node.inbound:
        labels = [netns, irow.local_addr, irow.local_port, irow.remote_addr]
        inbound.add_metric(labels, irow.sockets)
        in_tw.add_metric(labels, irow.timewait)
    for netns, rest in node.inbound_other.items():
        labels = [netns, OTHER, OTHER, OTHER]
        inbound.add_metric(labels, rest.sockets)
        in_tw.add_metric(labels, rest.timewait)
    folded.add_metric(["outbound"], sum(r.buckets for r in node.outbound_other.values()))
    folded.add_metric(["inbound"], sum(r.buckets for r in node.inbound_other.values()))
    for netns, usage in usages:
        max_ratio.add_metric([netns], usage.max_ratio)
        in_use.add_metric([netns], usage.ephemeral_in_use)
        available.add_metric([netns], usage.ephemeral_available)
        per_bucket.add_metric([netns], usage.capacity)
    yield from (used, capacity, out_tw, inbound, in_tw, max_ratio, in_use, available, folded)
    yield per_bucket


EVENTS_TOP = (
    ": the node-wide --buckets.top buckets by recent rate count the closes made while "
    "they are in the top; each namespace's other series counts its buckets' closes while "
    "outside it, so sum(increase()) over every series is the number of connections closed"
)


def render_events(events: EventsSnapshot) -> Iterator[Metric]:
    """The socket-destroy counters (exporter/events/table.py); current at the last poll."""
    outbound = CounterMetricFamily(
        "tcptw_outbound_connections_closed",
        "Outbound connections closed (each destroyed socket that had connected, from the "
        "kernel's sock_diag destroy events) per bucket" + EVENTS_TOP,
        labels=OUTBOUND_LABELS,
    )
    for row in events.outbound:
        outbound.add_metric([row.netns, row.local_addr, *row.port_or_remote], row.value)
    inbound = CounterMetricFamily(
        "tcptw_inbound_connections_closed",
        "Inbound connections closed (each destroyed socket that a peer had connected) per "
        "bucket" + EVENTS_TOP,
        labels=INBOUND_LABELS,
    )
    for row in events.inbound:
        inbound.add_metric([row.netns, row.local_addr, *row.port_or_remote], row.value)
    lost = CounterMetricFamily(
        "tcptw_socket_events_lost",
        "Socket-destroy events the kernel dropped because the exporter's receive buffer "
        "was full (the socket's Drops in /proc/net/netlink): closes missing from the "
        "connections_closed counters",
        labels=["netns"],
    )
    for netns, value in events.lost:
        lost.add_metric([netns], value)
    up = GaugeMetricFamily(
        "tcptw_socket_events_up",
        "1 when the namespace's socket-destroy listener counts connections closed, 0 when "
        "the kernel refused it (the connections_closed counters are then absent)",
        labels=["netns"],
    )
    for netns, value in events.up:
        up.add_metric([netns], value)
    yield from (outbound, inbound, lost, up)


def render_tcpext(rows: Rows[dict[str, int]], config: Config) -> Iterator[Metric]:
    families: dict[str, CounterMetricFamily] = {}
    for netns, counters in rows:
        for field, value in counters.items():
            metric = families.get(field)
            if metric is None:
                metric = CounterMetricFamily(
                    f"tcptw_tcpext_{snake_case(field)}",
                    f"TcpExt {field} counter from /proc/net/netstat" + LAST_POLL,
                    labels=["netns"],
                )
                families[field] = metric
            metric.add_metric([netns], value)
    yield from families.values()


def render_sockstat(rows: Rows[SockstatCounts], config: Config) -> Iterator[Metric]:
    if not rows:
        return
    inuse = netns_gauge(
        "tcptw_sockstat_tcp_inuse",
        "TCP sockets in use in the namespace, TIME-WAIT excluded (/proc/net/sockstat inuse)",
    )
    tw = netns_gauge(
        "tcptw_sockstat_tcp_tw", "TCP sockets in TIME-WAIT in the namespace (/proc/net/sockstat tw)"
    )
    for netns, counts in rows:
        inuse.add_metric([netns], counts.inuse)
        tw.add_metric([netns], counts.tw)
    yield inuse
    yield tw


def render_sockstat_host(fields: dict[str, int], config: Config) -> Iterator[Metric]:
    """Global counters: one value for the node, no namespace label."""
    for name, text in HOST_SOCKSTAT_HELP.items():
        if name in fields:
            yield GaugeMetricFamily(f"tcptw_sockstat_tcp_{name}", text + LAST_POLL, fields[name])
    if "mem" in fields:
        yield GaugeMetricFamily(
            "tcptw_sockstat_tcp_memory_bytes",
            "TCP buffer memory of the node (/proc/net/sockstat mem pages times the page size)"
            + LAST_POLL,
            fields["mem"] * PAGE_SIZE,
        )


def render_sysctls(rows: Rows[Sysctls], config: Config) -> Iterator[Metric]:
    if not rows:
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
    for netns, data in rows:
        if data.port_range is not None:
            port_min.add_metric([netns], data.port_range[0])
            port_max.add_metric([netns], data.port_range[1])
        count = data.reserved_count()
        if count is not None:
            reserved.add_metric([netns], count)
        for name, value in data.values.items():
            values[name].add_metric([netns], value)
    yield port_min
    yield port_max
    yield reserved
    yield from (family for family in values.values() if family.samples)


def render_slab(caches: tuple[SlabCache, ...], config: Config) -> Iterator[Metric]:
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
        for cache in caches:
            merged = "true" if cache.merged else "false"
            family.add_metric([cache.name, merged, cache.shared_cache], getattr(cache, attribute))
        yield family
