"""One poll: find the node's network namespaces, read every enabled source in each, and
build one immutable Snapshot.

A poll runs in a worker thread, never on the event loop. Namespaces are spread over
`--poll.workers` threads: the kernel's share of a dump (walking the hash tables) runs
inside recvmsg() with the GIL released, so two workers use two cores.

The poller names no source: it reads the enabled ones of the registry
(exporter/engine/registry.py) through their declarations, and runs the feeds beside
them. Each namespace is entered once, when first found, to open the files and handles
the sources declared (exporter/netns/context.py, tracker.py); later polls read those
without setns. A namespace that discovery no longer finds is closed and its series
vanish with the next snapshot.

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
import functools
import resource
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from exporter.config import Config
from exporter.engine.detail import DetailTracker
from exporter.engine.registry import SOURCES
from exporter.engine.snapshot import HOST, FeedResult, NamespaceInfo, Snapshot, SourceResult
from exporter.engine.states import SourceStates, describe
from exporter.netns.context import Wanted
from exporter.netns.enter import SetnsRefused
from exporter.netns.tracker import Tracked, Tracker, Vanished
from exporter.sources.declare import Feed, FeedSession, NetnsPoll, Scope, Source

log = structlog.get_logger("timewait_exporter.poller")

MAX_WORKERS = 8
# Descriptors: the process's own (listeners, logs, libraries), and what each namespace
# keeps open: its /proc files and sysctls, its sock_diag and destroy-event sockets.
FDS_BASE = 64
FDS_PER_NAMESPACE = 16


@dataclass
class _Work:
    queue: deque[Tracked]
    started_at: float
    deadline: float | None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Poller:
    def __init__(
        self,
        config: Config,
        feeds: Sequence[Feed] = (),
        sources: Sequence[Source[Any]] = SOURCES,
    ) -> None:
        """feeds: the feeds to run beside the polls (serve and report: FEEDS; dump none),
        each where its `enabled` says so."""
        self.config = config
        enabled = [s for s in sources if config.enabled(s.name)]
        self._netns = [s for s in enabled if s.scope is Scope.NETNS]
        self._host = [s for s in enabled if s.scope is Scope.HOST]
        self._feeds = [f for f in feeds if f.enabled(config)]
        self.sessions: dict[Feed, FeedSession] = {f: f.start(config) for f in self._feeds}
        self._wanted = wanted(self._netns, self._feeds)
        self._states = SourceStates()
        self._tracker = Tracker(config)
        self._detail = DetailTracker(config, enabled)
        # Whether the last poll's exposition was served (the daemon's); None: always.
        self.scraped: Callable[[], bool] | None = None
        self._fds_short = False
        # State per worker slot (receive buffers), made when a slot first needs it.
        self._worker: list[dict[object, object]] = [{} for _ in range(MAX_WORKERS)]

    def workers(self) -> int:
        """--poll.workers, or (auto) 1 while most opened namespaces share the host's
        established hash: a dump there walks the whole node's table under its bucket
        locks, so a second walker contends for them and buys no wall time (measured in
        benchmarks.node), and 2 where they have tables of their own."""
        if self.config.poll_workers is not None:
            return min(self.config.poll_workers, MAX_WORKERS)
        contexts = [t.context for t in self._tracker.tracked.values() if t.context is not None]
        own = sum(1 for context in contexts if not context.shares_host_hash)
        return 2 if own > len(contexts) - own else 1

    def session(self, feed: Feed) -> FeedSession | None:
        """The running session of `feed` (None when it does not run)."""
        return self.sessions.get(feed)

    # -- the poll ------------------------------------------------------------------------

    def poll_once(self, budget: float | None = None) -> Snapshot:
        started_at = time.time()
        start = time.perf_counter()
        self._reconcile()
        tracked = self._tracker.tracked
        order = sorted(
            tracked.values(),
            key=lambda t: (t.read_at is not None, -t.missed, -t.duration, t.label),
        )
        work = _Work(deque(order), started_at, None if budget is None else start + budget)
        workers = min(self.workers(), len(order))
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
        for ns in sorted(tracked.values(), key=lambda t: t.label):
            if ns.gone:
                continue
            for r in ns.results:
                assert isinstance(r, SourceResult)
                results.append(r if r.netns == ns.label else dataclasses.replace(r, netns=ns.label))
            namespaces.append(
                NamespaceInfo(
                    label=ns.label,
                    inode=ns.key,
                    k8s_namespace=ns.identity.k8s_namespace,
                    k8s_pod_name=ns.identity.k8s_pod_name,
                    k8s_pod_uid=ns.identity.k8s_pod_uid,
                    read_at=ns.read_at,
                    duration_seconds=ns.duration,
                    outcome=ns.outcome,
                )
            )
        for source in self._host:
            results.append(
                self._run(HOST, source, functools.partial(source.read_host, self.config))
            )
        detail = self._detail.view(
            results, [ns.label for ns in namespaces], self.scraped is None or self.scraped()
        )
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
            feeds=tuple(FeedResult(f.name, s.result(detail)) for f, s in self.sessions.items()),
            detail=detail,
            missing=tuple(sorted(self._tracker.missing)),
            discovery_limited=self._tracker.discovery_limited(),
        )

    def close(self) -> None:
        for key, tracked in self._tracker.tracked.items():
            for session in self.sessions.values():
                session.forget(key)
            tracked.close()
        self._tracker.tracked.clear()
        for session in self.sessions.values():
            session.close()

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
                self._poll_namespace(tracked, self._worker[slot], work.started_at)
            except Exception as exc:  # a bug must cost one namespace, not the poll
                log.exception("namespace poll failed", netns=tracked.label)
                self._fail(tracked, describe(exc), work.started_at)

    def _fail(self, tracked: Tracked, error: str, started_at: float) -> None:
        tracked.results = tuple(
            SourceResult(s.name, tracked.label, False, 0.0, None, error) for s in self._netns
        )
        tracked.read_at, tracked.outcome, tracked.missed = started_at, "failed", 0

    def _poll_namespace(
        self, tracked: Tracked, worker: dict[object, object], started_at: float
    ) -> None:
        begin = time.perf_counter()
        if tracked.context is None:
            try:
                tracked.context = self._tracker.open(tracked, self._wanted)
            except Vanished:
                tracked.gone = True
                return
            except Exception as exc:  # one namespace must never stop the others
                error = f"cannot open namespace: {describe(exc)}"
                # setns refused (no CAP_SYS_ADMIN) is said once for every namespace by
                # the discovery warning (netns/privileges.py): each one's line is debug.
                quiet = isinstance(exc, SetnsRefused)
                self._states.note(tracked.label, "netns", error, quiet=quiet)
                self._fail(tracked, error, started_at)
                return
            self._states.note(tracked.label, "netns", "")
        context = tracked.context
        demands = frozenset(
            demand
            for feed in self._feeds
            if all(context.has_handle(o) for o in feed.openers)
            for demand in feed.demands
        )
        poll = NetnsPoll(tracked.label, context, self.config, worker, demands)
        results = [
            self._run(tracked.label, source, functools.partial(poll.result, source))
            for source in self._netns
        ]
        for source in self._netns:
            self._states.note(
                tracked.label, source.name, poll.warnings.get(source.name, ""), warning=True
            )
        tracked.results = tuple(results)
        tracked.read_at, tracked.missed = started_at, 0
        tracked.duration = time.perf_counter() - begin
        for feed, session in self.sessions.items():
            self._states.note(
                tracked.label, feed.name, session.after_poll(tracked.key, tracked.label, poll)
            )
        tracked.outcome = "read"
        for source, result in zip(self._netns, results, strict=True):
            if source.outcome is not None and result.ok:
                tracked.outcome = source.outcome(result.data)
        log.debug(
            "namespace polled",
            netns=tracked.label,
            outcome=tracked.outcome,
            seconds=round(tracked.duration, 4),
            failed=[r.source for r in results if not r.ok],
        )

    def _reconcile(self) -> None:
        gone_ones = self._tracker.reconcile()
        self._check_descriptors()
        for gone in gone_ones:
            log.debug("namespace gone: descriptors closed", netns=gone.label)
            for session in self.sessions.values():
                session.forget(gone.key)  # the feed lets go of its handles first
            gone.close()
        self._states.keep_only([t.label for t in self._tracker.tracked.values()] + [HOST])

    def _check_descriptors(self) -> None:
        """One warning when RLIMIT_NOFILE cannot hold every namespace's descriptors (the
        namespaces that cannot be opened then fail, each with one line and its series)."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        need = FDS_BASE + FDS_PER_NAMESPACE * len(self._tracker.tracked)
        short = soft != resource.RLIM_INFINITY and need > soft
        if short and not self._fds_short:
            log.warning(
                "too few file descriptors for every namespace: raise ulimit -n (LimitNOFILE)",
                limit=soft,
                namespaces=len(self._tracker.tracked),
                needed_about=need,
            )
        self._fds_short = short

    def _run(self, netns: str, source: Source[Any], read: Callable[[], object]) -> SourceResult:
        start = time.perf_counter()
        try:
            data = read()
        except Exception as exc:  # a failing source must never stop the others
            error = describe(exc)
            self._states.note(netns, source.name, error)
            return SourceResult(source.name, netns, False, time.perf_counter() - start, None, error)
        self._states.note(netns, source.name, "")
        return SourceResult(source.name, netns, True, time.perf_counter() - start, data)


def wanted(sources: Sequence[Source[Any]], feeds: Sequence[Feed] = ()) -> Wanted:
    """The files and handles every namespace opens: those of the enabled sources, of the
    sources they require, and of the running feeds."""
    needed: list[Source[Any]] = []
    pending: list[Source[Any]] = [*sources, *(s for f in feeds for s in f.requires)]
    while pending:
        source = pending.pop(0)
        if source not in needed:
            needed.append(source)
            pending += source.requires
    openers = [o for s in needed for o in s.openers] + [o for f in feeds for o in f.openers]
    return Wanted(
        net_files=tuple(dict.fromkeys(n for s in needed for n in s.net_files)),
        sysctl_files=tuple(dict.fromkeys(n for s in needed for n in s.sysctl_files)),
        openers=tuple(dict.fromkeys(openers)),
    )
