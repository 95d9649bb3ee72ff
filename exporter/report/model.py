"""What a report is made of: per-namespace views over two snapshots (the figures of the
second, the counter deltas between them), buckets with their Little's-law rates, and
findings. Pure: nothing here reads the kernel.

Little's law: a TIME-WAIT socket lives TIME_WAIT_SECONDS (TCP_TIMEWAIT_LEN, fixed in the
kernel, not a sysctl), so the TIME-WAIT sockets of a bucket divided by 60 is about the
rate at which connections toward it were closed over the last minute, and the ports a
bucket can still give out (its capacity minus its sockets that are not in TIME-WAIT)
divided by 60 is the highest new-connection rate it can sustain when each closed
connection holds its port for the whole 60 s.

Where the namespace's socket-destroy listener (exporter/events/table.py) ran for the whole
window, a bucket's rate now is exact instead: the connections toward it closed during the
window, divided by the window (method "events"); elsewhere, the TIME-WAIT estimate
(method "timewait").
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TypeVar

from exporter.engine.snapshot import HOST, Snapshot
from exporter.report.holders import Inspection
from exporter.sources.netstat import SOURCE as NETSTAT
from exporter.sources.slab import SOURCE as SLAB
from exporter.sources.slab import SlabCache
from exporter.sources.sockdiag.capacity import OutboundRow, PortPolicy
from exporter.sources.sockdiag.source import SOURCE as SOCKDIAG
from exporter.sources.sockdiag.tally import SocketStats
from exporter.sources.sockstat import SOURCE as SOCKSTAT
from exporter.sources.sockstat import SockstatCounts
from exporter.sources.sysctl import SOURCE as SYSCTL
from exporter.sources.sysctl import Sysctls

T = TypeVar("T")

TIME_WAIT_SECONDS = 60  # TCP_TIMEWAIT_LEN (include/net/tcp.h)
DEFAULT_PORT_RANGE = (32768, 60999)
DEFAULT_PORTS = DEFAULT_PORT_RANGE[1] - DEFAULT_PORT_RANGE[0] + 1  # 28,232
DEFAULT_FIN_TIMEOUT = 60
# Counters whose rate the report shows (those the kernel has; PAWSPassive left with 4.12).
RATE_COUNTERS = (
    "TW",
    "TWRecycled",
    "TWKilled",
    "TCPTimeWaitOverflow",
    "PAWSActive",
    "PAWSPassive",
    "PAWSEstab",
    "PAWSTimewait",
)
SEVERITIES = ("critical", "warning", "info")
EVENTS = "events"  # rate now: closes counted from the socket-destroy events / window
TIMEWAIT = "timewait"  # rate now: TIME-WAIT / 60 (Little's law)
METHOD_TEXT = {EVENTS: "counted", TIMEWAIT: "estimated from TIME-WAIT"}


@dataclass(frozen=True, slots=True)
class Closes:
    """One namespace's outbound connections closed during the window, per bucket, from
    the socket-destroy events."""

    closed: dict[tuple[str, str, str], int]  # (local_addr, remote_addr, remote_port) → n
    # Every close is in a bucket's total: a bucket not listed closed none. Otherwise (more
    # buckets than the listener tracks) an unlisted bucket's count is unknown.
    complete: bool = True

    def count(self, local_addr: str, remote_addr: str, remote_port: str) -> int | None:
        n = self.closed.get((local_addr, remote_addr, remote_port))
        if n is None and self.complete:
            return 0
        return n


@dataclass(frozen=True, slots=True)
class Failures:
    """One namespace's connect() calls that failed with EADDRNOTAVAIL during the window,
    per destination address, from the socket-destroy events (exporter/events/failures.py:
    counted when the application closes the failed socket)."""

    failed: dict[str, int]  # remote_addr → failures; destinations with none left out
    uncounted: int = 0  # failures toward destinations the listener no longer tracks

    @property
    def total(self) -> int:
        return sum(self.failed.values()) + self.uncounted


@dataclass(frozen=True, slots=True)
class Events:
    """What the events gave the report: per namespace label, its closes and connect()
    failures, or why it has none (its rates are then estimated from TIME-WAIT, and its
    failures are unknown)."""

    closes: dict[str, Closes] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    reason: str = "no events given"  # for a namespace in neither
    failures: dict[str, Failures] = field(default_factory=dict)  # same labels as closes
    # Not from the events, but read by `observe` too and carried with them: per namespace
    # label, its buckets at Thresholds.port_warning or more, inspected after the second
    # poll (holders.py: their sockets per state and the processes holding them).
    inspections: dict[str, tuple[Inspection, ...]] = field(default_factory=dict)

    def why_not(self, label: str) -> str:
        """Why the namespace's rates are estimated; empty when they are counted."""
        if label in self.closes:
            return ""
        return self.unavailable.get(label, self.reason)


