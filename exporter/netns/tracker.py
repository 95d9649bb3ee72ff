"""The namespaces the poller holds open: which exist (discovery), what each is called
(its pod, its mount, its inode), and how to open it (through one of its processes, else
its bind mount). A namespace is opened once, by the first poll that reads it, and closed
when discovery no longer finds it.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

import structlog

from exporter.config import NETNS_SELF, Config
from exporter.netns.context import NamespaceChanged, NetnsContext, Wanted, is_gone
from exporter.netns.discovery import FoundNamespace, Refusals, discover, read_mounts
from exporter.netns.enter import PROC_NET_INIT_INO, SetnsRefused, namespace_inode
from exporter.netns.pods import read_pod_names, read_pod_uid
from exporter.netns.privileges import DiscoveryLimits, Evidence

log = structlog.get_logger("timewait_exporter.poller")

PIDS_TRIED = 3  # processes tried per namespace, to enter it or to find its pod


@dataclass
class Identity:
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
    identity: Identity = field(default_factory=lambda: Identity(""))
    context: NetnsContext | None = None
    results: tuple[object, ...] = ()  # the engine's SourceResults of its last read
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


class Vanished(Exception):
    """Every path to the namespace is gone since discovery."""


class Tracker:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.tracked: dict[int | None, Tracked] = {}
        self.missing: frozenset[str] = frozenset()  # --netns labels no namespace has
        # What --netns=all (or names) cannot see or enter; None under --netns=self.
        self.limits = DiscoveryLimits() if config.netns != NETNS_SELF else None

    def _note_missing(self, missing: frozenset[str]) -> None:
        if missing != self.missing and missing:
            log.warning("--netns names namespaces that do not exist (yet)", missing=sorted(missing))
        self.missing = missing

    def reconcile(self) -> list[Tracked]:
        """Discover and label; returns the namespaces gone since the last call, removed
        from `tracked` but still open (the caller lets go of them, then closes them).
        Opens nothing: workers open."""
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
            refusals = Refusals()
            wanted = dict(discover(cfg.procfs, refusals).items())
            if self.limits is not None:
                init = namespace_inode(str(cfg.procfs / "1" / "ns" / "net"))
                host = {PROC_NET_INIT_INO} | ({init} if init is not None else set())
                found = not host.isdisjoint({*wanted, own})
                self.limits.evidence = Evidence(refusals.listed, refusals.links, found)
        identities = self._identify(wanted, own)
        if isinstance(cfg.netns, frozenset):
            wanted = {k: v for k, v in wanted.items() if identities[k].label in cfg.netns}
            self._note_missing(cfg.netns - {identities[k].label for k in wanted})
        gone = [
            self.tracked.pop(k)
            for k in [k for k, t in self.tracked.items() if k not in wanted or t.gone]
        ]
        for key, namespace in wanted.items():
            tracked = self.tracked.get(key)
            if tracked is None:
                tracked = self.tracked[key] = Tracked(key=key, own=key == own)
            tracked.found = namespace
            tracked.identity = identities[key]
        return gone

    def discovery_limited(self) -> tuple[tuple[str, bool], ...]:
        """After a poll: every reason of privileges.REASONS with whether it holds (empty
        under --netns=self)."""
        if self.limits is None:
            return ()
        return self.limits.conclude(sum(t.context is not None for t in self.tracked.values()))

    def _identify(
        self, wanted: dict[int | None, FoundNamespace | None], own: int | None
    ) -> dict[int | None, Identity]:
        """The `netns` label: `<k8s namespace>/<pod>` for a pod's namespace, else its
        bind-mount name, `host` for the initial namespace, else `ino-<inode>`. Labels
        that collide get `~ino-<inode>` appended."""
        cfg = self.config
        init = {PROC_NET_INIT_INO, namespace_inode(str(cfg.procfs / "1" / "ns" / "net"))}
        pod_names = read_pod_names(cfg.pod_logs)
        identities: dict[int | None, Identity] = {}
        for key, namespace in wanted.items():
            if key == own and cfg.netns_name:
                identities[key] = Identity(cfg.netns_name)
                continue
            if key in init:
                identities[key] = Identity("host")
                continue
            uid = self._pod_uid(key, namespace)
            pod = pod_names.get(uid) if uid else None
            if pod is not None:
                identities[key] = Identity(
                    f"{pod.namespace}/{pod.name}", pod.namespace, pod.name, uid or ""
                )
                continue
            mount = namespace.mount_name if namespace is not None else None
            label = mount or (f"ino-{key}" if key is not None else "host")
            identities[key] = Identity(label, k8s_pod_uid=uid or "")
        counts: dict[str, int] = {}
        for identity in identities.values():
            counts[identity.label] = counts.get(identity.label, 0) + 1
        for key, identity in identities.items():
            if counts[identity.label] > 1:
                identity.label = f"{identity.label}~ino-{key}"
        return identities

    def _pod_uid(self, key: int | None, namespace: FoundNamespace | None) -> str | None:
        tracked = self.tracked.get(key)
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

    def open(self, tracked: Tracked, wanted: Wanted) -> NetnsContext:
        """Open the namespace's descriptors: through one of its processes, else through
        its bind mount (as pid 1 sees it, then as this process sees it). A namespace whose
        every path is gone has vanished since discovery."""
        cfg = self.config
        if tracked.own or tracked.found is None:
            return NetnsContext.open(cfg.procfs, None, tracked.key, wanted)
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
                context = NetnsContext.open(cfg.procfs, path, tracked.key, wanted)
            except NamespaceChanged:
                continue
            except OSError as exc:
                if isinstance(exc, SetnsRefused) and self.limits is not None:
                    self.limits.setns_refused = True
                if is_gone(exc):
                    continue
                if path in via_init and exc.errno in (errno.EACCES, errno.EPERM):
                    # /proc/1/root refused (no CAP_SYS_PTRACE) says nothing about the
                    # mount, which the next path tries directly; a refused
                    # /proc/<pid>/ns/net does: its process, and so the namespace, exists.
                    continue
                if failure is None:
                    failure = exc
            else:
                if self.limits is not None:
                    self.limits.setns_refused = False
                return context
        if failure is None:
            raise Vanished()
        raise failure
