"""Runs on the host (`python -m benchmarks.node_worker NS...`): holds a sock_diag socket
opened inside each named namespace, then reads one method name per line on stdin, times
it, answers one JSON line.

  exporter  the exporter's full poll of every namespace of the node (default flags)
  exporter1 the same with --poll.workers=1
  floor     the exporter's own dump requests in every namespace, received and discarded,
            one namespace after another on one thread
  floor-v2  the per-family dumps (AF_INET, AF_INET6) ss makes, likewise
  ss        `ss -tan` in every namespace (`ss -N NAME`), one after another
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from benchmarks.worker import FLOOR_REQUESTS, FLOOR_V2_REQUESTS, drain, vm_hwm_bytes
from exporter import log
from exporter.config import Config
from exporter.engine.collector import SnapshotCollector
from exporter.engine.poller import Poller
from exporter.netns.context import raise_fd_limit
from exporter.netns.enter import entered
from exporter.sources.sockdiag.dump import DiagSocket
from exporter.sources.sockdiag.tally import SocketStats


def cpu(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)  # RUSAGE_SELF: every thread of this process
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    return cpu(resource.RUSAGE_CHILDREN)


def main() -> None:
    log.configure("warning", "json")  # stdout carries the results: logs go to stderr
    raise_fd_limit()
    sockets = [DiagSocket()]  # the host's own namespace
    for name in sys.argv[1:]:
        with entered(f"/run/netns/{name}"):
            sockets.append(DiagSocket())
    config = Config()  # the CLI's defaults
    collector = SnapshotCollector(config)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    pollers = {w: Poller(dataclasses.replace(config, poll_workers=w)) for w in (1, 2)}
    busy = sys.argv[1]  # the first namespace named holds the big load
    facts = {"series": 0, "namespaces": 0, "busy_timewait": 0}

    def exporter(workers: int) -> Callable[[], None]:
        def run() -> None:
            """One poll and its rendering, as the daemon does once per poll."""
            snapshot = pollers[workers].poll_once()
            collector.update(snapshot)
            text = generate_latest(registry).decode()
            facts["series"] = sum(1 for line in text.splitlines() if line and line[0] != "#")
            facts["namespaces"] = len(snapshot.namespaces)
            facts["busy_timewait"] = sum(
                value
                for r in snapshot.results
                if r.netns == busy and r.source == "sockdiag" and isinstance(r.data, SocketStats)
                for (_, state), value in r.data.states.items()
                if state == "time_wait"
            )

        return run

    def floor(requests: list[bytes]) -> Callable[[], None]:
        def run() -> None:
            for diag in sockets:
                drain(diag, requests)

        return run

    def ss() -> None:
        subprocess.run(["ss", "-tan"], stdout=subprocess.DEVNULL, check=True)
        for name in sys.argv[1:]:
            subprocess.run(["ss", "-tan", "-N", name], stdout=subprocess.DEVNULL, check=True)

    methods = {
        "exporter": exporter(2),
        "exporter1": exporter(1),
        "floor": floor(FLOOR_REQUESTS),
        "floor-v2": floor(FLOOR_V2_REQUESTS),
        "ss": ss,
    }
    for line in sys.stdin:
        method = line.strip()
        clock = children_cpu if method == "ss" else cpu
        cpu_before, start = clock(), time.perf_counter()
        methods[method]()
        wall, used = time.perf_counter() - start, clock() - cpu_before
        print(
            json.dumps(
                {
                    "method": method,
                    "wall": wall,
                    "cpu": used,
                    "rss": vm_hwm_bytes("self"),
                    **facts,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
