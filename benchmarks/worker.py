"""Runs inside the benchmark namespace (`ip netns exec NS python -m benchmarks.worker`):
reads one method name per line on stdin, times it, answers one JSON line.

  exporter  the exporter's full poll: dump, decode, state counts, buckets, capacity, snapshot
  floor     the exporter's own sock_diag requests (one TCPDIAG_GETSOCK dump of listeners,
            one of every other state, both families each) received and discarded
  floor-v2  the per-family SOCK_DIAG_BY_FAMILY dumps (AF_INET, AF_INET6) ss makes,
            received and discarded: two walks of the established hash
  ss-tw     ss -tan state time-wait >/dev/null
  ss-all    ss -tan >/dev/null
  node:PORT one scrape of node_exporter's tcpstat collector (started in the namespace)
  ss-count  the TIME-WAIT sockets `ss -tanH state time-wait` lists (answered as "timewait")
"""

from __future__ import annotations

import functools
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from exporter import log
from exporter.config import NETNS_SELF, Config
from exporter.engine.poller import Poller
from exporter.sources.sockdiag.codec import (
    ALL_STATES,
    NLMSG_DONE,
    NLMSG_HDR,
    build_compat_request,
    build_request,
)
from exporter.sources.sockdiag.dump import LISTENING, NOT_LISTENING, DiagSocket
from exporter.sources.sockdiag.tally import SocketStats


def drain(diag: DiagSocket, requests: list[bytes]) -> None:
    """Send each dump request in turn and receive its replies into one 64 KiB buffer."""
    buffer = bytearray(65536)
    for request in requests:
        diag.sock.send(request)
        while True:
            n = diag.sock.recv_into(buffer)
            if n >= 20 and NLMSG_HDR.unpack_from(buffer, n - 20)[:2] == (20, NLMSG_DONE):
                break


FLOOR_REQUESTS = [build_compat_request(LISTENING, 7), build_compat_request(NOT_LISTENING, 8)]
FLOOR_V2_REQUESTS = [build_request(family, ALL_STATES, 9) for family in (2, 10)]


def floor_dump(requests: list[bytes] = FLOOR_REQUESTS) -> None:
    """The kernel's cost of the dumps, received and thrown away."""
    with DiagSocket() as diag:
        drain(diag, requests)


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def vm_hwm_bytes(pid: int | str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def scrape(url: str) -> None:
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()


def main() -> None:
    log.configure("warning", "json")  # stdout carries the results: logs go to stderr
    poller = Poller(Config(netns=NETNS_SELF, netns_name="bench"))
    timewait = [0]
    in_buckets = [0]  # TIME-WAIT sockets over every bucket series, `other` included

    def exporter() -> None:
        snapshot = poller.poll_once()
        stats = next(r.data for r in snapshot.results if r.source == "sockdiag")
        assert isinstance(stats, SocketStats) and stats.ports is not None
        timewait[0] = sum(v for (_, state), v in stats.states.items() if state == "time_wait")
        ports = stats.ports
        in_buckets[0] = (
            sum(r.timewait for r in ports.outbound)
            + sum(r.timewait for r in ports.inbound)
            + ports.outbound_rest.timewait
            + ports.inbound_rest.timewait
        )

    def ss_count() -> None:
        out = subprocess.run(
            ["ss", "-tanH", "state", "time-wait"], capture_output=True, text=True, check=True
        ).stdout
        timewait[0] = len(out.splitlines())

    def run(argv: list[str]) -> Callable[[], None]:
        def command() -> None:
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)

        return command

    for line in sys.stdin:
        method = line.strip()
        cpu: Callable[[], float] = self_cpu
        if method == "exporter":
            fn = exporter
        elif method == "floor":
            fn = floor_dump
        elif method == "floor-v2":
            fn = functools.partial(floor_dump, FLOOR_V2_REQUESTS)
        elif method == "ss-tw":
            fn, cpu = run(["ss", "-tan", "state", "time-wait"]), children_cpu
        elif method == "ss-count":
            fn, cpu = ss_count, children_cpu
        elif method == "ss-all":
            fn, cpu = run(["ss", "-tan"]), children_cpu
        elif method.startswith("node:"):
            _, port, pid = method.split(":")
            fn = functools.partial(scrape, f"http://127.0.0.1:{port}/metrics")
            cpu = functools.partial(process_cpu, int(pid))
        else:
            raise SystemExit(f"unknown method {method!r}")
        cpu_before, start = cpu(), time.perf_counter()
        fn()
        wall, cpu_used = time.perf_counter() - start, cpu() - cpu_before
        print(
            json.dumps(
                {
                    "method": method.split(":")[0],
                    "wall": wall,
                    "cpu": cpu_used,
                    "rss": vm_hwm_bytes("self"),
                    "timewait": timewait[0],
                    "in_buckets": in_buckets[0],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    main()
