"""Ephemeral-port capacity per outbound bucket, utilisation, and top-K folding.

connect() on an unbound socket picks its port in __inet_hash_connect (net/ipv4/
inet_hashtables.c): it walks ip_local_port_range (even ports first since Linux 4.6, so half
the range can fill before the other half is touched), skips every port in
ip_local_reserved_ports (inet_is_local_reserved_port), skips every port whose bind bucket
was created by bind() (tb->fastreuse >= 0: listeners and other explicitly bound sockets, on
any local address), and takes a port whose quadruplet toward this destination is free
(__inet_check_established). A TIME-WAIT quadruplet is free only when tcp_twsk_unique
allows reuse: tcp_tw_reuse 1, or 2 (loopback only) when either end is a loopback address,
and timestamps in use.

So every outbound bucket (local addr, remote addr, remote port) of a namespace has the
same capacity: the range, minus reserved ports, minus ports held by listeners. The ports
themselves are shared between buckets: one local port can serve many destinations.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from exporter.buckets import BucketKey, BucketOptions, BucketTally

OTHER = "other"


@dataclass(frozen=True, slots=True)
class PortPolicy:
    port_range: tuple[int, int]
    reserved: tuple[tuple[int, int], ...]
    tw_reuse: int
    timestamps: int


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


def is_loopback(v6: bool, address: int) -> bool:
    if v6:
        return address == 1
    return address >> 24 == 127


def timewait_reusable(policy: PortPolicy, key: BucketKey) -> bool:
    """Whether connect() may take over this bucket's TIME-WAIT quadruplets
    (tcp_twsk_unique, net/ipv4/tcp_ipv4.c)."""
    if not policy.timestamps:
        return False
    if policy.tw_reuse == 1:
        return True
    v6, local, _, remote = key
    return policy.tw_reuse == 2 and (is_loopback(v6, local) or is_loopback(v6, remote))


def _address(v6: bool, value: int, prefix: int | None = None) -> str:
    address = ipaddress.IPv6Address(value) if v6 else ipaddress.IPv4Address(value)
    full = 128 if v6 else 32
    if prefix is not None and prefix < full:
        return f"{address}/{prefix}"
    return str(address)


def _top(
    table: dict[BucketKey, list[int]], options: BucketOptions
) -> tuple[list[tuple[BucketKey, list[int]]], list[list[int]]]:
    ranked = sorted(table.items(), key=lambda item: (-item[1][0], item[0]))
    kept = [item for item in ranked[: options.top] if item[1][0] >= options.min_sockets]
    folded = [counts for _, counts in ranked[len(kept) :]]
    return kept, folded


def summarize(tally: BucketTally, policy: PortPolicy, options: BucketOptions) -> PortUsage:
    capacity = outbound_capacity(policy, tally.listen_port)
    max_ratio = 0.0
    for key, (sockets, timewait) in tally.counts.outbound.items():
        used = sockets - (timewait if timewait_reusable(policy, key) else 0)
        ratio = used / capacity if capacity else float("inf") if used else 0.0
        max_ratio = max(max_ratio, ratio)

    def prefix(v6: bool) -> int:
        return options.ipv6_prefix if v6 else options.ipv4_prefix

    kept, folded = _top(tally.counts.outbound, options)
    outbound = tuple(
        OutboundRow(
            _address(v6, local), _address(v6, remote, prefix(v6)), str(port), n, tw, capacity
        )
        for (v6, local, port, remote), (n, tw) in kept
    )
    kept_in, folded_in = _top(tally.counts.inbound, options)
    inbound = tuple(
        InboundRow(_address(v6, local), str(port), _address(v6, remote, prefix(v6)), n, tw)
        for (v6, local, port, remote), (n, tw) in kept_in
    )
    return PortUsage(
        capacity=capacity,
        ephemeral_in_use=int(tally.port_used.sum()),
        ephemeral_available=ephemeral_available(policy),
        max_ratio=max_ratio,
        outbound=outbound,
        inbound=inbound,
        outbound_rest=Folded(
            len(folded),
            sum(c[0] for c in folded),
            sum(c[1] for c in folded),
            capacity * len(folded),
        ),
        inbound_rest=Folded(
            len(folded_in), sum(c[0] for c in folded_in), sum(c[1] for c in folded_in)
        ),
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
