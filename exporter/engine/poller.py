"""One poll: find the node's network namespaces, read every enabled source in each, and
build one immutable Snapshot.

A poll runs in a worker thread, never on the event loop. Namespaces are spread over
`--poll.workers` threads: the kernel's share of a dump (walking the hash tables) runs
inside recvmsg() with the GIL released, so two workers use two cores.

Each namespace is entered once, when first found, to open its descriptors
(exporter/netns/context.py); later polls read those without setns. A namespace that discovery
no longer finds is closed and its series vanish with the next snapshot.

Sources fail alone: an exception becomes a failed SourceResult and a log line on each
change of state (ok to failed, failed to ok, or a new error).

Budget: a poll given `budget` seconds starts no new namespace once they have passed,
except that each worker reads at least one and a namespace never read yet is always read.
Namespaces left over keep their last figures (tcptw_netns_poll_age_seconds grows) and go
first next time, those deferred most often first; among equals the costliest goes first,
so two workers finish together. Every namespace is thus read again within a bounded
number of polls, however many there are, and a poll overruns the budget by at most one
namespace's dump per worker.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from exporter.config import NETNS_SELF, Config
from exporter.engine.registry import HOST_SOURCES, NETNS_SOURCES, NetnsPoll
from exporter.engine.snapshot import HOST, NamespaceInfo, Snapshot, SourceResult
from exporter.events.table import EventTable
from exporter.netns.context import NamespaceChanged, NetnsContext, is_gone
from exporter.netns.discovery import FoundNamespace, discover, read_mounts
from exporter.netns.enter import PROC_NET_INIT_INO, namespace_inode
from exporter.netns.pods import read_pod_names, read_pod_uid
from exporter.sources.sockdiag.dump import Buffers, new_buffers
from exporter.sources.sockdiag.tally import SocketStats

log = structlog.get_logger("timewait_exporter.poller")

PIDS_TRIED = 3  # processes tried per namespace, to enter it or to find its pod


@dataclass
class _Identity:
    label: str
    k8s_namespace: str = ""
    k8s_pod_name: str = ""
    k8s_pod_uid: str = ""


@dataclass
class Tracked:
    """A namespace the poller holds open, with its last figures."""

    key: int | None  # nsfs inode; None for a recorded tree's own namespace
    own: bool
    found: FoundNamespace | None = None
    identity: _Identity = field(default_factory=lambda: _Identity(""))
    context: NetnsContext | None = None
    results: tuple[SourceResult, ...] = ()
    read_at: float | None = None
    duration: float = 0.0
    missed: int = 0
    outcome: str = "deferred"
    gone: bool = False
    pod_pid: tuple[int, str | None] | None = None  # (pid, uid) cache for attribution

    @property
    def label(self) -> str:
        return self.identity.label

    def close(self) -> None:
        if self.context is not None:
            self.context.close()
            self.context = None


@dataclass
class _Work:
    queue: deque[Tracked]
    started_at: float
    deadline: float | None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Poller:
    def __init__(self, config: Config, events: bool = False) -> None:
        """events: also count connections closed from the socket-destroy events
        (exporter/events/table.py), which need the sockdiag collector."""
        self.config = config
        self.events: EventTable | None = None
        if events and config.enabled("sockdiag"):
            self.events = EventTable(config.buckets)
        self._last_state: dict[tuple[str, str], str] = {}  # "" when ok, else the error
        self._state_lock = threading.Lock()
        self._tracked: dict[int | None, Tracked] = {}
        # Receive buffers per worker slot, made when a slot first dumps.
        self._buffers: list[Buffers | None] = [None] * config.poll_workers

    # -- the poll ------------------------------------------------------------------------

    def poll_once(self, budget: float | None = None) -> Snapshot:
        started_at = time.time()
        start = time.perf_counter()
        self._reconcile()
        order = sorted(
            self._tracked.values(),
            key=lambda t: (t.read_at is not None, -t.missed, -t.duration, t.label),
        )
        work = _Work(deque(order), started_at, None if budget is None else start + budget)
        workers = min(self.config.poll_workers, len(order))
        if workers <= 1:
            self._work(work, 0)
        else:
            threads = [
                threading.Thread(target=self._work, args=(work, slot), name=f"poll-{slot}")
                for slot in range(workers)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        results: list[SourceResult] = []
        namespaces: list[NamespaceInfo] = []
        for tracked in sorted(self._tracked.values(), key=lambda t: t.label):
            if tracked.gone:
                continue
            results += (
                r if r.netns == tracked.label else dataclasses.replace(r, netns=tracked.label)
                for r in tracked.results
            )
            namespaces.append(
                NamespaceInfo(
                    label=tracked.label,
                    inode=tracked.key,
                    k8s_namespace=tracked.identity.k8s_namespace,
                    k8s_pod_name=tracked.identity.k8s_pod_name,
                    k8s_pod_uid=tracked.identity.k8s_pod_uid,
                    read_at=tracked.read_at,
                    duration_seconds=tracked.duration,
                    outcome=tracked.outcome,
                )
            )
        cfg = self.config
        for source in HOST_SOURCES:
            if cfg.enabled(source.name):
                results.append(self._run(HOST, source.name, functools.partial(source.read, cfg)))
        duration = time.perf_counter() - start
        outcomes = Counter(ns.outcome for ns in namespaces)
        log.debug(
            "poll summary",
            seconds=round(duration, 4),
            namespaces=len(namespaces),
            **{f"outcome_{k}": v for k, v in sorted(outcomes.items())},
        )
        return Snapshot(
            results=tuple(results),
            started_at=started_at,
            duration_seconds=duration,
            namespaces=tuple(namespaces),
            events=self.events.snapshot() if self.events is not None else None,
        )

    def close(self) -> None:
        for key, tracked in self._tracked.items():
            if self.events is not None:
                self.events.forget(key)
            tracked.close()
        self._tracked.clear()
        if self.events is not None:
            self.events.close()

    def _work(self, work: _Work, slot: int) -> None:
        first = True  # each worker reads at least one namespace per poll: no starvation
        while True:
            with work.lock:
                if not work.queue:
                    return
                tracked = work.queue.popleft()
            late = work.deadline is not None and time.perf_counter() > work.deadline
            if late and not first and tracked.read_at is not None:
                tracked.missed += 1
                tracked.outcome = "deferred"
                continue
            first = False
            try:
                self._poll_namespace(tracked, self._slot_buffers(slot), work.started_at)
            except Exception as exc:  # a bug must cost one namespace, not the poll
                log.exception("namespace poll failed", netns=tracked.label)
                tracked.results = tuple(
                    SourceResult(s.name, tracked.label, False, 0.0, None, _describe(exc))
                    for s in NETNS_SOURCES
                    if self.config.enabled(s.name)
                )
                tracked.read_at, tracked.outcome = work.started_at, "failed"

    def _slot_buffers(self, slot: int) -> Buffers:
        buffers = self._buffers[slot]
        if buffers is None:
            buffers = self._buffers[slot] = new_buffers()
        return buffers

    def _poll_namespace(self, tracked: Tracked, buffers: Buffers, started_at: float) -> None:
        begin = time.perf_counter()
        cfg = self.config
        if tracked.context is None:
            try:
                tracked.context = self._open(tracked)
            except _Vanished:
                tracked.gone = True
                return
            except Exception as exc:  # one namespace must never stop the others
                error = f"cannot open namespace: {_describe(exc)}"
                self._note(tracked.label, "netns", error)
                tracked.results = tuple(
                    SourceResult(s.name, tracked.label, False, 0.0, None, error)
                    for s in NETNS_SOURCES
                    if cfg.enabled(s.name)
                )
                tracked.read_at, tracked.outcome, tracked.missed = started_at, "failed", 0
                return
            self._note(tracked.label, "netns", "")
        poll = NetnsPoll(tracked.label, tracked.context, cfg, buffers)
        results = [
            self._run(tracked.label, source.name, functools.partial(source.read, poll))
            for source in NETNS_SOURCES
            if cfg.enabled(source.name)
        ]
        self._note(tracked.label, "buckets", poll.warnings.get("buckets", ""), warning=True)
        tracked.results = tuple(results)
        tracked.read_at, tracked.missed = started_at, 0
        tracked.duration = time.perf_counter() - begin
        stats = next((r.data for r in results if r.source == "sockdiag" and r.ok), None)
        if self.events is not None:
            context = tracked.context
            if context.events is None and context.events_error:
                self._note(tracked.label, "events", context.events_error)
            self.events.update(
                tracked.key,
                tracked.label,
                context.events,
                context.netlink_fd,
                context.events_error,
                stats.classifier if isinstance(stats, SocketStats) else None,
            )
        if not isinstance(stats, SocketStats):
            tracked.outcome = "read"
        else:
            tracked.outcome = "dumped" if stats.dumped else "skipped"
        log.debug(
            "namespace polled",
            netns=tracked.label,
            outcome=tracked.outcome,
            seconds=round(tracked.duration, 4),
            failed=[r.source for r in results if not r.ok],
        )

    # -- namespaces ----------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Discover, label, open nothing yet (workers open), close what is gone."""
        cfg = self.config
        own = namespace_inode(str(cfg.procfs / "thread-self" / "ns" / "net"))
        wanted: dict[int | None, FoundNamespace | None]
        if cfg.netns == NETNS_SELF:
            mounts = tuple(
                sorted({path for inode, path in read_mounts(cfg.procfs) if inode == own})
            )
            pids = (os.getpid(),) if own is not None else ()
            wanted = {own: FoundNamespace(own, pids, mounts) if own is not None else None}
        else:
            wanted = dict(discover(cfg.procfs).items())
        identities = self._identify(wanted, own)
        if isinstance(cfg.netns, frozenset):
            wanted = {k: v for k, v in wanted.items() if identities[k].label in cfg.netns}
        for key in [k for k, t in self._tracked.items() if k not in wanted or t.gone]:
            gone = self._tracked.pop(key)
            log.debug("namespace gone: descriptors closed", netns=gone.label)
            if self.events is not None:
                self.events.forget(key)  # the reader lets go of its listener first
            gone.close()
        for key, namespace in wanted.items():
            tracked = self._tracked.get(key)
            if tracked is None:
                tracked = self._tracked[key] = Tracked(key=key, own=key == own)
            tracked.found = namespace
            tracked.identity = identities[key]
        # Forget the source states of namespaces no longer polled (a label that comes back
        # is a new namespace: its first failure is news again).
        labels = {t.label for t in self._tracked.values()} | {HOST}
        with self._state_lock:
            for state_key in [k for k in self._last_state if k[0] not in labels]:
                del self._last_state[state_key]

    def _identify(
        self, wanted: dict[int | None, FoundNamespace | None], own: int | None
    ) -> dict[int | None, _Identity]:
        """The `netns` label: `<k8s namespace>/<pod>` for a pod's namespace, else its
        bind-mount name, `host` for the initial namespace, else `ino-<inode>`. Labels
        that collide get `~ino-<inode>` appended."""
        cfg = self.config
        init = {PROC_NET_INIT_INO, namespace_inode(str(cfg.procfs / "1" / "ns" / "net"))}
        pod_names = read_pod_names(cfg.pod_logs)
        identities: dict[int | None, _Identity] = {}
        for key, namespace in wanted.items():
            if key == own and cfg.netns_name:
                identities[key] = _Identity(cfg.netns_name)
                continue
            if key in init:
                identities[key] = _Identity("host")
                continue
            uid = self._pod_uid(key, namespace)
            pod = pod_names.get(uid) if uid else None
            if pod is not None:
                identities[key] = _Identity(
                    f"{pod.namespace}/{pod.name}", pod.namespace, pod.name, uid or ""
                )
                continue
            mount = namespace.mount_name if namespace is not None else None
            label = mount or (f"ino-{key}" if key is not None else "host")
            identities[key] = _Identity(label, k8s_pod_uid=uid or "")
        counts: dict[str, int] = {}
        for identity in identities.values():
            counts[identity.label] = counts.get(identity.label, 0) + 1
        for key, identity in identities.items():
            if counts[identity.label] > 1:
                identity.label = f"{identity.label}~ino-{key}"
        return identities

    def _pod_uid(self, key: int | None, namespace: FoundNamespace | None) -> str | None:
        tracked = self._tracked.get(key)
        if namespace is None or not namespace.pids:
            return None
        if tracked is not None and tracked.pod_pid and tracked.pod_pid[0] in namespace.pids:
            return tracked.pod_pid[1]
        uid = None
        pid = namespace.pids[0]
        for pid in namespace.pids[:PIDS_TRIED]:
            uid = read_pod_uid(self.config.procfs, pid)
            if uid:
                break
        if tracked is not None:
            tracked.pod_pid = (pid, uid)
        return uid

    def _open(self, tracked: Tracked) -> NetnsContext:
        """Open the namespace's descriptors: through one of its processes, else through
        its bind mount (as pid 1 sees it, then as this process sees it). A namespace whose
        every path is gone has vanished since discovery."""
        cfg = self.config
        diag = cfg.enabled("sockdiag")
        events = self.events is not None
        if tracked.own or tracked.found is None:
            return NetnsContext.open(cfg.procfs, None, tracked.key, diag, events)
        paths = [
            str(cfg.procfs / str(pid) / "ns" / "net") for pid in tracked.found.pids[:PIDS_TRIED]
        ]
        via_init: set[str] = set()
        for mount in tracked.found.mounts:
            init_view = str(cfg.procfs / "1" / "root" / mount.lstrip("/"))
            via_init.add(init_view)
            paths += [init_view, mount]
        failure: Exception | None = None
        for path in paths:
            try:
                return NetnsContext.open(cfg.procfs, path, tracked.key, diag, events)
            except NamespaceChanged:
                continue
            except OSError as exc:
                if is_gone(exc):
                    continue
                if path in via_init and exc.errno in (errno.EACCES, errno.EPERM):
                    # /proc/1/root refused (no CAP_SYS_PTRACE) says nothing about the
                    # mount, which the next path tries directly; a refused
                    # /proc/<pid>/ns/net does: its process, and so the namespace, exists.
                    continue
                if failure is None:
                    failure = exc
        if failure is None:
            raise _Vanished()
        raise failure

    # -- bookkeeping ---------------------------------------------------------------------

    def _run(self, netns: str, source: str, fn: Callable[[], object]) -> SourceResult:
        start = time.perf_counter()
        try:
            data = fn()
        except Exception as exc:  # a failing source must never stop the others
            error = _describe(exc)
            self._note(netns, source, error)
            return SourceResult(source, netns, False, time.perf_counter() - start, None, error)
        self._note(netns, source, "")
        return SourceResult(source, netns, True, time.perf_counter() - start, data)

    def _note(self, netns: str, source: str, error: str, warning: bool = False) -> None:
        key = (netns, source)
        with self._state_lock:
            previous = self._last_state.get(key)
            self._last_state[key] = error
        if previous == error or (previous is None and not error):
            return
        if error and warning:
            log.warning(error, netns=netns, source="sockdiag")
        elif error:
            log.error("source failed", netns=netns, source=source, error=error)
        elif not warning:
            log.info("source recovered", netns=netns, source=source)


class _Vanished(Exception):
    pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}{where}"
    return f"{type(exc).__name__}: {exc}"
