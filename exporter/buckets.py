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
        self._locals: npt.NDArray[np.uint32] = np.zeros(0, dtype=np.uint32)
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
        v4, local4, remote4 = _canonical(batch)
        outbound = in_range.copy()
        suspects = np.flatnonzero(in_range & self.listen_port[sport])
        for row in suspects.tolist():  # rare: a connection to a listener on an in-range port
            port = int(sport[row])
            owner = (not v4[row], _address(bool(v4[row]), local4[row], batch.src[row]), port)
            if port in self.wildcard_ports or owner in self.listen_addr_ports:
                outbound[row] = False
        inbound = ~outbound
        if self._inbound_port_ok is not None:
            inbound &= self._inbound_port_ok[sport]
        tw = batch.state == TCP_TIME_WAIT
        all_v4 = bool(v4.all())
        for is_out, table, direction in (
            (True, self.counts.outbound, outbound),
            (False, self.counts.inbound, inbound),
        ):
            ports = batch.dport if is_out else sport
            mask = direction if all_v4 else direction & v4
            if mask.any():
                self._count_v4(table, local4[mask], remote4[mask], ports[mask], tw[mask])
            if not all_v4:
                mask = direction & ~v4
                if mask.any():
                    self._count_v6(table, batch.src[mask], batch.dst[mask], ports[mask], tw[mask])

    def _add_listeners(self, listeners: Batch) -> None:
        v4, local4, _ = _canonical(listeners, listeners_only=True)
        for row, port in enumerate(listeners.sport.tolist()):
            self.listen_port[port] = True
            if self.low <= port <= self.high:
                self.port_used[port] = True
            address = _address(bool(v4[row]), local4[row], listeners.src[row])
            if address == 0:
                self.wildcard_ports.add(port)
            else:
                self.listen_addr_ports.add((not v4[row], address, port))

    def _count_v4(
        self,
        table: dict[BucketKey, list[int]],
        local_word: npt.NDArray[np.uint32],
        remote_word: npt.NDArray[np.uint32],
        port: npt.NDArray[np.uint16],
        tw: npt.NDArray[np.bool_],
    ) -> None:
        local32 = local_word.byteswap()  # network order → numeric address
        remote32 = remote_word.byteswap().astype(_U64) & self._v4_mask
        index = self._local_index(local32)
        # 14 bits of local-address index, 32 of remote address, 16 of port, 1 of
        # TIME-WAIT: 63 bits.
        key = (
            (index.astype(_U64) << _U64(49))
            | (remote32 << _U64(17))
            | (port.astype(_U64) << _U64(1))
            | tw.astype(_U64)
        )
        keys, counts = np.unique(key, return_counts=True)
        local_values = self._locals.tolist()
        add = self.counts.add
        for packed, count in zip(keys.tolist(), counts.tolist(), strict=True):
            bucket = (
                False,
                local_values[packed >> 49],
                (packed >> 1) & 0xFFFF,
                (packed >> 17) & 0xFFFFFFFF,
            )
            add(table, bucket, count, bool(packed & 1))

    def _local_index(self, local32: npt.NDArray[np.uint32]) -> npt.NDArray[np.intp]:
        """Index of each local address in the sorted set of those seen so far. A namespace
        has few local addresses, so a binary search in a tiny array beats sorting the
        batch; an address not seen before (rare) rebuilds the set."""
        index = np.searchsorted(self._locals, local32)
        clipped = np.minimum(index, self._locals.size - 1)
        if self._locals.size == 0 or not bool(np.all(self._locals[clipped] == local32)):
            self._locals = np.union1d(self._locals, local32)
            if self._locals.size >= 1 << 14:
                raise ValueError("more than 16,383 local addresses in one namespace")
            index = np.searchsorted(self._locals, local32)
        return index

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
    """(is IPv4, local IPv4 word, remote IPv4 word): the address word of AF_INET sockets
    (word 0) and of IPv4-mapped AF_INET6 ones (::ffff:a.b.c.d, word 3) alike, so both land
    in the same buckets. The words of other IPv6 rows are meaningless."""
    v4_family = batch.family == socket.AF_INET
    src, dst = batch.src, batch.dst
    if bool(v4_family.all()):
        return v4_family, src[:, 0], dst[:, 0]
    mapped = _is_mapped(src)
    if not listeners_only:
        mapped &= _is_mapped(dst)
    v4 = v4_family | mapped
    return v4, np.where(v4_family, src[:, 0], src[:, 3]), np.where(v4_family, dst[:, 0], dst[:, 3])


def _is_mapped(words: npt.NDArray[np.uint32]) -> npt.NDArray[np.bool_]:
    mapped: npt.NDArray[np.bool_] = (
        (words[:, 0] == 0) & (words[:, 1] == 0) & (words[:, 2] == _MAPPED_WORD)
    )
    return mapped


def _address(v4: bool, word: np.uint32, words: npt.NDArray[np.uint32]) -> int:
    """The numeric address of one socket: its IPv4 word, or its four IPv6 words."""
    if v4:
        return int.from_bytes(np.asarray(word, dtype="<u4").tobytes(), "big")
    return int.from_bytes(words.astype("<u4").tobytes(), "big")
