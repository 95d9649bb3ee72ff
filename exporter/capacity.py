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
class PortUsage:
    capacity: int  # per outbound bucket
    ephemeral_in_use: int
    ephemeral_available: int
    max_ratio: float  # over every outbound bucket, before folding
    outbound: tuple[OutboundRow, ...]  # top K, then one "other" row when any was folded
    inbound: tuple[InboundRow, ...]
    outbound_folded: int
    inbound_folded: int


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
    outbound = [
        OutboundRow(
            _address(v6, local), _address(v6, remote, prefix(v6)), str(port), n, tw, capacity
        )
        for (v6, local, port, remote), (n, tw) in kept
    ]
    if folded:
        outbound.append(
            OutboundRow(
                OTHER,
                OTHER,
                OTHER,
                sum(c[0] for c in folded),
                sum(c[1] for c in folded),
                capacity * len(folded),
            )
        )
    kept_in, folded_in = _top(tally.counts.inbound, options)
    inbound = [
        InboundRow(_address(v6, local), str(port), _address(v6, remote, prefix(v6)), n, tw)
        for (v6, local, port, remote), (n, tw) in kept_in
    ]
    if folded_in:
        inbound.append(
            InboundRow(
                OTHER, OTHER, OTHER, sum(c[0] for c in folded_in), sum(c[1] for c in folded_in)
            )
        )
    return PortUsage(
        capacity=capacity,
        ephemeral_in_use=int(tally.port_used.sum()),
        ephemeral_available=ephemeral_available(policy),
        max_ratio=max_ratio,
        outbound=tuple(outbound),
        inbound=tuple(inbound),
        outbound_folded=len(folded),
        inbound_folded=len(folded_in),
    )
