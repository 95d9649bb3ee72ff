"""Exact connection counts per bucket from the kernel's socket-destroy events.

sock_diag broadcasts every TCP socket's destruction to the multicast groups
SKNLGRP_INET_TCP_DESTROY and SKNLGRP_INET6_TCP_DESTROY (include/uapi/linux/sock_diag.h;
sock_diag_broadcast_destroy in net/core/sock_diag.c, the feed `ss -E` reads) of the
socket's own namespace, as one inet_diag_msg record per message (seq 0, port id 0). Any
user may join them (NL_CFG_F_NONROOT_RECV).

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

Counters under bounded cardinality (see `EventTable.snapshot`): every bucket's total is
kept, idle ones are forgotten after IDLE_EVICT seconds, at most MAX_BUCKETS per namespace
and direction (more are counted in `other` only). The node-wide top K by recent rate
(decayed with RATE_TAU) is exported; a bucket's series counts only the increments made
while it is in the top K, and each namespace's `other` series the increments of its
buckets while outside it; both only grow, so sum(increase()) over all series is the
number of connections closed.

Lost events: a full receive buffer makes the kernel drop messages (netlink_overrun:
sk_drops + 1 per message, and ENOBUFS once on the next recv). The exact count is the
socket's Drops column in the namespace's /proc/net/netlink (matched by inode), read
after each ENOBUFS and at every poll; without that file, each ENOBUFS counts one (a
lower bound).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import ipaddress
import math
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import structlog

from exporter.sources.sockdiag.buckets import BucketOptions, Classifier, _canonical, _select
from exporter.sources.sockdiag.capacity import OTHER
from exporter.sources.sockdiag.codec import (
    MIN_RECORD,
    NETLINK_SOCK_DIAG,
    SOCK_DIAG_BY_FAMILY,
    decode_at,
)

log = structlog.get_logger("timewait_exporter.events")

SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET6_TCP_DESTROY = 3
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
GROUPS = (SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET6_TCP_DESTROY)

# Asked for; the kernel caps SO_RCVBUF at net.core.rmem_max and doubles it (sk_rcvbuf).
# SO_RCVBUFFORCE would need CAP_NET_ADMIN, which the deployment does not grant.
EVENTS_RCVBUF = 16 << 20
RCVBUF_ENV = "TCPTW_EVENTS_RCVBUF"  # test hook: a tiny buffer, to provoke losses
SLOT = 2048  # bytes per message slot (an event is 380 bytes on 6.x: record + tcp_info)
SLOTS = 256  # messages per recvmmsg()
# Kernel memory one queued event costs: estimated (a 380-byte message in a 1 KiB slab
# object plus struct sk_buff), not measured.
TRUESIZE = 1280
MAX_DELAY = 0.05  # seconds the reader may wait between rounds to batch events
FILL_TARGET = 0.25  # ... as long as the buffer fills no more than this share meanwhile
IDLE_EVICT = 600.0  # seconds without a close before a bucket is forgotten
MAX_BUCKETS = 10_000  # per namespace and direction
RATE_TAU = 60.0  # seconds: the decay time of the rate that ranks the top K

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20


class EventSocket:
    """A NETLINK_SOCK_DIAG socket joined to both TCP destroy groups, in the calling
    thread's namespace, non-blocking."""

    def __init__(self, rcvbuf: int | None = None) -> None:
        if rcvbuf is None:
            rcvbuf = int(os.environ.get(RCVBUF_ENV) or EVENTS_RCVBUF)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((0, 0))
            for group in GROUPS:
                self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            self.sock.setblocking(False)
            self.rcvbuf: int = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            self.inode: int = os.fstat(self.sock.fileno()).st_ino
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def parse_drops(text: str, inode: int) -> int | None:
    """The Drops column of /proc/net/netlink for the socket with this inode."""
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 10 and fields[-1] == str(inode):
            return int(fields[-2])
    return None


# -- recvmmsg(2) ---------------------------------------------------------------------------


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


def _libc_recvmmsg() -> object | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


