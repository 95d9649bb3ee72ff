"""Quadruplet buckets, counted in the same pass as the state counts.

A socket's quadruplet is (local addr, local port, remote addr, remote port). One end's port
is the ephemeral one; the rest is the bucket:

  outbound (we connected): the local port lies in ip_local_port_range and no LISTEN socket
      owns that port on the same or a wildcard address → bucket (local addr, remote addr,
      remote port);
  inbound (a peer connected to us): every other socket → bucket (local addr, local port,
      remote addr).

IPv4-mapped IPv6 sockets (::ffff:a.b.c.d) count as IPv4: they share its port space.

Addresses arrive as the kernel's four 32-bit words. Per batch, IPv4 keys are packed into
63-bit integers (local address as an index into the
batch's few distinct local addresses) and counted with one np.unique; IPv6 keys are counted
as 35-byte strings. Only distinct buckets reach Python.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from exporter.sources.inet_diag import TCP_LISTEN, TCP_TIME_WAIT, Batch

# Bucket key: (is_ipv6, local addr as int, port, remote addr as int); the port is the
# remote one for outbound buckets, the local one for inbound buckets.
BucketKey = tuple[bool, int, int, int]
_MAPPED_WORD = np.frombuffer(b"\0\0\xff\xff", dtype="<u4")[0]  # ::ffff:0:0/96, word 2
_U64 = np.uint64


@dataclass(frozen=True, slots=True)
class BucketOptions:
    top: int = 20
    min_sockets: int = 1
    ipv4_prefix: int = 32
    ipv6_prefix: int = 128
    inbound_ports: frozenset[int] | None = None  # None: every local port


@dataclass
class BucketCounts:
    """Mutable accumulator: bucket → [sockets, TIME-WAIT sockets]."""

    outbound: dict[BucketKey, list[int]] = field(default_factory=dict)
    inbound: dict[BucketKey, list[int]] = field(default_factory=dict)

    def add(self, table: dict[BucketKey, list[int]], key: BucketKey, count: int, tw: bool) -> None:
        entry = table.get(key)
        if entry is None:
            entry = table[key] = [0, 0]
        entry[0] += count
        if tw:
            entry[1] += count


class BucketTally:
    """Consumes sock_diag batches. Listener batches must come first (the dump order)."""

    def __init__(self, port_range: tuple[int, int], options: BucketOptions) -> None:
        self.low, self.high = port_range
        self.options = options
        self.counts = BucketCounts()
        self.port_used = np.zeros(65536, dtype=bool)  # local ports in range, any socket
        self.listen_port = np.zeros(65536, dtype=bool)
        self.wildcard_ports: set[int] = set()
        self.listen_addr_ports: set[tuple[bool, int, int]] = set()
        self._v4_mask = _U64((0xFFFFFFFF << (32 - options.ipv4_prefix)) & 0xFFFFFFFF)
        v6_bits = np.zeros(128, dtype=np.uint8)
        v6_bits[: options.ipv6_prefix] = 1
        self._v6_mask = np.packbits(v6_bits).view("<u4")  # as the kernel's four words
        if options.inbound_ports is not None:
            self._inbound_port_ok: npt.NDArray[np.bool_] | None = np.zeros(65536, dtype=bool)
            self._inbound_port_ok[list(options.inbound_ports)] = True
        else:
            self._inbound_port_ok = None

    # -- per batch ----------------------------------------------------------------------

    def add(self, batch: Batch) -> None:
        listening = batch.state == TCP_LISTEN
        if listening.any():
            self._add_listeners(_select(batch, listening))
            if listening.all():
                return
            batch = _select(batch, ~listening)
        sport = batch.sport
        in_range = (sport >= self.low) & (sport <= self.high)
        self.port_used[sport[in_range]] = True
        v4, local, remote = _canonical(batch)
        outbound = in_range.copy()
        suspects = np.flatnonzero(in_range & self.listen_port[sport])
        for row in suspects.tolist():  # rare: a connection to a listener on an in-range port
            port = int(sport[row])
            owner = (not v4[row], _address_int(bool(v4[row]), local[row]), port)
            if port in self.wildcard_ports or owner in self.listen_addr_ports:
                outbound[row] = False
        inbound = ~outbound
        if self._inbound_port_ok is not None:
            inbound &= self._inbound_port_ok[sport]
        tw = batch.state == TCP_TIME_WAIT
        for is_out, table, direction in (
            (True, self.counts.outbound, outbound),
            (False, self.counts.inbound, inbound),
        ):
            for is_v4, family in ((True, v4), (False, ~v4)):
                mask = direction & family
                if not mask.any():
                    continue
                ports = batch.dport[mask] if is_out else sport[mask]
                if is_v4:
                    self._count_v4(table, local[mask, 3], remote[mask, 3], ports, tw[mask])
                else:
                    self._count_v6(table, local[mask], remote[mask], ports, tw[mask])

    def _add_listeners(self, listeners: Batch) -> None:
        v4, local, _ = _canonical(listeners, listeners_only=True)
        for row, port in enumerate(listeners.sport.tolist()):
            self.listen_port[port] = True
            if self.low <= port <= self.high:
                self.port_used[port] = True
            if not local[row].any():
                self.wildcard_ports.add(port)
            else:
                owner = (not v4[row], _address_int(bool(v4[row]), local[row]), port)
                self.listen_addr_ports.add(owner)

    def _count_v4(
        self,
        table: dict[BucketKey, list[int]],
        local_word: npt.NDArray[np.uint32],
        remote_word: npt.NDArray[np.uint32],
        port: npt.NDArray[np.uint16],
        tw: npt.NDArray[np.bool_],
    ) -> None:
        local32 = local_word.byteswap().astype(_U64)  # network order → numeric address
        remote32 = remote_word.byteswap().astype(_U64) & self._v4_mask
        addresses, index = np.unique(local32, return_inverse=True)
        # 14 bits of local-address index (a 1 MiB batch holds < 12,000 records), 32 of
        # remote address, 16 of port, 1 of TIME-WAIT: 63 bits.
        key = (
            (index.astype(_U64) << _U64(49))
            | (remote32 << _U64(17))
            | (port.astype(_U64) << _U64(1))
            | tw.astype(_U64)
        )
        keys, counts = np.unique(key, return_counts=True)
        local_values = addresses.tolist()
        add = self.counts.add
        for packed, count in zip(keys.tolist(), counts.tolist(), strict=True):
            bucket = (
                False,
                local_values[packed >> 49],
                (packed >> 1) & 0xFFFF,
                (packed >> 17) & 0xFFFFFFFF,
            )
            add(table, bucket, count, bool(packed & 1))

    def _count_v6(
        self,
        table: dict[BucketKey, list[int]],
        local: npt.NDArray[np.uint32],
        remote: npt.NDArray[np.uint32],
        port: npt.NDArray[np.uint16],
        tw: npt.NDArray[np.bool_],
    ) -> None:
        rows = np.empty((local.shape[0], 35), dtype=np.uint8)
        rows[:, :16] = local.astype("<u4").view(np.uint8)
        rows[:, 16:32] = (remote & self._v6_mask).astype("<u4").view(np.uint8)
        rows[:, 32] = port >> 8
        rows[:, 33] = port & 0xFF
        rows[:, 34] = tw
        keys, counts = np.unique(rows.view("V35").ravel(), return_counts=True)
        add = self.counts.add
        for raw, count in zip(keys.tolist(), counts.tolist(), strict=True):
            key = bytes(raw)
            bucket = (
                True,
                int.from_bytes(key[:16], "big"),
                int.from_bytes(key[32:34], "big"),
                int.from_bytes(key[16:32], "big"),
            )
            add(table, bucket, count, bool(key[34]))


def _select(batch: Batch, mask: npt.NDArray[np.bool_]) -> Batch:
    return Batch(
        family=batch.family[mask],
        state=batch.state[mask],
        sport=batch.sport[mask],
        dport=batch.dport[mask],
        src=batch.src[mask],
        dst=batch.dst[mask],
    )


def _canonical(
    batch: Batch, listeners_only: bool = False
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
    """(is IPv4, local, remote) with an IPv4 address in word 3 and words 0-2 zero, so
    that AF_INET and IPv4-mapped AF_INET6 (::ffff:a.b.c.d) sockets look alike."""
    v4_family = batch.family == socket.AF_INET
    local, remote = batch.src, batch.dst
    mapped = ~v4_family & _is_mapped(local)
    if not listeners_only:
        mapped &= _is_mapped(remote)
    v4 = v4_family | mapped
    if v4_family.any():
        local = local.copy()
        remote = remote.copy()
        local[v4_family, 3] = local[v4_family, 0]
        remote[v4_family, 3] = remote[v4_family, 0]
        local[v4, :3] = 0
        remote[v4, :3] = 0
    elif mapped.any():
        local = local.copy()
        remote = remote.copy()
        local[mapped, :3] = 0
        remote[mapped, :3] = 0
    return v4, local, remote


def _is_mapped(words: npt.NDArray[np.uint32]) -> npt.NDArray[np.bool_]:
    mapped: npt.NDArray[np.bool_] = (
        (words[:, 0] == 0) & (words[:, 1] == 0) & (words[:, 2] == _MAPPED_WORD)
    )
    return mapped


def _address_int(v4: bool, words: npt.NDArray[np.uint32]) -> int:
    raw = words.astype("<u4").tobytes()
    return int.from_bytes(raw[12:16] if v4 else raw, "big")