NO_EVENTS = Events()


@dataclass(frozen=True, slots=True)
class NamespaceView:
    """One namespace as two polls saw it."""

    label: str
    window: float  # seconds between the two polls
    sysctls: Sysctls | None = None
    sockstat: SockstatCounts | None = None
    stats: SocketStats | None = None
    stats_before: SocketStats | None = None
    netstat: dict[str, int] | None = None
    netstat_before: dict[str, int] | None = None
    errors: tuple[str, ...] = ()
    closes: Closes | None = None  # None: no events for the whole window
    failures: Failures | None = None  # None: not counted (no events for the whole window)
    failures_reason: str = ""  # why not counted
    # its buckets at port_warning or more, worst first: their sockets and holders
    inspections: tuple[Inspection, ...] = ()

    def sysctl(self, name: str) -> float | None:
        return None if self.sysctls is None else self.sysctls.values.get(name)

    def delta(self, counter: str) -> int | None:
        if self.netstat is None or self.netstat_before is None:
            return None
        if counter not in self.netstat or counter not in self.netstat_before:
            return None
        return max(0, self.netstat[counter] - self.netstat_before[counter])

    def rate(self, counter: str) -> float | None:
        delta = self.delta(counter)
        if delta is None or self.window <= 0:
            return None
        return delta / self.window

    @property
    def policy(self) -> PortPolicy | None:
        return None if self.sysctls is None else PortPolicy.from_sysctls(self.sysctls)


def _is_loopback(text: str) -> bool:
    try:
        return ipaddress.ip_network(text, strict=False).is_loopback
    except ValueError:
        return False


def reuse_covers(policy: PortPolicy, local_addr: str, remote_addr: str) -> bool:
    """May connect() take over this bucket's TIME-WAIT quadruplets (PortPolicy.reuse)?"""
    return policy.reuse(_is_loopback(local_addr), _is_loopback(remote_addr))


def reuse_value_covers(policy: PortPolicy, local_addr: str, remote_addr: str) -> bool:
    """Does the value of tcp_tw_reuse alone cover the bucket (timestamps aside)?"""
    return policy.reuse_by_value(_is_loopback(local_addr), _is_loopback(remote_addr))


@dataclass(frozen=True, slots=True)
class Bucket:
    """One outbound bucket (local addr, remote addr, remote port) with its rates."""

    local_addr: str
    remote_addr: str
    remote_port: str
    sockets: int
    timewait: int
    capacity: int
    reuse_covers: bool  # TIME-WAIT quadruplets can be taken over: they are not "used"
    used: int  # sockets, less TIME-WAIT ones when reuse covers the bucket
    ratio: float  # used / capacity; 1.0 when capacity is 0
    rate_now: float  # closes per second toward it: counted / window, else TIME-WAIT / 60
    limit: float | None  # sustainable new connections per second; None when reuse covers
    growth: float | None  # change of `used` per second between the two polls
    exhaustion_seconds: float | None  # at that growth; 0 when full; None when not filling
    rate_method: str = TIMEWAIT  # how rate_now was found: EVENTS or TIMEWAIT
    closed: int | None = None  # connections closed toward it in the window (EVENTS only)

    @property
    def destination(self) -> str:
        host = f"[{self.remote_addr}]" if ":" in self.remote_addr else self.remote_addr
        return f"{host}:{self.remote_port}"

    def sentence(self) -> str:
        now = f"{rate_text(self.rate_now)} conn/s now ({METHOD_TEXT[self.rate_method]})"
        if self.limit is None:
            return f"toward {self.destination}: {now}, no TIME-WAIT limit (tcp_tw_reuse covers it)"
        return f"toward {self.destination}: {now}, limit {rate_text(self.limit)} conn/s"