class Receiver:
    """SLOTS messages per system call into fixed slots of one buffer (recvmmsg through
    ctypes, which releases the GIL; recv_into one by one where libc lacks it)."""

    def __init__(self) -> None:
        self.buffer = (ctypes.c_char * (SLOT * SLOTS))()
        self.view = memoryview(self.buffer).cast("B")
        self._iov = (_IOVec * SLOTS)()
        self._msgs = (_MMsgHdr * SLOTS)()
        base = ctypes.addressof(self.buffer)
        for i in range(SLOTS):
            self._iov[i].base = base + i * SLOT
            self._iov[i].len = SLOT
            self._msgs[i].hdr.iov = ctypes.addressof(self._iov) + i * ctypes.sizeof(_IOVec)
            self._msgs[i].hdr.iovlen = 1
        stride = ctypes.sizeof(_MMsgHdr)
        raw = memoryview(self._msgs).cast("B")
        self._lens = np.ndarray(
            (SLOTS,), np.uint32, buffer=raw, offset=_MMsgHdr.len.offset, strides=(stride,)
        )
        self._flags = np.ndarray(
            (SLOTS,), np.int32, buffer=raw, offset=_MsgHdr.flags.offset, strides=(stride,)
        )
        self._recvmmsg = _libc_recvmmsg()
        self.lengths = np.zeros(SLOTS, dtype=np.uint32)

    def receive(self, sock: socket.socket) -> int:
        """Messages received (0..SLOTS) into the slots; self.lengths holds their sizes.
        Raises BlockingIOError when none is queued, OSError(ENOBUFS) after an overrun."""
        if self._recvmmsg is None:
            return self._receive_one_by_one(sock)
        n = self._recvmmsg(sock.fileno(), ctypes.addressof(self._msgs), SLOTS, MSG_DONTWAIT, None)  # type: ignore[operator]
        if n < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise BlockingIOError(code, os.strerror(code))
            raise OSError(code, os.strerror(code))
        lengths = self._lens[:n].copy()
        lengths[(self._flags[:n] & MSG_TRUNC) != 0] = 0  # a truncated message is skipped
        self.lengths[:n] = lengths
        return int(n)

    def _receive_one_by_one(self, sock: socket.socket) -> int:
        n = 0
        while n < SLOTS:
            try:
                size = sock.recv_into(self.view[n * SLOT : (n + 1) * SLOT], SLOT, MSG_TRUNC)
            except BlockingIOError:
                if n == 0:
                    raise
                break
            self.lengths[n] = size if size <= SLOT else 0
            n += 1
        return n


_OFFSETS = np.arange(SLOTS, dtype=np.int64) * SLOT


# -- per-namespace totals ------------------------------------------------------------------


class _Bucket:
    __slots__ = ("base", "exposed", "inside", "score", "seen", "shown", "stamp", "total")

    def __init__(self, now: float, inside: bool) -> None:
        self.total = 0  # every close counted, top K or not (`report` reads it)
        self.shown = 0  # the exported counter: increments made while in the top K
        self.inside = inside
        # Entering the top K, a series is first exposed at `base` (its value when it
        # entered, 0 the first time): increase() ignores a series' first sample, so the
        # increments since entering show from the next exposition on.
        self.base = 0
        self.exposed: int | None = None  # the value last exposed since entering
        self.score = 0.0  # closes decayed with RATE_TAU, as of `stamp`
        self.stamp = now
        self.seen = now

    def rate_score(self, now: float) -> float:
        return self.score * math.exp(-(now - self.stamp) / RATE_TAU)


@dataclass
class _Direction:
    outbound: bool
    buckets: dict[bytes, _Bucket] = field(default_factory=dict)
    other: int = 0  # increments of buckets while outside the top K (and untracked ones)
    uncounted: int = 0  # closes in no bucket's total: beyond MAX_BUCKETS, or forgotten idle


@dataclass
class NamespaceEvents:
    """One namespace's listener and totals (guarded by EventTable.lock)."""

    key: int | None
    label: str
    sock: EventSocket
    netlink_fd: int | None
    classifier: Classifier
    outbound: _Direction = field(default_factory=lambda: _Direction(True))
    inbound: _Direction = field(default_factory=lambda: _Direction(False))
    lost: int = 0
    overruns: int = 0  # ENOBUFS seen
    counted: int = 0  # connections counted (both directions)
    ignored: int = 0  # destroyed sockets without a remote port
    closed: bool = False
    failed: str = ""


