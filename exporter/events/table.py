"""Exact connection counts per bucket from the kernel's socket-destroy events.

- One listener per polled namespace, opened inside it with its other descriptors
  (exporter/netns/context.py) and closed with them.
- One reader thread for every namespace: epoll over the listeners, recvmmsg(2) until
  EAGAIN into fixed 2 KiB slots, decoded as one batch with the dump's numpy decoder
  (inet_diag.decode_at), never on the event loop.
- Each destroyed socket is classified with the poll's rule (buckets.Classifier, from the
  namespace's last successful sockdiag read: its listeners and port range).

What counts as one connection closed: a destroyed full TCP socket whose remote port is
not 0. Both ends of a connection count (a loopback connection gives one outbound and one
inbound event). Listeners and sockets that never connected have no remote port; neither
has a socket whose connect() failed, nor one closed with SO_LINGER 0 (the kernel's
tcp_disconnect clears inet_dport before the socket is destroyed), so a client that
aborts its connections with RST is not counted on its side (it holds no TIME-WAIT either;
the server's end still counts). TIME-WAIT and SYN-RECV minisockets are no full sockets
and send nothing: a connection is counted once per end, when that end's socket is freed.

Counters under bounded cardinality: ranking.py. The listener and lost events: socket.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import structlog

from exporter.events import failures
from exporter.events.ranking import Direction, TopK
from exporter.events.reader import Reader
from exporter.events.socket import OFFSETS, SLOT, EventListener
from exporter.sources.declare import FULL, DetailView
from exporter.sources.sockdiag.buckets import BucketOptions, Classifier
from exporter.sources.sockdiag.capacity import OTHER
from exporter.sources.sockdiag.codec import MIN_RECORD, SOCK_DIAG_BY_FAMILY, Batch, decode_at
from exporter.sources.sockdiag.keys import (
    as_keys,
    canonical,
    event_keys,
    is_mapped,
    key_labels,
    prefix_mask,
    select,
)

log = structlog.get_logger("timewait_exporter.events")


@dataclass
class NamespaceEvents:
    """One namespace's listener and totals (guarded by EventTable.lock)."""

    key: int | None
    label: str
    listener: EventListener
    classifier: Classifier
    outbound: Direction = field(default_factory=lambda: Direction(True))
    inbound: Direction = field(default_factory=lambda: Direction(False))
    failures: Direction = field(default_factory=lambda: Direction(True))  # per remote addr
    lost: int = 0
    overruns: int = 0  # ENOBUFS seen
    counted: int = 0  # connections counted (both directions)
    lost_shown: bool = False  # compact detail: its lost counter is exposed
    closed: bool = False
    failed: str = ""

    def read_drops(self) -> None:
        drops = self.listener.drops()
        self.lost = max(self.lost, self.overruns if drops is None else drops)


@dataclass(frozen=True, slots=True)
class EventRow:
    netns: str
    local_addr: str
    # outbound: (remote_addr, remote_port); inbound: (local_port, remote_addr)
    port_or_remote: tuple[str, str]
    value: int


@dataclass(frozen=True, slots=True)
class OutboundTotals:
    """One namespace's connections closed per outbound bucket since its listener was
    opened, every bucket, whatever the top K (`EventTable.outbound_totals`, for
    `report`)."""

    netns: str
    listener: int  # the listener's inode: another one means the counting started over
    closed: dict[tuple[str, str, str], int]  # (local_addr, remote_addr, remote_port) → closes
    uncounted: int  # closes in no bucket's total (beyond MAX_BUCKETS, or forgotten idle)


@dataclass(frozen=True, slots=True)
class FailureTotals:
    """One namespace's connect() failures per destination address since its listener was
    opened, every destination, whatever the top K (`EventTable.failure_totals`, for
    `report`)."""

    netns: str
    listener: int  # the listener's inode: another one means the counting started over
    failed: dict[str, int]  # remote_addr → failures (error eaddrnotavail)
    uncounted: int  # failures in no destination's total (beyond MAX_BUCKETS, or forgotten idle)


@dataclass(frozen=True, slots=True)
class FailureRow:
    netns: str
    remote_addr: str
    error: str
    value: int


@dataclass(frozen=True, slots=True)
class EventsSnapshot:
    outbound: tuple[EventRow, ...]  # node-wide top K, then one `other` row per namespace
    inbound: tuple[EventRow, ...]
    lost: tuple[tuple[str, int], ...]  # (netns, lost)
    up: tuple[tuple[str, int], ...]  # (netns, 1 listening / 0 unavailable)
    # (netns, connections counted both directions): for `report`.
    counted: tuple[tuple[str, int], ...] = ()
    # connect() failures per destination address: node-wide top K, then each namespace's
    # other once it has any (failures.py).
    failures: tuple[FailureRow, ...] = ()