def rate_text(value: float) -> str:
    """Rates as people read them: 1.7, 38.2, 470."""
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def bucket(
    row: OutboundRow,
    policy: PortPolicy | None,
    before: int | None,
    window: float,
    closed: int | None = None,
) -> Bucket:
    """closed: the connections closed toward it during the window, counted (then the
    rate now is closed / window), or None (TIME-WAIT / 60)."""
    covers = policy is not None and reuse_covers(policy, row.local_addr, row.remote_addr)
    used = row.sockets - row.timewait if covers else row.sockets
    ratio = used / row.capacity if row.capacity else 1.0
    limit = None if covers else max(0, row.capacity - (row.sockets - row.timewait)) / 60
    growth = None
    if before is not None and window > 0:
        growth = (row.sockets - before) / window
    exhaustion: float | None = None
    if ratio >= 1.0:
        exhaustion = 0.0
    elif growth is not None and growth > 0 and not covers:
        exhaustion = (row.capacity - used) / growth
    if window <= 0:
        closed = None
    rate_now = row.timewait / TIME_WAIT_SECONDS if closed is None else closed / window
    return Bucket(
        row.local_addr, row.remote_addr, row.remote_port, row.sockets, row.timewait,
        row.capacity, covers, used, ratio, rate_now, limit, growth, exhaustion,
        TIMEWAIT if closed is None else EVENTS, closed,
    )  # fmt: skip


def buckets(view: NamespaceView) -> list[Bucket]:
    """The namespace's largest outbound buckets, highest ratio first."""
    if view.stats is None or view.stats.ports is None:
        return []
    before: dict[tuple[str, str, str], int] = {}
    if view.stats_before is not None and view.stats_before.ports is not None:
        before = {
            (r.local_addr, r.remote_addr, r.remote_port): r.sockets
            for r in view.stats_before.ports.outbound
        }
    policy = view.policy
    closes = view.closes
    rows = [
        bucket(
            r,
            policy,
            before.get((r.local_addr, r.remote_addr, r.remote_port), 0),
            view.window,
            closes.count(r.local_addr, r.remote_addr, r.remote_port) if closes else None,
        )
        for r in view.stats.ports.outbound
    ]
    rows.sort(key=lambda b: (-b.ratio, -b.sockets, b.destination, b.local_addr))
    return rows


@dataclass(frozen=True, slots=True)
class Peer:
    local_addr: str
    remote_addr: str
    sockets: int
    timewait: int


@dataclass(frozen=True, slots=True)
class LocalPort:
    """Inbound sockets of one local (listening) port, and its largest peers."""

    port: str
    sockets: int
    timewait: int
    peers: tuple[Peer, ...]


def local_ports(view: NamespaceView, peers: int = 5) -> list[LocalPort]:
    if view.stats is None or view.stats.ports is None:
        return []
    grouped: dict[str, list[Peer]] = {}
    for row in view.stats.ports.inbound:
        grouped.setdefault(row.local_port, []).append(
            Peer(row.local_addr, row.remote_addr, row.sockets, row.timewait)
        )
    result = [
        LocalPort(
            port,
            sum(p.sockets for p in rows),
            sum(p.timewait for p in rows),
            tuple(sorted(rows, key=lambda p: (-p.sockets, p.remote_addr))[:peers]),
        )
        for port, rows in grouped.items()
    ]
    result.sort(key=lambda lp: (-lp.sockets, int(lp.port) if lp.port.isdigit() else 0))
    return result