# Key layout (35 bytes): local address (16; IPv4 in the first 4), remote address (16,
# masked by the prefix options), port (2, big-endian: the remote one outbound, the local
# one inbound), 1 for IPv6.
KEY = 35


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
class EventsSnapshot:
    outbound: tuple[EventRow, ...]  # node-wide top K, then one `other` row per namespace
    inbound: tuple[EventRow, ...]
    lost: tuple[tuple[str, int], ...]  # (netns, lost)
    up: tuple[tuple[str, int], ...]  # (netns, 1 listening / 0 unavailable)
    # (netns, connections counted both directions): for `report`.
    counted: tuple[tuple[str, int], ...] = ()


def _mask_bytes(prefix: int, width: int) -> npt.NDArray[np.uint8]:
    bits = np.zeros(width * 8, dtype=np.uint8)
    bits[:prefix] = 1
    packed: npt.NDArray[np.uint8] = np.packbits(bits)
    return packed


def key_labels(key: bytes, outbound: bool, options: BucketOptions) -> tuple[str, str, str]:
    """(local_addr, remote_addr or local_port, remote_port or remote_addr) of a key."""
    v6 = key[34] == 1
    width = 16 if v6 else 4
    local = ipaddress.ip_address(key[:width])
    remote = ipaddress.ip_address(key[16 : 16 + width])
    prefix = options.ipv6_prefix if v6 else options.ipv4_prefix
    remote_text = f"{remote}/{prefix}" if prefix < width * 8 else str(remote)
    port = str(int.from_bytes(key[32:34], "big"))
    if outbound:
        return str(local), remote_text, port
    return str(local), port, remote_text


