"""The TCP line of /proc/net/sockstat (net/ipv4/proc.c, sockstat_seq_show).

    TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 293

`inuse` counts this namespace's hashed TCP sockets (sock_prot_inuse_get(net, ...)) and `tw`
its TIME-WAIT sockets (the per-netns tcp_death_row count): these two are per namespace.
`orphan`, `alloc` and `mem` (pages of TCP buffer memory) are global counters
(tcp_orphan_count, tcp_sockets_allocated, tcp_memory_allocated): every namespace shows the
host's values, so they are a separate host-wide reading without a namespace label.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.config import Config
from exporter.sources import PAGE_SIZE, NetnsFiles, SourceError, read_text
from exporter.sources.declare import (
    FOLDED,
    LAST_POLL,
    DetailView,
    NetnsPoll,
    Notable,
    Rows,
    Scope,
    Source,
    netns_gauge,
)
from exporter.sources.netstat import is_counter
from exporter.thresholds import DEFAULT

TCP_FIELDS = ("inuse", "orphan", "tw", "alloc", "mem")
HOST_FIELDS = ("orphan", "alloc", "mem")


@dataclass(frozen=True, slots=True)
class SockstatCounts:
    """The per-namespace part."""

    inuse: int
    tw: int

    @property
    def no_tcp_socket(self) -> bool:
        """Nothing a sock_diag dump of TCP could return: no hashed socket (listeners,
        connections, SYN-SENT; request sockets need a listener) and no TIME-WAIT one."""
        return self.inuse == 0 and self.tw == 0


def parse_sockstat(text: str) -> dict[str, int]:
    for line in text.splitlines():
        if not line.startswith("TCP:"):
            continue
        words = line.split()[1:]
        if len(words) % 2:
            raise SourceError(f"odd number of words in sockstat TCP line: {line[:80]!r}")
        fields: dict[str, int] = {}
        for key, value in zip(words[::2], words[1::2], strict=True):
            if not is_counter(value):
                raise SourceError(f"sockstat TCP {key} is not a number: {value[:32]!r}")
            fields[key] = int(value)
        missing = [name for name in ("inuse", "tw") if name not in fields]
        if missing:
            raise SourceError(f"sockstat TCP line lacks {', '.join(missing)}")
        return {name: fields[name] for name in TCP_FIELDS if name in fields}
    raise SourceError("no TCP line in sockstat")


def read_sockstat(files: NetnsFiles) -> SockstatCounts:
    fields = parse_sockstat(files.read_net("sockstat"))
    return SockstatCounts(inuse=fields["inuse"], tw=fields["tw"])


def read_sockstat_host(procfs: Path) -> dict[str, int]:
    """orphan, alloc, mem: the same in every namespace, read from the exporter's own."""
    fields = parse_sockstat(read_text(procfs / "net" / "sockstat"))
    return {name: fields[name] for name in HOST_FIELDS if name in fields}


HOST_SOCKSTAT_HELP = {
    "orphan": "Orphaned TCP sockets of the node (/proc/net/sockstat orphan)",
    "alloc": "Allocated TCP sockets of the node, TIME-WAIT excluded (/proc/net/sockstat alloc)",
}


def render_sockstat(
    rows: Rows[SockstatCounts], config: Config, detail: DetailView
) -> Iterator[Metric]:
    """tw in every namespace (an alert's input); inuse where shown in full, the quiet
    namespaces' summed into netns=""."""
    if not rows:
        return
    inuse = netns_gauge(
        "tcptw_sockstat_tcp_inuse",
        "TCP sockets in use in the namespace, TIME-WAIT excluded (/proc/net/sockstat inuse)",
    )
    tw = netns_gauge(
        "tcptw_sockstat_tcp_tw", "TCP sockets in TIME-WAIT in the namespace (/proc/net/sockstat tw)"
    )
    quiet = 0
    for netns, counts in rows:
        if detail.shows(netns):
            inuse.add_metric([netns], counts.inuse)
        else:
            quiet += counts.inuse
        tw.add_metric([netns], counts.tw)
    if not detail.full:
        inuse.add_metric([FOLDED], quiet)
    yield inuse
    yield tw


def near_max_tw_buckets(seen: Notable[SockstatCounts]) -> str:
    """TIME-WAIT sockets at Thresholds.detail_ratio of tcp_max_tw_buckets."""
    sysctls = seen.results.get("sysctl")
    limit = getattr(sysctls, "values", {}).get("tcp_max_tw_buckets")
    if not limit or seen.data.tw < DEFAULT.detail_ratio * limit:
        return ""
    return f"{seen.data.tw} TIME-WAIT sockets of tcp_max_tw_buckets {limit:g}"


def render_sockstat_host(
    rows: Rows[dict[str, int]], config: Config, detail: DetailView
) -> Iterator[Metric]:
    """Global counters: one value for the node, no namespace label."""
    for _, fields in rows[:1]:
        yield from _host_families(fields)


def _host_families(fields: dict[str, int]) -> Iterator[Metric]:
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


def _read(poll: NetnsPoll) -> SockstatCounts:
    return read_sockstat(poll.files)


def _read_host(config: Config) -> dict[str, int]:
    return read_sockstat_host(config.procfs)


HELP = (
    "the TCP line of /proc/net/sockstat (inuse and tw per namespace; orphan, alloc and mem "
    "once for the node)"
)
SOURCE = Source[SockstatCounts](
    "sockstat",
    HELP,
    Scope.NETNS,
    render_sockstat,
    read_netns=_read,
    net_files=("sockstat",),
    notable=near_max_tw_buckets,
)
# The node-wide counters: the same --collector.sockstat flag and source label.
HOST_SOURCE = Source[dict[str, int]](
    "sockstat", HELP, Scope.HOST, render_sockstat_host, read_host=_read_host
)