@dataclass(frozen=True, slots=True)
class Direction:
    outbound: int
    outbound_timewait: int
    inbound: int
    inbound_timewait: int
    listen: int


def direction(view: NamespaceView) -> Direction | None:
    if view.stats is None or view.stats.ports is None:
        return None
    ports = view.stats.ports
    listen = sum(n for (_, state), n in view.stats.states.items() if state == "listen")
    return Direction(
        sum(r.sockets for r in ports.outbound) + ports.outbound_rest.sockets,
        sum(r.timewait for r in ports.outbound) + ports.outbound_rest.timewait,
        sum(r.sockets for r in ports.inbound) + ports.inbound_rest.sockets,
        sum(r.timewait for r in ports.inbound) + ports.inbound_rest.timewait,
        listen,
    )


def states(view: NamespaceView) -> dict[str, int]:
    """Sockets per state, both families together, states with none left out."""
    if view.stats is None:
        return {}
    total: dict[str, int] = {}
    for (_, state), count in view.stats.states.items():
        total[state] = total.get(state, 0) + count
    return {state: count for state, count in total.items() if count}


def _data(snapshot: Snapshot, source: str) -> dict[str, object]:
    return {r.netns: r.data for r in snapshot.results if r.source == source and r.ok}


def views(first: Snapshot, second: Snapshot, events: Events = NO_EVENTS) -> list[NamespaceView]:
    """One view per namespace of the second poll, in label order."""
    window = max(0.0, second.started_at - first.started_at)
    sysctls, sockstat = _data(second, SYSCTL.name), _data(second, SOCKSTAT.name)
    stats, stats_before = _data(second, SOCKDIAG.name), _data(first, SOCKDIAG.name)
    netstat, netstat_before = _data(second, NETSTAT.name), _data(first, NETSTAT.name)
    errors: dict[str, list[str]] = {}
    for r in second.results:
        if not r.ok and r.netns != HOST:
            errors.setdefault(r.netns, []).append(f"{r.source}: {r.error}")
    labels = [ns.label for ns in second.namespaces] or sorted(
        {r.netns for r in second.results if r.netns != HOST}
    )
    result = []
    for label in sorted(labels):
        result.append(
            NamespaceView(
                label=label,
                window=window,
                sysctls=_typed(sysctls.get(label), Sysctls),
                sockstat=_typed(sockstat.get(label), SockstatCounts),
                stats=_typed(stats.get(label), SocketStats),
                stats_before=_typed(stats_before.get(label), SocketStats),
                netstat=_counters(netstat.get(label)),
                netstat_before=_counters(netstat_before.get(label)),
                errors=tuple(errors.get(label, ())),
                closes=events.closes.get(label),
                failures=events.failures.get(label),
                failures_reason=events.why_not(label) if label not in events.failures else "",
                inspections=events.inspections.get(label, ()),
            )
        )
    return result


def _typed(value: object, kind: type[T]) -> T | None:
    return value if isinstance(value, kind) else None


def _counters(value: object) -> dict[str, int] | None:
    if not isinstance(value, dict):
        return None
    return {str(k): int(v) for k, v in value.items()}


def slab_caches(snapshot: Snapshot) -> tuple[SlabCache, ...]:
    for r in snapshot.results:
        if r.source == SLAB.name and r.netns == HOST and r.ok and isinstance(r.data, tuple):
            return tuple(c for c in r.data if isinstance(c, SlabCache))
    return ()


@dataclass(frozen=True, slots=True)
class Finding:
    id: str
    severity: str  # critical, warning, info
    netns: str  # "" for the node as a whole
    summary: str  # one line
    evidence: dict[str, float | int | str] = field(default_factory=dict)
    remedy: str = ""
