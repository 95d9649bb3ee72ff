"""Runs on the host (`python -m benchmarks.node_worker NS...`): holds a sock_diag socket
opened inside each named namespace and the host's, then reads one method name per line on
stdin, times it (wall, and CPU of every thread of this process), answers one JSON line.

  exporter:DETAIL:WORKERS
            the exporter's full poll of the host and the named namespaces (only those:
            other namespaces on the machine are not the benchmark's), then rendered as
            the daemon does once per poll (every preloaded format, plain and gzipped, and
            the malloc_trim after it); DETAIL is compact or full (--metrics.detail),
            WORKERS auto, 1 or 2 (--poll.workers); other flags default. One poller per
            variant, each with its namespaces opened by its first poll.
  exporter:DETAIL:WORKERS:text
            the same, rendered as text once (generate_latest), as this benchmark
            measured before the exposition was cached (commit cba6009 and before)
  floor     the exporter's own dump requests in every namespace, received and discarded,
            one namespace after another on one thread
  floor-v2  the per-family dumps (AF_INET, AF_INET6) ss makes, likewise
  ss        `ss -tan` in every namespace (`ss -N NAME`), one after another

The first namespace named may hold a big load (`--busy` of benchmarks.node): its
TIME-WAIT count is answered as busy_timewait.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

from prometheus_client import ProcessCollector, generate_latest
from prometheus_client.registry import CollectorRegistry

from benchmarks.worker import FLOOR_REQUESTS, FLOOR_V2_REQUESTS, drain, vm_hwm_bytes
from exporter import log
from exporter.config import Config
from exporter.daemon import release_free_memory
from exporter.engine.collector import SnapshotCollector
from exporter.engine.exposition import Exposition
from exporter.engine.poller import Poller
from exporter.engine.snapshot import Snapshot
from exporter.netns.context import raise_fd_limit
from exporter.netns.enter import entered
from exporter.sources.sockdiag.dump import DiagSocket
from exporter.sources.sockdiag.tally import SocketStats


def cpu(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)  # RUSAGE_SELF: every thread of this process
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    return cpu(resource.RUSAGE_CHILDREN)


def sample_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and line[0] != "#")


class Variant:
    """One poller with its own collector and exposition, as one daemon would have."""

    def __init__(self, config: Config, text_only: bool) -> None:
        self.text_only = text_only
        self.poller = Poller(config)
        self.collector = SnapshotCollector(config)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)  # the daemon's process_* series
        self.exposition = Exposition(self.registry)
        self.snapshot: Snapshot | None = None

    def poll(self) -> None:
        self.snapshot = self.poller.poll_once()
        self.collector.update(self.snapshot)
        if self.text_only:
            generate_latest(self.registry)
            return
        self.exposition.refresh()
        release_free_memory()

    def facts(self, busy: str) -> dict[str, object]:
        """What the last poll showed (untimed)."""
        snapshot = self.snapshot
        assert snapshot is not None
        return {
            "series": sample_lines(generate_latest(self.registry).decode()),
            "namespaces": len(snapshot.namespaces),
            "detailed": len(snapshot.detail.detailed) if not snapshot.detail.full else -1,
            "workers": min(self.poller.workers(), len(snapshot.namespaces)),
            "busy_timewait": sum(
                value
                for r in snapshot.results
                if r.netns == busy and r.source == "sockdiag" and isinstance(r.data, SocketStats)
                for (_, state), value in r.data.states.items()
                if state == "time_wait"
            ),
        }


def main() -> None:
    log.configure("warning", "json")  # stdout carries the results: logs go to stderr
    raise_fd_limit()
    names = sys.argv[1:]
    sockets = [DiagSocket()]  # the host's own namespace
    for name in names:
        with entered(f"/run/netns/{name}"):
            sockets.append(DiagSocket())
    # The CLI's defaults, but only the host and the benchmark's namespaces (labels: the
    # host is "host", a namespace under /run/netns its mount name).
    base = Config(netns=frozenset({"host", *names}))
    variants: dict[str, Variant] = {}
    busy = names[0] if names else ""

    def exporter(key: str) -> Variant:
        if key not in variants:
            _, detail, workers, *render = key.split(":")
            variants[key] = Variant(
                dataclasses.replace(
                    base, detail=detail, poll_workers=None if workers == "auto" else int(workers)
                ),
                text_only=render == ["text"],
            )
        return variants[key]

    def floor(requests: list[bytes]) -> Callable[[], None]:
        def run() -> None:
            for diag in sockets:
                drain(diag, requests)

        return run

    def ss() -> None:
        subprocess.run(["ss", "-tan"], stdout=subprocess.DEVNULL, check=True)
        for name in names:
            subprocess.run(["ss", "-tan", "-N", name], stdout=subprocess.DEVNULL, check=True)

    fixed = {"floor": floor(FLOOR_REQUESTS), "floor-v2": floor(FLOOR_V2_REQUESTS), "ss": ss}
    for line in sys.stdin:
        method = line.strip()
        variant = exporter(method) if method.startswith("exporter:") else None
        fn = variant.poll if variant is not None else fixed[method]
        clock = children_cpu if method == "ss" else cpu
        cpu_before, start = clock(), time.perf_counter()
        fn()
        wall, used = time.perf_counter() - start, clock() - cpu_before
        facts = variant.facts(busy) if variant is not None else {}
        print(
            json.dumps(
                {"method": method, "wall": wall, "cpu": used, "rss": vm_hwm_bytes("self"), **facts}
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
