"""A node-shaped benchmark: many network namespaces, one of them busy, as on a Kubernetes
node. As root, from a fresh clone:

    python -m benchmarks.node --markdown docs/benchmarks.md

Loads (each built fresh, torn down after):
- node-shaped: one namespace holding 150,000 TIME-WAIT sockets (benchmarks/load.py), 40
  with a listener, 3 ESTABLISHED pairs and 2 TIME-WAIT sockets, 30 empty;
- 250 namespaces: the same busy one, 140 active, 109 empty;
- node-shaped again with net.ipv4.tcp_child_ehash_entries=65536 set on the host before
  the namespaces are created, so each gets its own established hash.

TIME-WAIT sockets expire 60 s after they were made, so the busy namespace is filled last,
right before the measurements, and everything is measured within that minute: `--rounds`
pairs of the exporter's full poll of every namespace (default flags, then rendered, as the
daemon does once per poll) and the floor, i.e. the same per-namespace dumps received and
discarded one namespace after another, measured back to back (wall / floor is the median
of the pairs' ratios); then the exporter with one worker, the per-family dumps ss makes
(likewise one namespace after another) and `ss -tan` in every namespace, twice each; then
/metrics latency while the daemon polls every second. The exporter reports the busy
namespace's TIME-WAIT count at every poll, so the load is shown to be there. The report
replaces the section between the markers NODE_BEGIN and NODE_END of the markdown file.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.load import loaded_namespace
from benchmarks.markdown import write_section
from benchmarks.run import NODE_BEGIN as BEGIN
from benchmarks.run import NODE_END as END
from benchmarks.run import ROOT, free_port
from benchmarks.worker import process_cpu, vm_hwm_bytes
from exporter.netns.enter import entered

CHILD_EHASH = Path("/proc/sys/net/ipv4/tcp_child_ehash_entries")
LABELS = {
    "exporter": "timewait-exporter full poll + render",
    "exporter1": "the same, --poll.workers=1",
    "floor": "floor: the same dumps, one namespace after another",
    "floor-v2": "per-family dumps (as ss makes them), one namespace after another",
    "ss": "`ss -tan` in every namespace",
}


READING = """\
The floor is what the kernel charges for the same dumps, one namespace after another: each
dump of a namespace on the host's shared established hash walks the whole node's table,
so it costs the same whether the namespace holds 5 sockets or none. The exporter skips
namespaces where sockstat shows no TCP socket and spreads the rest over two workers; the
busy namespace's 150,000 records are decoded and bucketed on top. On the shared hash two
walkers of the same table gain little (they contend for the same bucket locks in the same
order): compare the two exporter rows, wall and CPU, before keeping the second worker on
a node with hundreds of namespaces, or better, set `tcp_child_ehash_entries`. With their
own hashes the kernel's part of a namespace's dump is a fraction of a millisecond, and the
exporter's Python work per namespace (four sources) is what remains: above the floor in
ratio, small in absolute terms."""


@dataclass
class Load:
    title: str
    busy: int
    active: int
    empty: int
    child_ehash: int = 0


@dataclass
class Row:
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    rss: int = 0
    series: int = 0
    namespaces: int = 0


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextmanager
def node(load: Load) -> Iterator[list[str]]:
    """The namespaces of one load (names under /run/netns), torn down afterwards."""
    tag = f"twnode-{os.getpid()}"
    names: list[str] = []
    held: list[socket.socket] = []
    previous = CHILD_EHASH.read_text() if CHILD_EHASH.exists() else None
    with ExitStack() as stack:
        try:
            if load.child_ehash:
                CHILD_EHASH.write_text(str(load.child_ehash))
            for i in range(load.active + load.empty):
                name = f"{tag}-{i}"
                run("ip", "netns", "add", name)
                names.append(name)
                run("ip", "-n", name, "link", "set", "lo", "up")
                if i < load.active:
                    with entered(f"/run/netns/{name}"):
                        held += few_connections()
            loaded = stack.enter_context(loaded_namespace(load.busy))  # last: see above
            yield [loaded.name, *names]
        finally:
            for sock in held:
                sock.close()
            for name in names:
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
            if previous is not None:
                CHILD_EHASH.write_text(previous)


def few_connections() -> list[socket.socket]:
    """In the calling thread's namespace: a listener, 3 ESTABLISHED pairs, 2 TIME-WAIT."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 8080))
    listener.listen(16)
    held = [listener]
    for i in range(5):
        client = socket.create_connection(("127.0.0.1", 8080))
        server, _ = listener.accept()
        if i < 2:
            client.close()
            server.recv(16)
            server.close()
        else:
            held += [client, server]
    return held


