"""Every source in one place, in the spirit of node_exporter's registerCollector: its name
(the --collector.<name> flag and the `source` label), its help text, its scope, how it
reads and how it renders. The CLI, the poller and the collector all iterate SOURCES, so
adding a source is one entry here plus its module.

Scope: a `NetnsSource` is read once per namespace from descriptors opened inside it (a
`NetnsPoll`), and its series carry the `netns` label; a `HostSource` reads node-wide
values once per poll, and its series carry no `netns` label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Generic, TypeVar, cast

from prometheus_client.core import Metric

from exporter.config import Config
from exporter.engine import families as metrics
from exporter.engine.snapshot import HOST, Snapshot
from exporter.netns.context import NetnsContext
from exporter.sources import PAGE_SIZE, SourceError
from exporter.sources.netstat import read_netstat, select_fields
from exporter.sources.slab import SlabCache, read_slab
from exporter.sources.sockdiag.capacity import PortPolicy
from exporter.sources.sockdiag.codec import DumpInterrupted
from exporter.sources.sockdiag.dump import Buffers
from exporter.sources.sockdiag.tally import SocketStats, collect_socket_stats, no_sockets
from exporter.sources.sockstat import SockstatCounts, read_sockstat, read_sockstat_host
from exporter.sources.sysctl import Sysctls, read_sysctls

T = TypeVar("T")


@dataclass
class NetnsPoll:
    """One namespace during one poll: its descriptors, and readings shared by sources
    (sockdiag needs the port sysctls and the sockstat counts that its neighbours export;
    each is read once per poll)."""

    label: str
    context: NetnsContext
    config: Config
    buffers: Buffers
    warnings: dict[str, str] = field(default_factory=dict)  # topic → message, this poll
    _memo: dict[str, object] = field(default_factory=dict)

    def _once(self, key: str, read: Callable[[], T]) -> T:
        if key not in self._memo:
            try:
                self._memo[key] = read()
            except SourceError as exc:
                self._memo[key] = exc
        value = self._memo[key]
        if isinstance(value, SourceError):
            raise value
        return cast(T, value)

    def sysctls(self) -> Sysctls:
        return self._once("sysctl", lambda: read_sysctls(self.context))

    def sockstat(self) -> SockstatCounts:
        return self._once("sockstat", lambda: read_sockstat(self.context))

    def port_policy(self) -> PortPolicy | None:
        """What connect() obeys in this namespace; None (and a warning) without the port
        range, so buckets and capacity are absent rather than wrong."""
        try:
            sysctls = self.sysctls()
        except SourceError as exc:
            self.warnings["buckets"] = f"buckets unavailable: sysctls unreadable: {exc}"
            return None
        if sysctls.port_range is None:
            self.warnings["buckets"] = "buckets unavailable: no ip_local_port_range"
            return None
        return PortPolicy(
            port_range=sysctls.port_range,
            reserved=sysctls.reserved_ports or (),
            tw_reuse=int(sysctls.values.get("tcp_tw_reuse", 0)),
            timestamps=int(sysctls.values.get("tcp_timestamps", 1)),
        )


def read_sockdiag(poll: NetnsPoll) -> SocketStats:
    """States, buckets and capacity from one pass over the namespace's sockets.

    The dump is skipped where sockstat shows no TCP socket at all (inuse 0, tw 0): the
    result is then exactly what the dump would return, and the namespace costs no walk
    of the (usually shared) established hash. A dump the kernel flags as interrupted is
    redone once on a fresh socket; any other failure also replaces the socket, whose
    stream may be out of step, before the error is reported."""
    options = poll.config.buckets
    policy = poll.port_policy()
    # Without IPv6 in the kernel there is no sockstat6, and no AF_INET6 socket to count.
    missing = () if poll.context.has_net("sockstat6") else ("ipv6",)
    classify = poll.context.events is not None  # the destroy events classify with it
    try:
        if poll.sockstat().no_tcp_socket:
            return no_sockets(policy, options, missing, classify=classify)
    except SourceError:
        pass  # unknown: dump
    for attempt in (1, 2):
        diag = poll.context.diag
        if diag is None:
            raise SourceError("no sock_diag socket for this namespace")
        try:
            return collect_socket_stats(
                diag, poll.buffers, policy, options, missing, classify=classify
            )
        except DumpInterrupted:
            poll.context.reopen_diag()
            if attempt == 2:
                raise
        except BaseException:
            poll.context.reopen_diag()
            raise
    raise AssertionError("unreachable")


def _render_sockdiag(rows: metrics.Rows[SocketStats], config: Config) -> Iterator[Metric]:
    return chain(metrics.render_sockets(rows, config), metrics.render_ports(rows, config))


@dataclass(frozen=True)
class NetnsSource(Generic[T]):
    name: str
    help: str
    read: Callable[[NetnsPoll], T]
    render: Callable[[metrics.Rows[T], Config], Iterable[Metric]]

    def metrics(self, snapshot: Snapshot, config: Config) -> Iterable[Metric]:
        # The results were produced by self.read: the cast restores the type it returned.
        rows = [
            (r.netns, cast(T, r.data))
            for r in snapshot.results
            if r.source == self.name and r.netns != HOST and r.ok
        ]
        return self.render(rows, config)


@dataclass(frozen=True)
class HostSource(Generic[T]):
    name: str
    help: str
    read: Callable[[Config], T]
    render: Callable[[T, Config], Iterable[Metric]]

    def metrics(self, snapshot: Snapshot, config: Config) -> Iterable[Metric]:
        for r in snapshot.results:
            if r.source == self.name and r.netns == HOST and r.ok:
                return self.render(cast(T, r.data), config)
        return ()


def _read_slab(config: Config) -> tuple[SlabCache, ...]:
    return tuple(read_slab(config.procfs, config.sysfs, PAGE_SIZE))


# Per-namespace sources run in this order: sockdiag last, as it reuses the readings of
# sysctl and sockstat (NetnsPoll).
NETNS_SOURCES: tuple[NetnsSource[object], ...] = cast(
    tuple[NetnsSource[object], ...],
    (
        NetnsSource[Sysctls](
            "sysctl",
            "TIME-WAIT and port-range sysctls from /proc/sys/net/ipv4",
            NetnsPoll.sysctls,
            metrics.render_sysctls,
        ),
        NetnsSource[dict[str, int]](
            "netstat",
            "TcpExt counters from /proc/net/netstat",
            lambda poll: select_fields(read_netstat(poll.context), poll.config.netstat_fields),
            metrics.render_tcpext,
        ),
        NetnsSource[SockstatCounts](
            "sockstat",
            "the TCP line of /proc/net/sockstat (inuse and tw per namespace; orphan, "
            "alloc and mem once for the node)",
            NetnsPoll.sockstat,
            metrics.render_sockstat,
        ),
        NetnsSource[SocketStats](
            "sockdiag",
            "TCP sockets per state, quadruplet buckets and port capacity from netlink sock_diag",
            read_sockdiag,
            _render_sockdiag,
        ),
    ),
)
HOST_SOURCES: tuple[HostSource[object], ...] = cast(
    tuple[HostSource[object], ...],
    (
        HostSource[dict[str, int]](
            "sockstat",
            "",
            lambda config: read_sockstat_host(config.procfs),
            metrics.render_sockstat_host,
        ),
        HostSource[tuple[SlabCache, ...]](
            "slab",
            "tw_sock_TCP/tcp_bind_bucket slab caches (/proc/slabinfo or /sys/kernel/slab)",
            _read_slab,
            metrics.render_slab,
        ),
    ),
)
# One --collector.<name> flag per name, with the first help text given for it.
COLLECTORS: dict[str, str] = {}
for _name, _help in [(s.name, s.help) for s in NETNS_SOURCES] + [
    (s.name, s.help) for s in HOST_SOURCES
]:
    if _help:
        COLLECTORS.setdefault(_name, _help)