class EventTable:
    """Every namespace's listener and totals, and the reader thread."""

    def __init__(self, options: BucketOptions, top: int | None = None) -> None:
        self.options = options
        self.top = options.top if top is None else top
        self.lock = threading.Lock()
        self._namespaces: dict[int | None, NamespaceEvents] = {}
        self._unavailable: dict[int | None, tuple[str, str]] = {}  # key → (label, reason)
        self._selector = selectors.DefaultSelector()
        self._receiver = Receiver()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._mask4 = _mask_bytes(options.ipv4_prefix, 4)
        self._mask6 = _mask_bytes(options.ipv6_prefix, 16)
        self._rate = 0.0  # events per second, smoothed: sets the reader's batching delay
        self._smallest_rcvbuf = 0
        self._inside = {True: 0, False: 0}  # buckets in the top K, per direction (outbound?)

    # -- from the poller -----------------------------------------------------------------

    def update(
        self,
        key: int | None,
        label: str,
        sock: EventSocket | None,
        netlink_fd: int | None,
        error: str,
        classifier: Classifier | None,
    ) -> None:
        """After a namespace's poll: its label and classifier; registers its listener
        with the reader the first time a classifier is known (events queue in the
        socket's buffer until then)."""
        if sock is None:
            with self.lock:
                self._unavailable[key] = (label, error)
            return
        with self.lock:
            self._unavailable.pop(key, None)
            ns = self._namespaces.get(key)
            if ns is not None and ns.sock is not sock:  # a fresh context: start over
                self._forget_locked(key)
                ns = None
            if ns is None:
                if classifier is None:
                    return
                ns = NamespaceEvents(key, label, sock, netlink_fd, classifier)
                self._namespaces[key] = ns
                self._selector.register(sock.fileno(), selectors.EVENT_READ, ns)
                rcvbuf = sock.rcvbuf
                if not self._smallest_rcvbuf or rcvbuf < self._smallest_rcvbuf:
                    self._smallest_rcvbuf = rcvbuf
                log.debug("events listener registered", netns=label, rcvbuf=rcvbuf)
            ns.label = label
            if classifier is not None:
                ns.classifier = classifier
            self._read_drops(ns)
        self._start()

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
        for direction in (ns.outbound, ns.inbound):
            for bucket in direction.buckets.values():
                self._leave(direction, bucket)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(ns.sock.fileno())

    def close(self) -> None:
        self._stop.set()
        with self.lock:
            for key in list(self._namespaces):
                self._forget_locked(key)
        if self._thread is not None:
            self._thread.join(2)
        self._selector.close()

    # -- the reader ----------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="events", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            try:
                ready = self._selector.select(timeout=0.5)
            except (OSError, ValueError):  # closed at shutdown
                return
            received = 0
            for selected, _ in ready:
                with self.lock:
                    ns = selected.data
                    if ns.closed:
                        continue
                    try:
                        received += self._drain(ns)
                    except Exception as exc:  # one namespace must not stop the reader
                        ns.failed = f"{type(exc).__name__}: {exc}"
                        log.error("events listener failed", netns=ns.label, error=ns.failed)
                        self._forget_locked(ns.key)
            now = time.monotonic()
            elapsed = max(now - last, 1e-3)
            last = now
            self._rate = 0.8 * self._rate + 0.2 * (received / elapsed)
            if received and self._rate > 0:
                # Let events gather for larger batches, while the buffer stays far from
                # full at the rate seen.
                capacity = self._smallest_rcvbuf / TRUESIZE
                delay = min(MAX_DELAY, FILL_TARGET * capacity / self._rate)
                if delay > 1e-3:
                    time.sleep(delay)  # counted in the next round's elapsed time

    def _drain(self, ns: NamespaceEvents) -> int:
        """recvmmsg until EAGAIN; count every batch. Returns the messages received."""
        total = 0
        overrun = False
        while True:
            try:
                n = self._receiver.receive(ns.sock.sock)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    ns.overruns += 1
                    overrun = True
                    continue
                raise
            total += n
            if n:
                self._count(ns, n)
            if n < SLOTS:
                break
        if overrun:
            self._read_drops(ns)
            log.warning("events lost: receive buffer overrun", netns=ns.label, lost=ns.lost)
        return total

    def _read_drops(self, ns: NamespaceEvents) -> None:
        drops: int | None = None
        if ns.netlink_fd is not None:
            try:
                chunks = []
                offset = 0
                while True:
                    chunk = os.pread(ns.netlink_fd, 1 << 16, offset)
                    chunks.append(chunk)
                    offset += len(chunk)
                    if len(chunk) < 1 << 16:
                        break
                drops = parse_drops(b"".join(chunks).decode("ascii", "replace"), ns.sock.inode)
            except OSError:
                drops = None
        ns.lost = max(ns.lost, ns.overruns if drops is None else drops)

    def _count(self, ns: NamespaceEvents, n: int) -> None:
        buf = self._receiver.view
        lengths = self._receiver.lengths[:n]
        offsets = _OFFSETS[:n]
        words = np.frombuffer(buf, dtype=np.uint32, count=n * SLOT // 4)
        nl_len = words[offsets >> 2]
        nl_type = words[(offsets >> 2) + 1] & 0xFFFF
        good = (lengths >= MIN_RECORD) & (nl_len >= MIN_RECORD) & (nl_len <= lengths)
        good &= nl_type == SOCK_DIAG_BY_FAMILY
        batch = decode_at(buf, n * SLOT, offsets[good])
        connected = batch.dport != 0
        ns.ignored += int(n - int(connected.sum()))
        if not connected.any():
            return
        if not connected.all():
            batch = _select(batch, connected)
        v4, local4, remote4 = _canonical(batch)
        outbound = ns.classifier.outbound(batch, v4, local4)
        m = len(batch)
        rows = np.zeros((m, KEY), dtype=np.uint8)
        six = ~v4
        if v4.any():
            rows[v4, 0:4] = local4[v4].astype("<u4").view(np.uint8).reshape(-1, 4)
            rows[v4, 16:20] = remote4[v4].astype("<u4").view(np.uint8).reshape(-1, 4) & self._mask4
        if six.any():
            rows[six, 0:16] = batch.src[six].astype("<u4").view(np.uint8).reshape(-1, 16)
            remote6 = batch.dst[six].astype("<u4").view(np.uint8).reshape(-1, 16)
            rows[six, 16:32] = remote6 & self._mask6
            rows[six, 34] = 1
        port = np.where(outbound, batch.dport, batch.sport)
        rows[:, 32] = port >> 8
        rows[:, 33] = port & 0xFF
        now = time.monotonic()
        ns.counted += m
        for direction, mask in ((ns.outbound, outbound), (ns.inbound, ~outbound)):
            if not mask.any():
                continue
            keys, counts = np.unique(rows[mask].view(f"V{KEY}").ravel(), return_counts=True)
            buckets = direction.buckets
            for raw, count in zip(keys.tolist(), counts.tolist(), strict=True):
                bucket = buckets.get(raw)
                if bucket is None:
                    if len(buckets) >= MAX_BUCKETS:
                        direction.other += count
                        direction.uncounted += count
                        continue
                    # A free place in the node's top K is taken at once, so a burst
                    # toward a new destination is counted in its own series.
                    inside = self._inside[direction.outbound] < self.top
                    bucket = buckets[raw] = _Bucket(now, inside)
                    self._inside[direction.outbound] += inside
                bucket.total += count
                if bucket.inside:
                    bucket.shown += count
                else:
                    direction.other += count
                bucket.score = bucket.rate_score(now) + count
                bucket.stamp = bucket.seen = now

    # -- the snapshot --------------------------------------------------------------------

    def snapshot(self) -> EventsSnapshot:
        """Choose the node-wide top K of each direction by recent rate and render the
        counters, atomically with the counting: a bucket entering the top K resumes its
        series at the value it had when it left (0 the first time), so every increment
        shows in exactly one series."""
        with self.lock:
            now = time.monotonic()
            namespaces = sorted(self._namespaces.values(), key=lambda ns: ns.label)
            for ns in namespaces:
                for direction in (ns.outbound, ns.inbound):
                    idle = [k for k, b in direction.buckets.items() if now - b.seen > IDLE_EVICT]
                    for k in idle:
                        gone = direction.buckets.pop(k)
                        direction.uncounted += gone.total
                        self._leave(direction, gone)
            rows: list[tuple[EventRow, ...]] = []
            for outbound in (True, False):
                ranked: list[tuple[float, bool, str, bytes, _Bucket]] = []
                for ns in namespaces:
                    direction = ns.outbound if outbound else ns.inbound
                    for raw, bucket in direction.buckets.items():
                        score = bucket.rate_score(now)
                        ranked.append((score, bucket.inside, ns.label, raw, bucket))
                ranked.sort(key=lambda r: (-r[0], not r[1], r[2], r[3]))
                chosen = ranked[: self.top]
                directions = {
                    ns.label: ns.outbound if outbound else ns.inbound for ns in namespaces
                }
                for _, _, label, _, bucket in ranked[self.top :]:
                    self._leave(directions[label], bucket)
                out: list[EventRow] = []
                for _, _, label, raw, bucket in chosen:
                    if not bucket.inside:
                        bucket.inside = True
                        bucket.base = bucket.shown
                        self._inside[outbound] += 1
                    value = bucket.base if bucket.exposed is None else bucket.shown
                    bucket.exposed = value
                    local, second, third = key_labels(raw, outbound, self.options)
                    out.append(EventRow(label, local, (second, third), value))
                for ns in namespaces:
                    direction = ns.outbound if outbound else ns.inbound
                    out.append(EventRow(ns.label, OTHER, (OTHER, OTHER), direction.other))
                rows.append(tuple(out))
            up = [(ns.label, 1) for ns in namespaces]
            up += [(label, 0) for label, _ in self._unavailable.values()]
            return EventsSnapshot(
                outbound=rows[0],
                inbound=rows[1],
                lost=tuple((ns.label, ns.lost) for ns in namespaces),
                up=tuple(sorted(up)),
                counted=tuple((ns.label, ns.counted) for ns in namespaces),
            )

    def outbound_totals(self) -> dict[str, OutboundTotals]:
        """Read-only, per namespace label with a listener: every outbound bucket's total
        (unlike `snapshot`, neither ranks nor evicts anything)."""
        with self.lock:
            return {
                ns.label: OutboundTotals(
                    ns.label,
                    ns.sock.inode,
                    {
                        key_labels(raw, True, self.options): bucket.total
                        for raw, bucket in ns.outbound.buckets.items()
                    },
                    ns.outbound.uncounted,
                )
                for ns in self._namespaces.values()
            }

    def unavailable(self) -> dict[str, str]:
        """Read-only: namespace label → why it has no listener (as the poll last saw)."""
        with self.lock:
            return dict(self._unavailable.values())

    def _leave(self, direction: _Direction, bucket: _Bucket) -> None:
        """A bucket leaves the top K (or memory): its series ends at its last exposed
        value; increments never exposed move to `other`."""
        if not bucket.inside:
            return
        last = bucket.base if bucket.exposed is None else bucket.exposed
        direction.other += bucket.shown - last
        bucket.shown = last
        bucket.inside = False
        bucket.exposed = None
        self._inside[direction.outbound] -= 1

    def namespaces(self) -> Iterator[NamespaceEvents]:
        with self.lock:
            yield from list(self._namespaces.values())