class EventTable:
    """Every namespace's listener and totals; the Reader thread counts into it."""

    def __init__(self, options: BucketOptions, top: int | None = None) -> None:
        self.options = options
        self.lock = threading.Lock()
        self._namespaces: dict[int | None, NamespaceEvents] = {}
        self._unavailable: dict[int | None, tuple[str, str]] = {}  # key → (label, reason)
        self._mask4 = prefix_mask(options.ipv4_prefix, 4)
        self._mask6 = prefix_mask(options.ipv6_prefix, 16)
        top = options.top if top is None else top
        self._top = {True: TopK(top), False: TopK(top)}  # per direction (outbound?)
        self._failures = TopK(top)
        self._reader = Reader(self)

    # -- from the poller -----------------------------------------------------------------

    def update(
        self,
        key: int | None,
        label: str,
        listener: EventListener | None,
        error: str,
        classifier: Classifier | None,
    ) -> None:
        """After a namespace's poll: its label and classifier; registers its listener
        with the reader the first time a classifier is known (events queue in the
        socket's buffer until then)."""
        if listener is None:
            with self.lock:
                self._unavailable[key] = (label, error)
            return
        with self.lock:
            self._unavailable.pop(key, None)
            ns = self._namespaces.get(key)
            if ns is not None and ns.listener is not listener:  # a fresh context: start over
                self._forget_locked(key)
                ns = None
            if ns is None:
                if classifier is None:
                    return
                ns = NamespaceEvents(key, label, listener, classifier)
                self._namespaces[key] = ns
                self._reader.register(ns)
                log.debug("events listener registered", netns=label, rcvbuf=listener.socket.rcvbuf)
            ns.label = label
            if classifier is not None:
                ns.classifier = classifier
            ns.read_drops()
        self._reader.start()

    def forget(self, key: int | None) -> None:
        """Before the namespace's descriptors close: the reader never touches its
        listener again once this returns."""
        with self.lock:
            self._unavailable.pop(key, None)
            self._forget_locked(key)

    def _forget_locked(self, key: int | None) -> None:
        ns = self._namespaces.pop(key, None)
        if ns is None:
            return
        ns.closed = True
        self._top[True].forget(ns.outbound)
        self._top[False].forget(ns.inbound)
        self._failures.forget(ns.failures)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._reader.unregister(ns)

    def fail(self, ns: NamespaceEvents, exc: Exception) -> None:
        """The reader could not read a listener (lock held): forget that namespace."""
        ns.failed = f"{type(exc).__name__}: {exc}"
        log.error("events listener failed", netns=ns.label, error=ns.failed)
        self._forget_locked(ns.key)

    def close(self) -> None:
        self._reader.stop()
        with self.lock:
            for key in list(self._namespaces):
                self._forget_locked(key)
        self._reader.close()

    # -- counting (the reader, lock held) ------------------------------------------------

    def count(self, ns: NamespaceEvents, buf: memoryview, lengths: np.ndarray, n: int) -> None:
        """Count one received batch of n messages in SLOT-sized slots of `buf`."""
        offsets = OFFSETS[:n]
        words = np.frombuffer(buf, dtype=np.uint32, count=n * SLOT // 4)
        nl_len = words[offsets >> 2]
        nl_type = words[(offsets >> 2) + 1] & 0xFFFF
        good = (lengths >= MIN_RECORD) & (nl_len >= MIN_RECORD) & (nl_len <= lengths)
        good &= nl_type == SOCK_DIAG_BY_FAMILY
        starts = offsets[good]
        batch = decode_at(buf, n * SLOT, starts)
        self._count_failures(ns, buf, batch, starts, nl_len[good])
        connected = batch.dport != 0
        if not connected.any():
            return
        if not connected.all():
            batch = select(batch, connected)
        v4, local4, remote4 = canonical(batch)
        outbound = ns.classifier.outbound(batch, v4, local4)
        port = np.where(outbound, batch.dport, batch.sport)
        rows = event_keys(batch, v4, local4, remote4, port, self._mask4, self._mask6)
        now = time.monotonic()
        ns.counted += len(batch)
        for direction, mask in ((ns.outbound, outbound), (ns.inbound, ~outbound)):
            if mask.any():
                keys, counts = np.unique(as_keys(rows[mask]), return_counts=True)
                self._top[direction.outbound].add(direction, keys.tolist(), counts.tolist(), now)

    def _count_failures(
        self,
        ns: NamespaceEvents,
        buf: memoryview,
        batch: Batch,
        starts: npt.NDArray[np.int64],
        lengths: npt.NDArray[np.uint32],
    ) -> None:
        """connect()s that failed with EADDRNOTAVAIL, per destination address."""
        maybe = failures.candidates(batch)
        if not maybe.any():
            return
        rows = np.flatnonzero(maybe)
        failed = rows[failures.failed_before_syn(buf, starts[rows], lengths[rows])]
        if not failed.size:
            return
        picked = select(batch, np.isin(np.arange(len(batch)), failed))
        # The destination decides the family: an IPv4-mapped one is IPv4 (its local
        # address is :: when the socket was not bound).
        v4 = (picked.family == socket.AF_INET) | is_mapped(picked.dst)
        remote4 = np.where(picked.family == socket.AF_INET, picked.dst[:, 0], picked.dst[:, 3])
        no_port = np.zeros(len(picked), dtype=np.uint16)
        keys = event_keys(picked, v4, None, remote4, no_port, self._mask4, self._mask6)
        unique, counts = np.unique(as_keys(keys), return_counts=True)
        self._failures.add(ns.failures, unique.tolist(), counts.tolist(), time.monotonic())

    # -- the snapshot --------------------------------------------------------------------

    def snapshot(self, detail: DetailView = FULL) -> EventsSnapshot:
        """The node-wide top K of each direction by recent rate, then each namespace's
        other (ranking.TopK.rank), atomically with the counting. With compact detail, a
        quiet namespace's other is folded, its lost events shown once there are any
        (first at 0, so that increase() counts them), and its listener's state only
        when it is down."""
        with self.lock:
            now = time.monotonic()
            namespaces = sorted(self._namespaces.values(), key=lambda ns: ns.label)
            failing = [(ns.label, ns.failures) for ns in namespaces]
            rows: list[tuple[EventRow, ...]] = []
            for outbound in (True, False):
                top = self._top[outbound]
                directions = [
                    (ns.label, ns.outbound if outbound else ns.inbound) for ns in namespaces
                ]
                for _, direction in directions:
                    top.evict_idle(direction, now)
                out: list[EventRow] = []
                for row in top.rank(directions, now, detail):
                    if row.key is None:
                        out.append(EventRow(row.label, OTHER, (OTHER, OTHER), row.value))
                        continue
                    local, second, third = self._labels(row.key, outbound)
                    out.append(EventRow(row.label, local, (second, third), row.value))
                rows.append(tuple(out))
            for _, direction in failing:
                self._failures.evict_idle(direction, now)
            failed: list[FailureRow] = []
            for row in self._failures.rank(failing, now, sparse_other=True):
                remote = OTHER if row.key is None else self._labels(row.key, True)[1]
                failed.append(FailureRow(row.label, remote, failures.EADDRNOTAVAIL, row.value))
            up = [(ns.label, 1) for ns in namespaces if detail.shows(ns.label)]
            up += [(label, 0) for label, _ in self._unavailable.values()]
            lost: list[tuple[str, int]] = []
            for ns in namespaces:
                if ns.lost_shown or detail.shows(ns.label):
                    lost.append((ns.label, ns.lost))
                    ns.lost_shown = ns.lost_shown or ns.lost > 0  # a counter stays
                elif ns.lost:
                    lost.append((ns.label, 0))  # first at 0: increase() counts the loss
                    ns.lost_shown = True
            return EventsSnapshot(
                outbound=rows[0],
                inbound=rows[1],
                lost=tuple(lost),
                up=tuple(sorted(up)),
                counted=tuple((ns.label, ns.counted) for ns in namespaces),
                failures=tuple(failed),
            )

    def _labels(self, key: bytes, outbound: bool) -> tuple[str, str, str]:
        return key_labels(key, outbound, self.options.ipv4_prefix, self.options.ipv6_prefix)

    def outbound_totals(self) -> dict[str, OutboundTotals]:
        """Read-only, per namespace label with a listener: every outbound bucket's total
        (unlike `snapshot`, neither ranks nor evicts anything)."""
        with self.lock:
            return {
                ns.label: OutboundTotals(
                    ns.label,
                    ns.listener.socket.inode,
                    {
                        self._labels(raw, True): bucket.total
                        for raw, bucket in ns.outbound.buckets.items()
                    },
                    ns.outbound.uncounted,
                )
                for ns in self._namespaces.values()
            }

    def failure_totals(self) -> dict[str, FailureTotals]:
        """Read-only, per namespace label with a listener: every destination's connect()
        failures so far (unlike `snapshot`, neither ranks nor evicts anything)."""
        with self.lock:
            return {
                ns.label: FailureTotals(
                    ns.label,
                    ns.listener.socket.inode,
                    {
                        self._labels(raw, True)[1]: bucket.total
                        for raw, bucket in ns.failures.buckets.items()
                    },
                    ns.failures.uncounted,
                )
                for ns in self._namespaces.values()
            }

    def counted(self) -> int:
        """Read-only: connections counted so far in every namespace (both ends)."""
        with self.lock:
            return sum(ns.counted for ns in self._namespaces.values())

    def unavailable(self) -> dict[str, str]:
        """Read-only: namespace label → why it has no listener (as the poll last saw)."""
        with self.lock:
            return dict(self._unavailable.values())