def measure(names: list[str], rounds: int) -> tuple[dict[str, Row], list[float], list[int]]:
    """Rows by method, the paired exporter/floor ratios, the busy TIME-WAIT counts seen."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.node_worker", *names],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdin is not None and worker.stdout is not None
    rows = {m: Row() for m in LABELS}
    ratios: list[float] = []
    busy: list[int] = []

    def ask(method: str) -> float:
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write(method + "\n")
        worker.stdin.flush()
        answer = json.loads(worker.stdout.readline())
        row = rows[method]
        row.walls.append(answer["wall"])
        row.cpus.append(answer["cpu"])
        if method.startswith("exporter"):
            row.rss, row.series = answer["rss"], answer["series"]
            row.namespaces = answer["namespaces"]
            busy.append(answer["busy_timewait"])
        return float(answer["wall"])

    try:
        for warm_up in ("exporter", "exporter1"):  # opens every namespace once
            ask(warm_up)
            rows[warm_up] = Row()
        busy.clear()
        for r in range(rounds):
            pair = ("exporter", "floor") if r % 2 == 0 else ("floor", "exporter")
            walls = {method: ask(method) for method in pair}
            ratios.append(walls["exporter"] / walls["floor"])
        for _ in range(2):
            for method in ("exporter1", "floor-v2", "ss"):
                ask(method)
    finally:
        worker.stdin.close()
        worker.wait()
    return rows, ratios, busy


def scrape_latency(seconds: float) -> dict[str, float]:
    """/metrics scraped every 20 ms while the daemon polls every second."""
    port = free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "exporter", "serve", "--poll.interval", "1",
         "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "error"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import urllib.request

    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if b"tcptw_netns_info" in urllib.request.urlopen(url, timeout=60).read():
                    break
            except OSError:
                time.sleep(0.2)
        cpu_before, start = process_cpu(daemon.pid), time.monotonic()
        latencies = []
        while time.monotonic() < start + seconds:
            t = time.perf_counter()
            urllib.request.urlopen(url, timeout=60).read()
            latencies.append(time.perf_counter() - t)
            time.sleep(0.02)
        cpu_used, wall = process_cpu(daemon.pid) - cpu_before, time.monotonic() - start
        rss = vm_hwm_bytes(daemon.pid)
    finally:
        daemon.terminate()
        daemon.wait()
    lat = np.array(latencies) * 1000
    return {
        "scrapes": float(len(lat)),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "cpu_percent": 100 * cpu_used / wall,
        "rss": float(rss),
    }


def report(
    load: Load, rows: dict[str, Row], ratios: list[float], busy: list[int], lat: dict[str, float]
) -> list[str]:
    floor = statistics.median(rows["floor"].walls)
    exporter = rows["exporter"]
    lines = [
        f"### {load.title}",
        "",
        f"{exporter.namespaces} namespaces (the host's included): one with {load.busy:,} "
        f"TIME-WAIT sockets, {load.active} with a listener and a few connections, "
        f"{load.empty} empty; tcp_child_ehash_entries={load.child_ehash}. "
        f"TIME-WAIT sockets the exporter saw in the busy one: {min(busy):,}-{max(busy):,}. "
        f"Series exposed: **{exporter.series:,}**. "
        f"**Poll / floor: {statistics.median(ratios):.2f}** (median of {len(ratios)} pairs "
        f"measured back to back: {', '.join(f'{r:.2f}' for r in ratios)}).",
        "",
        "| method | median wall | min | max | median CPU | peak RSS | wall / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, row in rows.items():
        rss = f"{row.rss / 2**20:.0f} MiB" if row.rss else "-"
        lines.append(
            f"| {LABELS[method]} | {statistics.median(row.walls) * 1000:.0f} ms | "
            f"{min(row.walls) * 1000:.0f} ms | {max(row.walls) * 1000:.0f} ms | "
            f"{statistics.median(row.cpus) * 1000:.0f} ms | {rss} | "
            f"{statistics.median(row.walls) / floor:.2f} |"
            if row.walls
            else f"| {LABELS[method]} | - | - | - | - | - | - |"
        )
    lines += [
        "",
        f"The daemon polling every second: {lat['scrapes']:.0f} scrapes of /metrics, p50 "
        f"{lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms; it used "
        f"{lat['cpu_percent']:.0f} % of one core, peak RSS {lat['rss'] / 2**20:.0f} MiB.",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--busy", type=int, default=150_000)
    parser.add_argument("--scrape-seconds", type=float, default=10)
    parser.add_argument("--markdown", type=Path, help="replace the node section of this file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark builds network namespaces")
    loads = [
        Load("Node-shaped", args.busy, 40, 30),
        Load("250 namespaces", args.busy, 140, 109),
        Load("Node-shaped, tcp_child_ehash_entries set", args.busy, 40, 30, 65536),
    ]
    section = [
        BEGIN,
        "## Many namespaces",
        "",
        "Produced by:",
        "",
        f"    python -m benchmarks.node --rounds {args.rounds} --busy {args.busy}"
        + (f" --markdown {args.markdown}" if args.markdown else ""),
        "",
        *READING.splitlines(),
        "",
    ]
    for load in loads:
        with node(load) as names:
            rows, ratios, busy = measure(names, args.rounds)
            lat = scrape_latency(args.scrape_seconds)
        lines = report(load, rows, ratios, busy, lat)
        print("\n".join(lines), flush=True)
        section += lines
    section.append(END)
    if args.markdown:
        write_section(args.markdown, BEGIN, END, "\n".join(section))


if __name__ == "__main__":
    main()
