"""Ephemeral-port capacity per outbound bucket, utilisation, and top-K folding.

connect() on an unbound socket picks its port in __inet_hash_connect (net/ipv4/
inet_hashtables.c): it walks ip_local_port_range (even ports first since Linux 4.6, so half
the range can fill before the other half is touched), skips every port in
ip_local_reserved_ports (inet_is_local_reserved_port), skips every port whose bind bucket
was created by bind() (tb->fastreuse >= 0: listeners and other explicitly bound sockets, on
any local address), and takes a port whose quadruplet toward this destination is free
(__inet_check_established). A TIME-WAIT quadruplet is free only when tcp_twsk_unique
allows reuse: tcp_tw_reuse 1, or 2 (loopback only) when either end is a loopback address,
and timestamps in use. How soon depends on the kernel: from Linux 6.13, once the TIME-WAIT
is older than tcp_tw_reuse_delay (1 s by default); before 6.13 (no tcp_tw_reuse_delay), once
the kernel's seconds clock (ktime_get_seconds) has ticked past the second in which the
TIME-WAIT last heard from its peer, so after somewhere between 0 and 1 s. Either way such a
TIME-WAIT holds no port for long, and the utilisation leaves it out whatever its age.

So every outbound bucket (local addr, remote addr, remote port) of a namespace has the
same capacity: the range, minus reserved ports, minus ports held by listeners. The ports
themselves are shared between buckets: one local port can serve many destinations.

Zero capacity (every port of the range reserved or held by a listener): connect() on an
unbound socket fails with EADDRNOTAVAIL whatever the destination, so the namespace's
utilisation is 1.0, with or without sockets; capacity series show 0.

Everything here works on arrays (buckets.Buckets); Python objects are made only for the
buckets that are kept as series.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from exporter.sources.sockdiag.buckets import BucketOptions, Buckets, BucketTally
from exporter.sources.sysctl import Sysctls

OTHER = "other"


@dataclass(frozen=True, slots=True)
class PortPolicy:
    """What connect() obeys in one namespace, from its sysctls."""

    port_range: tuple[int, int]
    reserved: tuple[tuple[int, int], ...]
    tw_reuse: int
    timestamps: int

    @classmethod
    def from_sysctls(cls, sysctls: Sysctls) -> PortPolicy | None:
        """None without ip_local_port_range: buckets and capacity are then absent."""
        if sysctls.port_range is None:
            return None
        return cls(
            port_range=sysctls.port_range,
            reserved=sysctls.reserved_ports or (),
            tw_reuse=int(sysctls.values.get("tcp_tw_reuse", 0)),
            timestamps=int(sysctls.values.get("tcp_timestamps", 1)),
        )

    def reuse_by_value(self, local_loopback: bool, remote_loopback: bool) -> bool:
        """Does the value of tcp_tw_reuse alone let connect() take over a TIME-WAIT
        quadruplet of this bucket (tcp_twsk_unique, net/ipv4/tcp_ipv4.c)? 1: any; 2:
        when either end is a loopback address. The same on every supported kernel (5.10
        on); only the wait differs: tcp_tw_reuse_delay from 6.13, before it the next tick
        of the kernel's seconds clock (at most 1 s)."""
        if self.tw_reuse == 1:
            return True
        return self.tw_reuse == 2 and (local_loopback or remote_loopback)

    def reuse(self, local_loopback: bool, remote_loopback: bool) -> bool:
        """... and timestamps on, which tcp_twsk_unique also needs."""
        return bool(self.timestamps) and self.reuse_by_value(local_loopback, remote_loopback)


@dataclass(frozen=True, slots=True)
class OutboundRow:
    local_addr: str
    remote_addr: str
    remote_port: str
    sockets: int
    timewait: int
    capacity: int


@dataclass(frozen=True, slots=True)
class InboundRow:
    local_addr: str
    local_port: str
    remote_addr: str
    sockets: int
    timewait: int


