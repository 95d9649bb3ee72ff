"""Who holds the worst bucket's sockets: one targeted sock_diag query, made by `report`
only (never by the daemon's polls), in each namespace whose worst outbound bucket reaches
Thresholds.port_warning, and the processes whose descriptors hold those sockets.

- The query goes through the dump's own code (exporter/sources/sockdiag/codec.py:
  build_compat_request through DiagSocket.request, decode_batch), in a namespace opened
  as the poller opens it (exporter/netns/tracker.py), and reads one more field the
  tally never keeps: each record's inode (inet_diag_msg.idiag_inode, record offset 84).
  Only that bucket's records are kept (its remote port first, in numpy; then its
  addresses, labelled as the socket-destroy events label them: keys.key_labels).
- A full socket held by a process has an inode; /proc/<pid>/fd/<n> links to
  "socket:[<inode>]". TIME-WAIT and FIN-WAIT-2 minisockets have inode 0: no process holds
  them, the kernel does, until their timer ends.
- The pod of a process: its cgroup's pod UID (exporter/netns/pods.py), named from
  kubelet's log directories when they are there.

Every /proc/<pid>/fd is read: a socket belongs to the namespace it was created in, and
its holder may live in another one (a sidecar, a process that called setns). Reading
another user's descriptors needs root (CAP_SYS_PTRACE); without it a process is skipped
and its sockets counted as unattributed.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from exporter.config import Config
from exporter.netns.context import Wanted
from exporter.netns.pods import PodName, read_pod_names, read_pod_uid
from exporter.netns.tracker import Tracker
from exporter.sources.sockdiag.buckets import BucketOptions
from exporter.sources.sockdiag.codec import (
    TCP_STATES,
    TCPDIAG_GETSOCK,
    Batch,
    DiagProtocolError,
    DumpInterrupted,
    decode_batch,
    find_records,
)
from exporter.sources.sockdiag.dump import NOT_LISTENING, RECV_WINDOW, DiagSocket
from exporter.sources.sockdiag.keys import (
    canonical,
    event_keys,
    key_labels,
    prefix_mask,
    select,
)
from exporter.sources.sockdiag.source import DIAG, bucket_options

OFF_INODE = 16 + 68  # nlmsghdr + inet_diag_msg up to idiag_inode
SHOWN_HOLDERS = 5


@dataclass(frozen=True, slots=True)
class Holder:
    pid: int
    comm: str
    pod: str  # "<namespace>/<pod>", the pod UID when kubelet's logs do not name it, or ""
    sockets: int  # of the bucket's sockets held through its descriptors
    close_wait: int  # of which in CLOSE-WAIT


@dataclass(frozen=True, slots=True)
class Inspection:
    """One bucket's sockets, per state, and their holders (most sockets first)."""

    local_addr: str
    remote_addr: str
    remote_port: str
    states: dict[str, int]  # sock_diag states of the bucket's sockets, zero ones left out
    holders: tuple[Holder, ...]
    unattributed: int  # full sockets (with an inode) no readable process holds
    error: str = ""  # why the holders or the sockets could not be read

    @property
    def destination(self) -> str:
        host = f"[{self.remote_addr}]" if ":" in self.remote_addr else self.remote_addr
        return f"{host}:{self.remote_port}"


@dataclass(frozen=True, slots=True)
class Records:
    """The bucket's records: state per socket, and the inodes of full sockets."""

    states: Counter[int]
    inodes: dict[int, int]  # inode → state


Key = tuple[str, str, str]  # (local_addr, remote_addr, remote_port): a bucket


@dataclass(frozen=True, slots=True)
class Target:
    """What to inspect in one namespace: its ip_local_port_range (a socket of an outbound
    bucket has its local port there) and its buckets."""

    port_range: tuple[int, int]
    keys: tuple[Key, ...]


def inspect(config: Config, targets: dict[str, Target]) -> dict[str, tuple[Inspection, ...]]:
    """Per namespace label, its buckets inspected (in the order given), from one dump of
    that namespace. Nothing is read when none is wanted."""
    wanted = {label: t for label, t in targets.items() if t.keys}
    if not wanted:
        return {}
    options = bucket_options(config)
    tracker = Tracker(config)
    tracker.reconcile()
    by_label = {t.label: t for t in tracker.tracked.values()}
    records: dict[str, dict[Key, Records] | str] = {}
    for label, target in wanted.items():
        tracked = by_label.get(label)
        if tracked is None:
            records[label] = "the namespace was gone"
            continue
        try:
            context = tracker.open(tracked, Wanted(openers=(DIAG,)))
        except Exception as exc:  # the report says why and goes on
            records[label] = f"cannot open the namespace: {type(exc).__name__}: {exc}"
            continue
        try:
            diag = context.handle(DIAG)
            assert isinstance(diag, DiagSocket)
            records[label] = bucket_records(diag, target, options)
        except (OSError, DumpInterrupted, DiagProtocolError, ValueError) as exc:
            records[label] = f"sock_diag query failed: {type(exc).__name__}: {exc}"
        finally:
            context.close()
    inodes = {
        inode
        for found in records.values()
        if not isinstance(found, str)
        for r in found.values()
        for inode in r.inodes
    }
    owners, unreadable = socket_owners(config.procfs, inodes)
    pods = read_pod_names(config.pod_logs)
    result: dict[str, tuple[Inspection, ...]] = {}
    for label, found in records.items():
        if isinstance(found, str):
            keys = wanted[label].keys
            result[label] = tuple(Inspection(*k, {}, (), 0, found) for k in keys)
            continue
        result[label] = tuple(
            inspection(config.procfs, k, found[k], owners, unreadable, pods)
            for k in wanted[label].keys
        )
    return result


