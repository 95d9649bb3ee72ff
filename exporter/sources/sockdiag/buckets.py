"""Quadruplet buckets, counted in the same pass as the state counts, without a Python
object per socket or per bucket.

A socket's quadruplet is (local addr, local port, remote addr, remote port). One end's port
is the ephemeral one; the rest is the bucket:

  outbound (we connected): the local port lies in ip_local_port_range and no LISTEN socket
      owns that port on the same or a wildcard address → bucket (local addr, remote addr,
      remote port);
  inbound (a peer connected to us): every other socket → bucket (local addr, local port,
      remote addr).

IPv4-mapped IPv6 sockets (::ffff:a.b.c.d) count as IPv4: they share its port space.

Per batch, each direction's keys are packed and reduced with one np.unique into a sorted
run of (key, count): IPv4 keys are 64-bit integers (local address as an index into the
namespace's local addresses, remote address, port, TIME-WAIT bit); IPv6 keys are 35-byte
strings. The runs are merged as they arrive (SortedRuns), so memory is bounded by one
batch's records plus the distinct buckets, whatever their number.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from exporter.sources.sockdiag.codec import TCP_LISTEN, TCP_TIME_WAIT, Batch
from exporter.sources.sockdiag.keys import (
    KEY,
    as_keys,
    canonical,
    key_rows,
    prefix_mask,
    put_port,
    put_v6,
    select,
)

_U64 = np.uint64
# IPv4 key: local-address index (15 bits), remote address (32), port (16), TIME-WAIT (1).
# The port is the remote one for outbound buckets, the local one for inbound buckets.
_INDEX_SHIFT, _REMOTE_SHIFT, _PORT_SHIFT = 49, 17, 1
INDEX_LIMIT = 1 << 15
V6_KEY = KEY  # keys.py's layout, the flag byte the TIME-WAIT bit
_CHUNK = 1 << 16  # keys decoded at a time into bucket arrays


@dataclass(frozen=True, slots=True)
class BucketOptions:
    top: int = 20
    min_sockets: int = 1
    ipv4_prefix: int = 32
    ipv6_prefix: int = 128
    inbound_ports: frozenset[int] | None = None  # None: every local port


@dataclass(frozen=True, slots=True)
class Buckets:
    """Every distinct bucket of one direction, as parallel arrays: the IPv4 buckets first
    (addresses as host-order integers), then the IPv6 ones (four big-endian 32-bit words
    each, the first the highest), each part sorted by key. Remote addresses are masked by
    the prefix options."""

    local4: npt.NDArray[np.uint32]
    remote4: npt.NDArray[np.uint32]
    local6: npt.NDArray[np.uint32]  # shape (n6, 4)
    remote6: npt.NDArray[np.uint32]
    port: npt.NDArray[np.uint16]  # these three for all n buckets, IPv4 ones first
    sockets: npt.NDArray[np.int32]
    timewait: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return int(self.sockets.shape[0])

    def is_v6(self, i: int) -> bool:
        return bool(i >= self.local4.shape[0])

    def address(self, i: int, remote: bool) -> int:
        n4 = self.local4.shape[0]
        if i < n4:
            return int((self.remote4 if remote else self.local4)[i])
        words = (self.remote6 if remote else self.local6)[i - n4]
        return int.from_bytes(words.astype(">u4").tobytes(), "big")

    def loopback(self, remote: bool) -> npt.NDArray[np.bool_]:
        """127.0.0.0/8 or ::1 (ipv4_is_loopback, ipv6_addr_loopback) per bucket."""
        four = (self.remote4 if remote else self.local4) >> 24 == 127
        words = self.remote6 if remote else self.local6
        six = np.all(words == np.array([0, 0, 0, 1], dtype=np.uint32), axis=1)
        loopback: npt.NDArray[np.bool_] = np.concatenate([four, six])
        return loopback


Run = tuple[npt.NDArray[Any], npt.NDArray[np.int32] | None]  # counts None: all 1


class SortedRuns:
    """Sorted runs of distinct keys (64-bit integers, or byte strings compared as such)
    with their counts, merged as they arrive in the
    manner of a binary counter (a run is merged into the one before it once it is at least
    half its size). The merging happens on the consumer's thread while the kernel fills the
    next skbs, so the last merge touches few runs. A run whose every count is 1 (every
    socket its own bucket) carries no count array: merging it is an in-place sort of two
    sorted runs (timsort merges them in linear time), at one key per bucket."""

    def __init__(self, dtype: npt.DTypeLike = np.uint64) -> None:
        self._dtype = dtype
        self._runs: list[Run] = []

    def __bool__(self) -> bool:
        return bool(self._runs)

    def add(self, keys: npt.NDArray[Any], counts: npt.NDArray[np.integer]) -> None:
        run_counts = None if int(counts.max(initial=1)) == 1 else counts.astype(np.int32)
        self._runs.append((keys, run_counts))
        while len(self._runs) >= 2 and 2 * self._runs[-1][0].size >= self._runs[-2][0].size:
            self._runs.append(_merge_last_two(self._runs))

    def take(self) -> Run:
        """Everything as one run; the runs are released."""
        while len(self._runs) >= 2:
            self._runs.append(_merge_last_two(self._runs))
        run = self._runs.pop() if self._runs else (np.zeros(0, dtype=self._dtype), None)
        return run

    def __iter__(self) -> Iterator[Run]:
        return iter(list(self._runs))

    def clear(self) -> None:
        self._runs.clear()


def _merge_last_two(runs: list[Run]) -> Run:
    """Pop the last two runs and merge them; the inputs are released as soon as they are
    copied, so a merge holds the merged run and little else."""
    second = runs.pop()
    first = runs.pop()
    keys = np.concatenate([first[0], second[0]])
    counts: npt.NDArray[np.int32] | None = None
    if first[1] is None and second[1] is None:
        del first, second
        keys.sort(kind="stable")
    else:
        counts = np.concatenate([_counts(first), _counts(second)])
        del first, second
        order = np.argsort(keys, kind="stable")
        keys, counts = keys[order], counts[order]
        del order
    repeated = keys[1:] == keys[:-1]
    if not repeated.any():
        return keys, counts
    starts = np.flatnonzero(np.concatenate([[True], ~repeated]))
    if counts is None:
        counts = np.diff(np.append(starts, keys.size)).astype(np.int32)
    else:
        counts = np.add.reduceat(counts, starts).astype(np.int32)
    return keys[starts], counts


def _counts(run: Run) -> npt.NDArray[np.int32]:
    return np.ones(run[0].size, dtype=np.int32) if run[1] is None else run[1]


@dataclass
class _Runs:
    """Sorted (key, count) runs of one direction, one per batch and family."""

    v4: SortedRuns = field(default_factory=SortedRuns)
    v6: SortedRuns = field(default_factory=lambda: SortedRuns(f"V{V6_KEY}"))
    # IPv4 keys of namespaces with more than INDEX_LIMIT local addresses: (local, rest).
    wide: SortedRuns = field(default_factory=lambda: SortedRuns("V12"))


@dataclass(frozen=True, slots=True)
class Classifier:
    """Which sockets are outbound: the local port lies in ip_local_port_range and no
    listener owns it on the same or a wildcard address. Everything else is inbound.

    A compact copy of a dump's listener set, kept between polls for the socket-destroy
    events (exporter/events/table.py): sorted port arrays, not BucketTally's 64 KiB per-port
    tables, so that hundreds of namespaces cost kilobytes."""

    low: int
    high: int
    listen_ports: npt.NDArray[np.uint16]  # sorted: ports some listener holds
    wildcard_ports: npt.NDArray[np.uint16]  # sorted: ports of listeners on 0.0.0.0 or ::
    listen_v4: npt.NDArray[np.uint64]  # addr << 16 | port of address-specific listeners
    listen_v6: npt.NDArray[np.void]  # addr (16 bytes), port (2)

    def outbound(
        self, batch: Batch, v4: npt.NDArray[np.bool_], local4: npt.NDArray[np.uint32]
    ) -> npt.NDArray[np.bool_]:
        sport = batch.sport
        in_range = (sport >= self.low) & (sport <= self.high)
        return classify_outbound(
            batch, v4, local4, in_range,
            np.isin(sport, self.wildcard_ports), np.isin(sport, self.listen_ports),
            self.listen_v4, self.listen_v6,
        )  # fmt: skip


def classify_outbound(
    batch: Batch,
    v4: npt.NDArray[np.bool_],
    local4: npt.NDArray[np.uint32],
    in_range: npt.NDArray[np.bool_],
    on_wildcard_port: npt.NDArray[np.bool_],
    on_listen_port: npt.NDArray[np.bool_],
    listen_v4: npt.NDArray[np.uint64],
    listen_v6: npt.NDArray[np.void],
) -> npt.NDArray[np.bool_]:
    """The rule, once: a socket in the port range is outbound unless a listener owns its
    port, on a wildcard address or on its own local address (then the port is the
    listener's, not an ephemeral one)."""
    outbound: npt.NDArray[np.bool_] = in_range & ~on_wildcard_port
    suspects = np.flatnonzero(outbound & on_listen_port)
    if suspects.size:
        outbound[suspects[_owned(batch, v4, local4, suspects, listen_v4, listen_v6)]] = False
    return outbound


def _owned(
    batch: Batch,
    v4: npt.NDArray[np.bool_],
    local4: npt.NDArray[np.uint32],
    rows: npt.NDArray[np.intp],
    listen_v4: npt.NDArray[np.uint64],
    listen_v6: npt.NDArray[np.void],
) -> npt.NDArray[np.bool_]:
    """Which of `rows` sit on a port a listener bound on the same local address."""
    owned = np.zeros(rows.size, dtype=bool)
    is4 = v4[rows]
    if is4.any():
        keys = _listen_key_v4(local4[rows[is4]], batch.sport[rows[is4]])
        owned[is4] = np.isin(keys, listen_v4)
    if not is4.all():
        six = rows[~is4]
        owned[~is4] = np.isin(_listen_key_v6(batch.src[six], batch.sport[six]), listen_v6)
    return owned


class BucketTally:
    """Consumes sock_diag batches. Listener batches must come first (the dump order)."""

    def __init__(self, port_range: tuple[int, int], options: BucketOptions) -> None:
        self.low, self.high = port_range
        self.options = options
        self.port_used = np.zeros(65536, dtype=bool)  # local ports in range, any socket
        self.listen_port = np.zeros(65536, dtype=bool)
        self.wildcard_port = np.zeros(65536, dtype=bool)  # a listener on 0.0.0.0 or ::
        self._listen_v4: npt.NDArray[np.uint64] = np.zeros(0, dtype=_U64)  # addr << 16 | port
        self._listen_v6: npt.NDArray[np.void] = np.zeros(0, dtype="V18")  # addr, port
        self.outbound = _Runs()
        self.inbound = _Runs()
        self.index_limit = INDEX_LIMIT
        # Local addresses in order of first sight (the key's index), and a sorted view.
        self._locals: npt.NDArray[np.uint32] = np.zeros(0, dtype=np.uint32)
        self._sorted_locals: npt.NDArray[np.uint32] = np.zeros(0, dtype=np.uint32)
        self._sorted_index: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self._v4_mask = _U64((0xFFFFFFFF << (32 - options.ipv4_prefix)) & 0xFFFFFFFF)
        self._v6_mask = prefix_mask(options.ipv6_prefix, 16)
        self._inbound_port_ok: npt.NDArray[np.bool_] | None = None
        if options.inbound_ports is not None:
            self._inbound_port_ok = np.zeros(65536, dtype=bool)
            self._inbound_port_ok[list(options.inbound_ports)] = True

    # -- per batch ----------------------------------------------------------------------

    def add(self, batch: Batch) -> None:
        listening = batch.state == TCP_LISTEN
        if listening.any():
            self._add_listeners(select(batch, listening))
            if listening.all():
                return
            batch = select(batch, ~listening)
        sport = batch.sport
        in_range = (sport >= self.low) & (sport <= self.high)
        self.port_used[sport[in_range]] = True
        v4, local4, remote4 = canonical(batch)
        # Per-port tables here: this runs for every batch of a dump.
        outbound = classify_outbound(
            batch, v4, local4, in_range,
            self.wildcard_port[sport], self.listen_port[sport],
            self._listen_v4, self._listen_v6,
        )  # fmt: skip
        inbound = ~outbound
        if self._inbound_port_ok is not None:
            inbound &= self._inbound_port_ok[sport]
        tw = batch.state == TCP_TIME_WAIT
        all_v4 = bool(v4.all())
        for runs, direction, ports in (
            (self.outbound, outbound, batch.dport),
            (self.inbound, inbound, sport),
        ):
            mask = direction if all_v4 else direction & v4
            if mask.any():
                self._count_v4(runs, local4[mask], remote4[mask], ports[mask], tw[mask])
            if not all_v4:
                mask = direction & ~v4
                if mask.any():
                    self._count_v6(runs, batch.src[mask], batch.dst[mask], ports[mask], tw[mask])

    def _add_listeners(self, listeners: Batch) -> None:
        v4, local4, _ = canonical(listeners, listeners_only=True)
        port = listeners.sport
        self.listen_port[port] = True
        in_range = (port >= self.low) & (port <= self.high)
        self.port_used[port[in_range]] = True
        wildcard = np.where(v4, local4 == 0, ~listeners.src.any(axis=1))
        self.wildcard_port[port[wildcard]] = True
        specific = ~wildcard
        keys4 = _listen_key_v4(local4[specific & v4], port[specific & v4])
        self._listen_v4 = np.union1d(self._listen_v4, keys4)
        keys6 = _listen_key_v6(listeners.src[specific & ~v4], port[specific & ~v4])
        self._listen_v6 = np.union1d(self._listen_v6, keys6)

    def classifier(self) -> Classifier:
        """The namespace's inbound/outbound rule as this dump established it (listeners
        are dumped first), for the socket-destroy events (exporter/events/table.py), which
        classify with the last poll's. listen_v4/v6 are shared: union1d replaces them,
        nothing writes them in place."""
        return Classifier(
            self.low, self.high,
            np.flatnonzero(self.listen_port).astype(np.uint16),
            np.flatnonzero(self.wildcard_port).astype(np.uint16),
            self._listen_v4, self._listen_v6,
        )  # fmt: skip

    def _count_v4(
        self,
        runs: _Runs,
        local_word: npt.NDArray[np.uint32],
        remote_word: npt.NDArray[np.uint32],
        port: npt.NDArray[np.uint16],
        tw: npt.NDArray[np.bool_],
    ) -> None:
        local32 = local_word.byteswap()  # network order → numeric address
        remote32 = remote_word.byteswap().astype(_U64) & self._v4_mask
        rest = (remote32 << _U64(_REMOTE_SHIFT)) | (port.astype(_U64) << _U64(_PORT_SHIFT))
        rest |= tw.astype(_U64)
        index = self._local_index(local32)
        if index is None:  # more local addresses than the index holds: a wider key
            self._widen()
            keys, counts = np.unique(_wide_keys(local32, rest), return_counts=True)
            runs.wide.add(keys, counts)
            return
        key = (index.astype(_U64) << _U64(_INDEX_SHIFT)) | rest
        keys, counts = np.unique(key, return_counts=True)
        runs.v4.add(keys, counts)

    def _widen(self) -> None:
        """Rewrite the runs made with indexed keys as wide keys, once, so that a bucket
        seen before and after the switch is still one bucket."""
        for runs in (self.outbound, self.inbound):
            for keys, counts in runs.v4:
                local = self._locals[(keys >> _U64(_INDEX_SHIFT)).astype(np.intp)]
                rest = keys & _U64((1 << _INDEX_SHIFT) - 1)
                wide = _wide_keys(local, rest)
                order = np.argsort(wide, kind="stable")
                runs.wide.add(wide[order], _counts((keys, counts))[order])
            runs.v4.clear()

    def _local_index(self, local32: npt.NDArray[np.uint32]) -> npt.NDArray[np.intp] | None:
        """Each address's index in the order addresses were first seen (indexes never
        change, so earlier runs stay valid). A namespace has few local addresses: a binary
        search in a tiny sorted array beats sorting the batch. None once there are more
        than INDEX_LIMIT."""
        known = self._sorted_locals
        pos = np.minimum(np.searchsorted(known, local32), max(known.size - 1, 0))
        if known.size == 0 or not bool(np.all(known[pos] == local32)):
            new = np.setdiff1d(local32, known)
            self._locals = np.concatenate([self._locals, new])
            order = np.argsort(self._locals, kind="stable")
            self._sorted_locals, self._sorted_index = self._locals[order], order
            known = self._sorted_locals
            pos = np.searchsorted(known, local32)
        if self._locals.size > self.index_limit:
            return None
        index: npt.NDArray[np.intp] = self._sorted_index[pos]
        return index

    def _count_v6(
        self,
        runs: _Runs,
        local: npt.NDArray[np.uint32],
        remote: npt.NDArray[np.uint32],
        port: npt.NDArray[np.uint16],
        tw: npt.NDArray[np.bool_],
    ) -> None:
        rows = key_rows(local.shape[0])
        put_v6(rows, slice(None), local, remote, self._v6_mask)
        put_port(rows, port)
        rows[:, 34] = tw
        keys, counts = np.unique(as_keys(rows), return_counts=True)
        runs.v6.add(keys, counts)

    # -- the result ---------------------------------------------------------------------

    def buckets(self, outbound: bool) -> Buckets:
        """Every distinct bucket of a direction: the runs merged, the TIME-WAIT bit folded."""
        runs = self.outbound if outbound else self.inbound
        four = self._v4_buckets(runs) if runs.v4 else _wide_buckets(runs.wide)
        six = _v6_buckets(runs.v6)
        if not len(six):
            return four
        if not len(four):
            return six
        return Buckets(
            local4=four.local4,
            remote4=four.remote4,
            local6=six.local6,
            remote6=six.remote6,
            port=np.concatenate([four.port, six.port]),
            sockets=np.concatenate([four.sockets, six.sockets]),
            timewait=np.concatenate([four.timewait, six.timewait]),
        )

    def _v4_buckets(self, runs: _Runs) -> Buckets:
        keys, counts = runs.v4.take()
        n = keys.size
        # The TIME-WAIT bit is the key's lowest: the first byte of each little-endian word.
        low = keys.view(np.uint8)[0::8] if sys.byteorder == "little" else keys & _U64(1)
        tw = (low & 1).astype(bool)
        counts32 = _counts((keys, counts))
        del counts
        timewait = np.where(tw, counts32, np.int32(0)).astype(np.int32)
        sockets = counts32
        # A bucket's two keys (not TIME-WAIT, TIME-WAIT) are adjacent and differ by 1; a
        # pair needs both kinds of key.
        if n > 1 and tw.any() and not tw.all():
            pair = np.zeros(n, dtype=bool)  # this key is the TIME-WAIT half of a pair
            pair[1:] = (np.diff(keys) == 1) & tw[1:]
            if pair.any():  # fold each pair into its first key
                first = np.flatnonzero(~pair)
                sockets = np.add.reduceat(counts32, first).astype(np.int32)
                timewait = np.add.reduceat(timewait, first).astype(np.int32)
                keys = keys[first]
            del pair
        del tw, low
        # Fields out of the keys a chunk at a time: no key-sized scratch array.
        n = keys.size
        local = np.empty(n, dtype=np.uint32)
        remote = np.empty(n, dtype=np.uint32)
        port = np.empty(n, dtype=np.uint16)
        for start in range(0, n, _CHUNK):
            part = keys[start : start + _CHUNK]
            end = start + part.size
            index = (part >> _U64(_INDEX_SHIFT)).astype(np.intp)
            local[start:end] = self._locals[index]
            remote[start:end] = part >> _U64(_REMOTE_SHIFT)  # the index bits are cut off
            port[start:end] = part >> _U64(_PORT_SHIFT)
        del keys
        return _ipv4(local, remote, port, sockets, timewait)


def _wide_keys(local: npt.NDArray[np.uint32], rest: npt.NDArray[np.uint64]) -> npt.NDArray[np.void]:
    """Big-endian (local address, rest of the key) as 12-byte strings: byte order is
    numeric order, and the TIME-WAIT bit is the last bit."""
    rows = np.empty(local.shape[0], dtype=[("local", ">u4"), ("rest", ">u8")])
    rows["local"], rows["rest"] = local, rest
    keys: npt.NDArray[np.void] = rows.view("V12")
    return keys


def _ipv4(
    local: npt.NDArray[np.uint32],
    remote: npt.NDArray[np.uint32],
    port: npt.NDArray[np.uint16],
    sockets: npt.NDArray[np.int32],
    timewait: npt.NDArray[np.int32],
) -> Buckets:
    none = np.zeros((0, 4), dtype=np.uint32)
    return Buckets(local, remote, none, none, port, sockets, timewait)


def _v6_buckets(runs: SortedRuns) -> Buckets:
    keys, run_counts = runs.take()
    counts = _counts((keys, run_counts))
    raw = keys.view(np.uint8).reshape(-1, V6_KEY)
    first, sockets, timewait = _fold_timewait(keys, counts, raw[:, 34], prefix=V6_KEY - 1)
    rows = raw[first]
    local = rows[:, :16].copy().view(">u4").astype(np.uint32)
    remote = rows[:, 16:32].copy().view(">u4").astype(np.uint32)
    port = ((rows[:, 32].astype(np.uint16) << 8) | rows[:, 33]).astype(np.uint16)
    none = np.zeros(0, dtype=np.uint32)
    return Buckets(none, none, local, remote, port, sockets, timewait)


def _wide_buckets(runs: SortedRuns) -> Buckets:
    keys, run_counts = runs.take()
    counts = _counts((keys, run_counts))
    raw = keys.view(np.uint8).reshape(-1, 12)
    rest = raw[:, 4:].copy().view(">u8").ravel().astype(np.uint64)
    # The TIME-WAIT bit is the key's last bit, not its last byte (which also holds the low
    # bits of the port): compare whole keys with that bit cleared.
    bucket_bytes = raw.copy()
    bucket_bytes[:, 11] &= 0xFE
    first, sockets, timewait = _fold_timewait(
        bucket_bytes.view("V12").ravel(), counts, rest & _U64(1), prefix=12
    )
    local = raw[first, :4].copy().view(">u4").ravel().astype(np.uint32)
    bucket = rest[first]
    remote = ((bucket >> _U64(_REMOTE_SHIFT)) & _U64(0xFFFFFFFF)).astype(np.uint32)
    port = ((bucket >> _U64(_PORT_SHIFT)) & _U64(0xFFFF)).astype(np.uint16)
    return _ipv4(local, remote, port, sockets, timewait)


def _fold_timewait(
    keys: npt.NDArray[np.generic],
    counts: npt.NDArray[np.integer],
    tw_bit: npt.NDArray[np.generic],
    prefix: int,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Byte-string keys are sorted and end in the TIME-WAIT bit, so a bucket's two keys
    (not TIME-WAIT, TIME-WAIT) are adjacent, alike in their first `prefix` bytes. Returns
    each bucket's first key's position, its sockets and its TIME-WAIT sockets."""
    n = counts.shape[0]
    counts32: npt.NDArray[np.int32] = counts.astype(np.int32, copy=False)
    if n == 0:
        empty = np.zeros(0, dtype=np.int32)
        return np.zeros(0, dtype=np.intp), empty, empty
    raw = keys.view(np.uint8).reshape(n, -1)[:, :prefix]
    same = np.all(raw[1:] == raw[:-1], axis=1)
    first = np.flatnonzero(np.concatenate([[True], ~same]))
    timewait_counts = np.where(np.asarray(tw_bit) != 0, counts32, 0).astype(np.int32)
    if first.size == n:  # no bucket has keys of both kinds: one key per bucket
        return first, counts32, timewait_counts
    sockets = np.add.reduceat(counts32, first).astype(np.int32)
    timewait = np.add.reduceat(timewait_counts, first).astype(np.int32)
    return first, sockets, timewait


def _listen_key_v4(
    address: npt.NDArray[np.uint32], port: npt.NDArray[np.uint16]
) -> npt.NDArray[np.uint64]:
    key: npt.NDArray[np.uint64] = (address.astype(_U64) << _U64(16)) | port.astype(_U64)
    return key


def _listen_key_v6(
    address: npt.NDArray[np.uint32], port: npt.NDArray[np.uint16]
) -> npt.NDArray[np.void]:
    rows = np.empty((address.shape[0], 18), dtype=np.uint8)
    rows[:, :16] = address.astype("<u4").view(np.uint8).reshape(-1, 16)
    rows[:, 16] = port >> 8
    rows[:, 17] = port & 0xFF
    keys: npt.NDArray[np.void] = rows.view("V18").ravel()
    return keys