@dataclass(frozen=True, slots=True)
class Folded:
    """Buckets summed into one `other` series, so that sums over series stay exact."""

    buckets: int = 0
    sockets: int = 0
    timewait: int = 0
    capacity: int = 0  # outbound: the sum of the folded buckets' capacities

    def merge(self, other: Folded) -> Folded:
        return Folded(
            self.buckets + other.buckets, self.sockets + other.sockets,
            self.timewait + other.timewait, self.capacity + other.capacity,
        )  # fmt: skip

    def plus(self, sockets: int, timewait: int, capacity: int = 0) -> Folded:
        return Folded(
            self.buckets + 1, self.sockets + sockets, self.timewait + timewait,
            self.capacity + capacity,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PortUsage:
    """One namespace's buckets. `outbound`/`inbound` hold its largest K buckets, the
    candidates for the node-wide top K (select_node_top); the rest is already folded."""

    capacity: int  # per outbound bucket
    ephemeral_in_use: int
    ephemeral_available: int
    max_ratio: float  # over every outbound bucket, before folding
    outbound: tuple[OutboundRow, ...]  # largest first
    inbound: tuple[InboundRow, ...]
    outbound_rest: Folded = Folded()
    inbound_rest: Folded = Folded()


def reserved_mask(policy: PortPolicy) -> npt.NDArray[np.bool_]:
    """Boolean per port of the range: reserved by ip_local_reserved_ports."""
    low, high = policy.port_range
    mask = np.zeros(high - low + 1, dtype=bool)
    for first, last in policy.reserved:
        start, stop = max(first, low), min(last, high)
        if start <= stop:
            mask[start - low : stop - low + 1] = True
    return mask


def ephemeral_available(policy: PortPolicy) -> int:
    return int((~reserved_mask(policy)).sum())


def outbound_capacity(policy: PortPolicy, listen_port: npt.NDArray[np.bool_]) -> int:
    """Ports connect() may still pick: range minus reserved ports minus ports held by listeners."""
    low, high = policy.port_range
    usable = ~reserved_mask(policy) & ~listen_port[low : high + 1]
    return int(usable.sum())


def timewait_reusable(policy: PortPolicy, buckets: Buckets) -> npt.NDArray[np.bool_]:
    """Per bucket: may connect() take over its TIME-WAIT quadruplets (tcp_twsk_unique,
    net/ipv4/tcp_ipv4.c)? tcp_tw_reuse 1, or 2 with a loopback end, and timestamps on;
    once past tcp_tw_reuse_delay (6.13+) or the seconds clock's next tick (before 6.13),
    which the answer does not wait for (see the module's docstring)."""
    n = len(buckets)
    # PortPolicy.reuse on arrays: its answer for (not loopback, not loopback) holds for
    # every bucket unless loopback matters, and then for exactly the loopback ones.
    if policy.reuse(False, False):
        return np.ones(n, dtype=bool)
    if not policy.reuse(True, True):
        return np.zeros(n, dtype=bool)
    either: npt.NDArray[np.bool_] = buckets.loopback(False) | buckets.loopback(True)
    return either


def utilization(policy: PortPolicy, buckets: Buckets, capacity: int) -> float:
    """The highest used/capacity of any outbound bucket; 1.0 when capacity is 0."""
    if capacity == 0:
        return 1.0
    if not len(buckets):
        return 0.0
    reusable = timewait_reusable(policy, buckets)
    if not reusable.any():
        return float(buckets.sockets.max()) / capacity
    used = buckets.sockets - np.where(reusable, buckets.timewait, np.int32(0))
    return float(used.max()) / capacity


def _address(v6: bool, value: int, prefix: int | None = None) -> str:
    address = ipaddress.IPv6Address(value) if v6 else ipaddress.IPv4Address(value)
    full = 128 if v6 else 32
    if prefix is not None and prefix < full:
        return f"{address}/{prefix}"
    return str(address)


def _label(buckets: Buckets, i: int, remote: bool, options: BucketOptions) -> str:
    v6 = buckets.is_v6(i)
    prefix = (options.ipv6_prefix if v6 else options.ipv4_prefix) if remote else None
    return _address(v6, buckets.address(i, remote), prefix)


def top_buckets(sockets: npt.NDArray[np.int32], options: BucketOptions) -> npt.NDArray[np.intp]:
    """Positions of the `top` largest buckets with at least `min_sockets` sockets, largest
    first; ties go to the earlier position (buckets are sorted by key), so the choice is
    the same from poll to poll. O(n): a partition, then a sort of the K kept."""
    n = sockets.size
    if options.top == 0 or n == 0:
        return np.zeros(0, dtype=np.intp)
    # Every bucket has a socket: with the default --buckets.min-sockets=1 all qualify.
    eligible = sockets if options.min_sockets <= 1 else sockets[sockets >= options.min_sockets]
    keep = min(options.top, eligible.size)
    if keep == 0:
        return np.zeros(0, dtype=np.intp)
    kth = int(np.partition(eligible, eligible.size - keep)[eligible.size - keep])
    kth = max(kth, options.min_sockets)
    chosen = np.flatnonzero(sockets > kth)
    ties = _first_positions(sockets, kth, keep - chosen.size)
    chosen = np.concatenate([chosen, ties])
    ordered: npt.NDArray[np.intp] = chosen[np.lexsort((chosen, -sockets[chosen]))]
    return ordered


def _first_positions(values: npt.NDArray[np.int32], value: int, count: int) -> npt.NDArray[np.intp]:
    """The first `count` positions holding `value`, scanning in chunks (a full
    flatnonzero would cost 8 bytes per bucket when most buckets tie)."""
    found: list[npt.NDArray[np.intp]] = []
    step = 1 << 16
    for start in range(0, values.size if count > 0 else 0, step):
        hits = np.flatnonzero(values[start : start + step] == value) + start
        found.append(hits[: count - sum(f.size for f in found)])
        if sum(f.size for f in found) >= count:
            break
    return np.concatenate(found) if found else np.zeros(0, dtype=np.intp)


def summarize(tally: BucketTally, policy: PortPolicy, options: BucketOptions) -> PortUsage:
    """One direction at a time, so only one direction's bucket arrays live at once."""
    capacity = outbound_capacity(policy, tally.listen_port)
    out = tally.buckets(outbound=True)
    kept = top_buckets(out.sockets, options)
    outbound = tuple(
        OutboundRow(
            _label(out, i, False, options),
            _label(out, i, True, options),
            str(int(out.port[i])),
            int(out.sockets[i]),
            int(out.timewait[i]),
            capacity,
        )
        for i in kept.tolist()
    )
    folded = len(out) - kept.size
    outbound_rest = Folded(
        folded,
        int(out.sockets.sum()) - sum(r.sockets for r in outbound),
        int(out.timewait.sum()) - sum(r.timewait for r in outbound),
        capacity * folded,
    )
    max_ratio = utilization(policy, out, capacity)
    del out
    inn = tally.buckets(outbound=False)
    kept = top_buckets(inn.sockets, options)
    inbound = tuple(
        InboundRow(
            _label(inn, i, False, options),
            str(int(inn.port[i])),
            _label(inn, i, True, options),
            int(inn.sockets[i]),
            int(inn.timewait[i]),
        )
        for i in kept.tolist()
    )
    inbound_rest = Folded(
        len(inn) - kept.size,
        int(inn.sockets.sum()) - sum(r.sockets for r in inbound),
        int(inn.timewait.sum()) - sum(r.timewait for r in inbound),
    )
    return PortUsage(
        capacity=capacity,
        ephemeral_in_use=int(tally.port_used.sum()),
        ephemeral_available=ephemeral_available(policy),
        max_ratio=max_ratio,
        outbound=outbound,
        inbound=inbound,
        outbound_rest=outbound_rest,
        inbound_rest=inbound_rest,
    )


@dataclass(frozen=True, slots=True)
class NodeBuckets:
    """The node-wide top K of each direction, and per namespace what was folded."""

    outbound: list[tuple[str, OutboundRow]]
    inbound: list[tuple[str, InboundRow]]
    outbound_other: dict[str, Folded]  # only namespaces with something folded
    inbound_other: dict[str, Folded]


def select_node_top(usages: list[tuple[str, PortUsage]], top: int) -> NodeBuckets:
    """Keep the `top` largest buckets of the whole node per direction: outbound ranked by
    used/capacity (capacities differ between namespaces), inbound by sockets. Every
    other candidate joins its namespace's `other` series, next to what the namespace
    folded already, so per-namespace sums stay exact. Ties break on the labels, so the
    choice is stable from poll to poll."""

    def out_key(item: tuple[str, OutboundRow]) -> tuple[float, int, str, str, str, str]:
        netns, row = item
        ratio = row.sockets / row.capacity if row.capacity else float("inf")
        return (-ratio, -row.sockets, netns, row.local_addr, row.remote_addr, row.remote_port)

    def in_key(item: tuple[str, InboundRow]) -> tuple[int, str, str, str, str]:
        netns, row = item
        return (-row.sockets, netns, row.local_addr, row.local_port, row.remote_addr)

    outbound = sorted(((n, r) for n, u in usages for r in u.outbound), key=out_key)
    inbound = sorted(((n, r) for n, u in usages for r in u.inbound), key=in_key)
    out_other = {n: u.outbound_rest for n, u in usages if u.outbound_rest.buckets}
    in_other = {n: u.inbound_rest for n, u in usages if u.inbound_rest.buckets}
    for netns, row in outbound[top:]:
        rest = out_other.get(netns, Folded())
        out_other[netns] = rest.plus(row.sockets, row.timewait, row.capacity)
    for netns, irow in inbound[top:]:
        out = in_other.get(netns, Folded())
        in_other[netns] = out.plus(irow.sockets, irow.timewait)
    return NodeBuckets(outbound[:top], inbound[:top], out_other, in_other)