def inspection(
    procfs: Path,
    key: Key,
    found: Records,
    owners: dict[int, set[int]],
    unreadable: int,
    pods: dict[str, PodName],
) -> Inspection:
    per_pid: Counter[int] = Counter()
    close_wait: Counter[int] = Counter()
    unattributed = 0
    for inode, state in found.inodes.items():
        pids = owners.get(inode)
        if not pids:
            unattributed += 1
            continue
        for pid in pids:  # a descriptor shared after fork(): each holder holds it
            per_pid[pid] += 1
            if TCP_STATES.get(state) == "close_wait":
                close_wait[pid] += 1
    holders = []
    for pid, count in sorted(per_pid.items(), key=lambda item: (-item[1], item[0])):
        holders.append(
            Holder(pid, _comm(procfs, pid), _pod(procfs, pid, pods), count, close_wait[pid])
        )
        if len(holders) == SHOWN_HOLDERS:
            break
    error = ""
    if unattributed and unreadable:
        error = f"the descriptors of {unreadable} processes were unreadable (needs root)"
    states = {TCP_STATES.get(s, str(s)): n for s, n in sorted(found.states.items()) if n}
    return Inspection(*key, states, tuple(holders), unattributed, error)


def bucket_records(diag: DiagSocket, target: Target, options: BucketOptions) -> dict[Key, Records]:
    """One dump of the namespace's non-listening sockets, keeping the buckets': their
    remote port and a local port in the range first (numpy), then their local and
    (masked) remote address. Redone once when the kernel flags the dump as interrupted."""
    try:
        return _dump_buckets(diag, target, options)
    except DumpInterrupted:
        return _dump_buckets(diag, target, options)


def _dump_buckets(diag: DiagSocket, target: Target, options: BucketOptions) -> dict[Key, Records]:
    found = {k: Records(Counter(), {}) for k in target.keys}
    ports = np.array(sorted({int(k[2]) for k in target.keys}), dtype=np.uint16)
    low, high = target.port_range
    seq = diag.request(NOT_LISTENING)
    buffer = bytearray(RECV_WINDOW)
    interrupted = False
    with memoryview(buffer) as view:
        while True:
            nbytes, _, msg_flags, _ = diag.sock.recvmsg_into([view])
            if msg_flags & socket.MSG_TRUNC or nbytes == 0:
                raise ValueError("sock_diag reply truncated or empty")
            batch, end = decode_batch(view, nbytes, seq, diag.pid, TCPDIAG_GETSOCK)
            interrupted |= end.interrupted
            if len(batch):
                ephemeral = (batch.sport >= low) & (batch.sport <= high)
                hit = np.flatnonzero(np.isin(batch.dport, ports) & ephemeral)
                if hit.size:
                    starts = find_records(view, nbytes, seq, diag.pid)[hit]
                    words = np.frombuffer(view, dtype="<u4", count=nbytes // 4)
                    inodes = words[(starts + OFF_INODE) >> 2]
                    _keep(batch, hit, inodes, options, found)
            if end.done:
                break
    if interrupted:
        raise DumpInterrupted("sock_diag dump was interrupted")
    return found


def _keep(
    batch: Batch,
    hit: npt.NDArray[np.intp],
    inodes: npt.NDArray[np.uint32],
    options: BucketOptions,
    found: dict[Key, Records],
) -> None:
    """The records at `hit` (their inodes given) that belong to a bucket of `found`,
    labelled as the socket-destroy events label theirs."""
    chosen = np.zeros(len(batch), dtype=bool)
    chosen[hit] = True
    picked = select(batch, chosen)
    v4, local4, remote4 = canonical(picked)
    masks = prefix_mask(options.ipv4_prefix, 4), prefix_mask(options.ipv6_prefix, 16)
    rows = event_keys(picked, v4, local4, remote4, picked.dport, *masks)
    for i, row in enumerate(rows):
        key = key_labels(bytes(row), True, options.ipv4_prefix, options.ipv6_prefix)
        records = found.get(key)
        if records is None:
            continue
        state = int(picked.state[i])
        records.states[state] += 1
        if int(inodes[i]):
            records.inodes[int(inodes[i])] = state


def socket_owners(procfs: Path, inodes: set[int]) -> tuple[dict[int, set[int]], int]:
    """inode → the pids whose descriptors hold it, among `inodes`; and how many
    processes' descriptors could not be read."""
    owners: dict[int, set[int]] = {}
    unreadable = 0
    if not inodes:
        return owners, 0
    try:
        pids = [int(name) for name in os.listdir(procfs) if name.isdigit()]
    except OSError:
        return owners, 0
    for pid in pids:
        fd_dir = procfs / str(pid) / "fd"
        try:
            names = os.listdir(fd_dir)
        except FileNotFoundError:
            continue  # exited
        except OSError:
            unreadable += 1
            continue
        for name in names:
            try:
                target = os.readlink(fd_dir / name)
            except OSError:
                continue
            if not target.startswith("socket:["):
                continue
            number = int(target[8:-1])
            if number in inodes:
                owners.setdefault(number, set()).add(pid)
    return owners, unreadable


def _comm(procfs: Path, pid: int) -> str:
    try:
        return (procfs / str(pid) / "comm").read_text(errors="replace").strip()
    except OSError:
        return ""


def _pod(procfs: Path, pid: int, pods: dict[str, PodName]) -> str:
    uid = read_pod_uid(procfs, pid)
    if uid is None:
        return ""
    pod = pods.get(uid)
    return f"{pod.namespace}/{pod.name}" if pod is not None else uid
