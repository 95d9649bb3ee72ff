"""One immutable snapshot per poll: what every source returned, or why it failed, which
namespaces were polled, and each running feed's reading."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.sources.declare import FULL, DetailView

HOST = ""  # the `netns` of host-wide results (slab, sockstat's global counters)


@dataclass(frozen=True, slots=True)
class SourceResult:
    source: str
    netns: str  # the namespace label; HOST for host-wide sources
    ok: bool
    duration_seconds: float
    # The source's immutable result when ok: the type its declaration's reader returns.
    data: object = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    label: str
    inode: int | None
    k8s_namespace: str = ""
    k8s_pod_name: str = ""
    k8s_pod_uid: str = ""
    # Unix start time of the poll whose figures are shown; None: never read yet.
    read_at: float | None = None
    duration_seconds: float = 0.0  # of its last poll
    outcome: str = "dumped"  # dumped, skipped (no TCP socket), read, deferred, failed


@dataclass(frozen=True, slots=True)
class FeedResult:
    feed: str
    data: object  # the immutable reading its session returned for this poll


@dataclass(frozen=True, slots=True)
class Snapshot:
    results: tuple[SourceResult, ...]
    started_at: float  # unix time the poll started
    duration_seconds: float
    namespaces: tuple[NamespaceInfo, ...] = ()
    poll_overruns: int = 0
    feeds: tuple[FeedResult, ...] = ()  # the running feeds' readings (none for dump)
    detail: DetailView = FULL  # which namespaces are shown in full (engine/detail.py)
    missing: tuple[str, ...] = ()  # --netns labels that no namespace has
    # (reason, whether it holds) for what --netns=all cannot see or enter
    # (exporter/netns/privileges.py); empty under --netns=self.
    discovery_limited: tuple[tuple[str, bool], ...] = ()
