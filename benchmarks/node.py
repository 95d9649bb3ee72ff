"""Many network namespaces on one node, as on a Kubernetes node. As root, from a fresh
clone:

    python -m benchmarks.node --markdown docs/benchmarks.md --readme README.md

Pod-shaped loads (issue 17): the host plus 10, 100 and 250 namespaces, each holding what
a quiet pod holds: a listener on 127.0.0.1:8080, 3 connections to it (both ends inside,
so 6 ESTABLISHED sockets) and 5 TIME-WAIT sockets. A TIME-WAIT socket lives 60 s, so a
keeper thread makes a namespace's 5 again once the last ones have expired (never during
a timed step of the worker). Each size twice: on the host's shared established hash
(net.ipv4.tcp_child_ehash_entries=0, the kernel's default), and with hashes of their own
(the host's tcp_child_ehash_entries set to --child-ehash while the namespaces are
created, restored right after).

Per load, `--rounds` rounds, each running every method once in rotating order
(benchmarks/node_worker.py): the exporter's poll of the host and those namespaces, then
rendered as the daemon renders once per poll, at the default flags (compact detail,
auto workers), with 1 and with 2 workers, and at full detail; the floor, i.e. the same
dumps received and discarded one namespace after another. Wall and CPU (every thread of
the worker process) per poll; exporter / floor is the median of the rounds' ratios.
Then a daemon (`exporter serve`, default flags but `--netns` naming the host and the
load's namespaces and `--poll.interval 1`, so that scrapes keep meeting polls) is
scraped over real HTTP every 20 ms for `--scrape-seconds`: latency, its CPU, its RSS;
again with `--metrics.detail=full`. node_exporter (default collectors, in the host's
namespace as a DaemonSet with hostNetwork runs it) is started once and scraped in each
load: its series count beside the exporter's.

`--busy N` also runs the loads this benchmark had before issue 17 (commit cba6009), for
comparison with those figures: one namespace with N TIME-WAIT sockets, 40 with a listener,
3 connections and 2 TIME-WAIT sockets, 30 empty; the same with 140 and 109; the first
again with hashes of their own. Their exporter rows render text once, as then.

Only the host and the benchmark's own namespaces are polled (`--netns`), but every dump
on the shared hash walks the whole node's table, other users' sockets included: the
host's TCP socket count (sockstat `alloc`, all namespaces) and the machine's load are
recorded with each load. The report replaces the text between NODE_BEGIN and NODE_END
in the markdown file, and between SIZING_BEGIN and SIZING_END in the README.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.load import loaded_namespace
from benchmarks.markdown import write_section
from benchmarks.run import NODE_BEGIN as BEGIN
from benchmarks.run import NODE_END as END
from benchmarks.run import NODE_EXPORTER, ROOT, free_port
from benchmarks.worker import process_cpu, vm_hwm_bytes
from exporter.netns.context import raise_fd_limit
from exporter.netns.enter import entered

SIZING_BEGIN, SIZING_END = "<!-- SIZING_BEGIN -->", "<!-- SIZING_END -->"
CHILD_EHASH = Path("/proc/sys/net/ipv4/tcp_child_ehash_entries")
SCRAPE_INTERVAL = 15  # seconds: samples/s = series / 15
TIMEWAIT_LIFE = 60.0  # TCP_TIMEWAIT_LEN
DEFAULT = "exporter:compact:auto"
FLOOR = "floor"
LABELS = {
    DEFAULT: "exporter, default flags (compact, auto workers)",
    "exporter:compact:1": "exporter, compact, --poll.workers=1",
    "exporter:compact:2": "exporter, compact, --poll.workers=2",
    "exporter:full:auto": "exporter, --metrics.detail=full",
    FLOOR: "floor: the same dumps, one namespace after another",
    # The loads from before issue 17 (--busy), rows as they were then:
    "exporter:full:2:text": "exporter full poll + text render, --poll.workers=2 (as before)",
    "exporter:full:1:text": "the same, --poll.workers=1",
    "floor-v2": "per-family dumps (as ss makes them), one namespace after another",
    "ss": "`ss -tan` in every namespace",
}
POD_METHODS = [DEFAULT, FLOOR, "exporter:compact:1", "exporter:compact:2", "exporter:full:auto"]
LEGACY_PAIR = ["exporter:full:2:text", FLOOR]
LEGACY_EXTRA = ["exporter:full:1:text", "floor-v2", "ss", DEFAULT]


@dataclass
class Load:
    title: str
    pods: int  # namespaces with a listener, 3 connections and `timewait` TIME-WAIT sockets
    timewait: int = 5
    child_ehash: int = 0  # the host's tcp_child_ehash_entries while they are created
    busy: int = 0  # one more namespace with this many TIME-WAIT sockets (--busy loads)
    empty: int = 0  # namespaces with lo only

    @property
    def legacy(self) -> bool:
        return self.busy > 0

    @property
    def hash_kind(self) -> str:
        return "own" if self.child_ehash else "shared"


@dataclass
class Row:
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    busy: list[int] = field(default_factory=list)  # the busy namespace's TIME-WAIT, per poll

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def tcp_alloc() -> int:
    """Full TCP sockets allocated on the machine, every namespace (sockstat `alloc`)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("alloc") + 1])
    return 0


def timewait_socket(listener: socket.socket) -> None:
    """In the calling thread's namespace: one connection to `listener` closed from the
    client's side first, which leaves the client's socket in TIME-WAIT."""
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    client.close()
    server.recv(16)
    server.close()


class Keeper:
    """Keeps `per` TIME-WAIT sockets in each namespace: when a namespace's batch is past
    60 s and its sockstat shows none left, it makes the next one. Holds `lock` while it
    works; the benchmark holds it during every timed step."""

    def __init__(self, listeners: dict[str, socket.socket], per: int) -> None:
        self.per = per
        self.listeners = listeners
        self.lock = threading.Lock()
        self.made: dict[str, float] = {}
        self.sockstat: dict[str, int] = {}  # fd of the namespace's sockstat, opened inside
        self.batches = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keeper", daemon=True)

    def start(self) -> None:
        for name in self.listeners:
            with entered(f"/run/netns/{name}"):
                self.sockstat[name] = os.open("/proc/thread-self/net/sockstat", os.O_RDONLY)
                self._make(name)
            self.made[name] = time.monotonic()
        self._thread.start()

    def timewait(self, name: str) -> int:
        fields = os.pread(self.sockstat[name], 4096, 0).decode().split("TCP:", 1)[1].split()
        return int(fields[fields.index("tw") + 1])

    def _make(self, name: str) -> None:
        for _ in range(self.per):
            timewait_socket(self.listeners[name])
        self.batches += 1

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with self.lock:
                now = time.monotonic()
                for name, made in self.made.items():
                    if now - made >= TIMEWAIT_LIFE and self.timewait(name) == 0:
                        with entered(f"/run/netns/{name}"):
                            self._make(name)
                        self.made[name] = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for fd in self.sockstat.values():
            os.close(fd)


@contextmanager
def node(load: Load) -> Iterator[tuple[list[str], Keeper]]:
    """The namespaces of one load (names under /run/netns; the busy one first), torn
    down afterwards, the host's tcp_child_ehash_entries restored."""
    tag = f"twnode-{os.getpid()}"
    names: list[str] = []
    held: list[socket.socket] = []
    previous = CHILD_EHASH.read_text().strip() if CHILD_EHASH.exists() else None
    keeper = Keeper({}, 0)
    listeners: dict[str, socket.socket] = {}
    with ExitStack() as stack:
        try:
            count = load.pods + load.empty
            try:
                if load.child_ehash:
                    # Only while the namespaces are created: the value is read at creation.
                    CHILD_EHASH.write_text(str(load.child_ehash))
                for i in range(count):
                    name = f"{tag}-{i}"
                    run("ip", "netns", "add", name)
                    names.append(name)
            finally:
                if previous is not None:
                    CHILD_EHASH.write_text(previous)
            for i, name in enumerate(names):
                run("ip", "-n", name, "link", "set", "lo", "up")
                if i < load.pods:
                    with entered(f"/run/netns/{name}"):
                        sockets = pod_sockets()
                    listeners[name] = sockets[0]
                    held += sockets
            keeper = Keeper(listeners, load.timewait)
            keeper.start()
            if load.busy:  # last: its TIME-WAIT sockets expire 60 s after they are made
                loaded = stack.enter_context(loaded_namespace(load.busy))
                names.insert(0, loaded.name)
            yield names, keeper
        finally:
            keeper.stop()
            for sock in held:
                sock.close()
            for name in names:
                if name.startswith(tag):
                    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def pod_sockets() -> list[socket.socket]:
    """In the calling thread's namespace: a listener and 3 ESTABLISHED pairs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 8080))
    listener.listen(64)
    held = [listener]
    for _ in range(3):
        client = socket.create_connection(("127.0.0.1", 8080))
        server, _ = listener.accept()
        held += [client, server]
    return held


class Worker:
    """benchmarks/node_worker.py on the host, holding the load's namespaces."""

    def __init__(self, names: list[str], keeper: Keeper) -> None:
        self.keeper = keeper
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.node_worker", *names],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, method: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.keeper.lock:
            self.proc.stdin.write(method + "\n")
            self.proc.stdin.flush()
            answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def measure(
    names: list[str], keeper: Keeper, rotated: list[str], extra: list[str], rounds: int
) -> tuple[dict[str, Row], list[float]]:
    """Rows by method and the rounds' exporter / floor ratios (the first method of
    `rotated` against the floor of the same round). Every method of `rotated` runs once
    per round, the order rotating; `extra` twice each afterwards."""
    worker = Worker(names, keeper)
    rows = {m: Row() for m in rotated + extra}
    ratios: list[float] = []

    def ask(method: str) -> float:
        answer = worker.ask(method)
        row = rows[method]
        row.walls.append(float(answer["wall"]))
        row.cpus.append(float(answer["cpu"]))
        row.facts = answer
        if "busy_timewait" in answer:
            row.busy.append(int(answer["busy_timewait"]))
        return float(answer["wall"])

    try:
        for method in rotated + extra:  # opens every namespace; compact's first poll
            if method.startswith("exporter"):
                worker.ask(method)
                worker.ask(method)
        for r in range(rounds):
            order = rotated[r % len(rotated) :] + rotated[: r % len(rotated)]
            walls = {method: ask(method) for method in order}
            ratios.append(walls[rotated[0]] / walls[FLOOR])
        for _ in range(2):
            for method in extra:
                ask(method)
    finally:
        worker.close()
    return rows, ratios


def scrape_daemon(
    names: list[str], seconds: float, *flags: str, interval: float = 1, quiet: float = 0
) -> dict[str, float]:
    """Real HTTP GETs of /metrics every 20 ms while the daemon polls every `interval` s;
    then, for `quiet` seconds, no request at all: its CPU over that window alone."""
    port = free_port()
    netns = ",".join(["host", *names])
    daemon = subprocess.Popen(
        [sys.executable, "-m", "exporter", "serve", "--poll.interval", f"{interval:g}",
         "--netns", netns,
         *flags, "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "error"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    body = b""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and b"tcptw_netns_info" not in body:
            try:
                body = urllib.request.urlopen(url, timeout=60).read()
            except OSError:
                time.sleep(0.2)
        time.sleep(3)  # a few polls: the compact rule's first polls
        cpu_before, start = process_cpu(daemon.pid), time.monotonic()
        latencies = []
        while time.monotonic() < start + seconds:
            t = time.perf_counter()
            body = urllib.request.urlopen(url, timeout=60).read()
            latencies.append(time.perf_counter() - t)
            time.sleep(0.02)
        cpu_used, wall = process_cpu(daemon.pid) - cpu_before, time.monotonic() - start
        quiet_cpu = process_cpu(daemon.pid)
        time.sleep(quiet)
        quiet_cpu = process_cpu(daemon.pid) - quiet_cpu
        status = Path(f"/proc/{daemon.pid}/status").read_text()
        rss = next(
            int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")
        )
        hwm = vm_hwm_bytes(daemon.pid)
    finally:
        daemon.terminate()
        daemon.wait()
    lat = np.array(latencies) * 1000
    text = body.decode()
    polls = [line for line in text.splitlines() if line.startswith("tcptw_poll_duration_seconds ")]
    return {
        "scrapes": float(len(lat)),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "cpu_percent": 100 * cpu_used / wall,
        "quiet_cpu_s": quiet_cpu,
        "rss": float(rss),
        "hwm": float(hwm),
        "series": float(sum(1 for line in text.splitlines() if line and line[0] != "#")),
        "bytes": float(len(body)),
        "poll_s": float(polls[0].split()[1]) if polls else float("nan"),
    }


class NodeExporter:
    """node_exporter with its default collectors in the host's namespace."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url, timeout=30).read()
                return
            except OSError:
                time.sleep(0.2)

    def scrape(self, times: int = 10) -> dict[str, float]:
        walls, cpus, series = [], [], 0
        for _ in range(times):
            before, t = process_cpu(self.proc.pid), time.perf_counter()
            text = urllib.request.urlopen(self.url, timeout=60).read().decode()
            walls.append(time.perf_counter() - t)
            cpus.append(process_cpu(self.proc.pid) - before)
            series = sum(1 for line in text.splitlines() if line and line[0] != "#")
            lo = sum(
                1
                for line in text.splitlines()
                if line.startswith("node_") and 'device="lo"' in line
            )
        return {
            "series": float(series),
            "per_interface": float(lo),
            "wall_ms": 1000 * statistics.median(walls),
            "cpu_ms": 1000 * statistics.mean(cpus),  # clock ticks: the mean, not the median
            "rss": float(vm_hwm_bytes(self.proc.pid)),
        }

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclass
class Result:
    load: Load
    rows: dict[str, Row]
    ratios: list[float]
    daemon: dict[str, dict[str, float]]  # by detail
    node: dict[str, float]
    loads: tuple[float, float]  # 1-min load average before and after
    alloc: int  # TCP sockets on the machine
    timewait_batches: int


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def machine(r: Result) -> str:
    return f"{r.loads[0]:.2f}-{r.loads[1]:.2f}"


def load_text(r: Result) -> str:
    return f"1-min load {r.loads[0]:.2f} before, {r.loads[1]:.2f} after"


def report(r: Result) -> list[str]:
    load = r.load
    floor = r.rows[FLOOR]
    n = int(r.rows[next(iter(r.rows))].facts.get("namespaces", 0))
    if load.legacy:
        what = (
            f"one with {load.busy:,} TIME-WAIT sockets, {load.pods} with a listener, 3 "
            f"connections and {load.timewait} TIME-WAIT sockets, {load.empty} empty"
        )
        busy = r.rows[LEGACY_PAIR[0]].busy
        what += (
            f"; TIME-WAIT sockets the exporter saw in the busy one, first to last poll: "
            f"{busy[0]:,} to {busy[-1]:,}"
        )
    else:
        what = (
            f"{load.pods} pod-shaped (a listener, 3 connections, {load.timewait} TIME-WAIT sockets)"
        )
    lines = [
        f"### {load.title}",
        "",
        f"{n} namespaces (the host's included): {what}; tcp_child_ehash_entries="
        f"{load.child_ehash} when they were created. TCP sockets on the machine (every "
        f"namespace): {r.alloc:,}; {load_text(r)}. "
        f"**Exporter / floor: {statistics.median(r.ratios):.2f}** (median of {len(r.ratios)} "
        f"rounds: {', '.join(f'{x:.2f}' for x in r.ratios)}).",
        "",
        "| method | median wall | min | max | median CPU | CPU / floor's | series | workers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, row in r.rows.items():
        if not row.walls:
            continue
        series = row.facts.get("series")
        workers = row.facts.get("workers")
        lines.append(
            f"| {LABELS[method]} | {fmt_ms(row.wall)} ms | {fmt_ms(min(row.walls))} ms | "
            f"{fmt_ms(max(row.walls))} ms | {fmt_ms(row.cpu)} ms | {row.cpu / floor.cpu:.2f} | "
            f"{f'{series:,}' if series is not None else '-'} | "
            f"{workers if workers is not None else '-'} |"
        )
    lines.append("")
    for detail, d in r.daemon.items():
        lines.append(
            f"Daemon, {detail} detail, polling every second: {d['series']:,.0f} series "
            f"({d['bytes'] / 1024:.0f} KiB), {d['scrapes']:.0f} scrapes, p50 "
            f"{d['p50_ms']:.1f} ms, p99 {d['p99_ms']:.1f} ms, max {d['max_ms']:.1f} ms; "
            f"{d['cpu_percent']:.1f} % of one core; last poll {d['poll_s'] * 1000:.0f} ms; "
            f"RSS {mib(d['rss'])} (peak {mib(d['hwm'])})."
        )
        lines.append("")
    nx = r.node
    lines += [
        f"node_exporter (default collectors, host namespace): {nx['series']:,.0f} series, "
        f"scrape {nx['wall_ms']:.0f} ms wall (median of 10), {nx['cpu_ms']:.0f} ms CPU (mean).",
        "",
    ]
    return lines


def pod_summary(results: list[Result]) -> list[str]:
    pods = [r for r in results if not r.load.legacy]
    if not pods:
        return []
    lines = [
        "### Summary: CPU per poll",
        "",
        "Medians per poll, wall / CPU; extra CPU per namespace = (exporter's CPU - floor's CPU) /"
        " namespaces (the host's included). The auto choice is the workers the default picked.",
        "",
        "| hash | pods | floor | default (auto: workers) | 1 worker | 2 workers | full detail | "
        "extra CPU per namespace, default | exporter CPU / floor's | machine load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in pods:
        rows, n = r.rows, r.load.pods + 1

        def cell(method: str, rows: dict[str, Row] = rows) -> str:
            row = rows[method]
            return f"{fmt_ms(row.wall)} / {fmt_ms(row.cpu)} ms"

        d = rows[DEFAULT]
        extra = (d.cpu - rows[FLOOR].cpu) / n
        lines.append(
            f"| {r.load.hash_kind} | {r.load.pods} | {cell(FLOOR)} | {cell(DEFAULT)} "
            f"({d.facts.get('workers')}) | {cell('exporter:compact:1')} | "
            f"{cell('exporter:compact:2')} | {cell('exporter:full:auto')} | "
            f"{extra * 1000:.3f} ms | {d.cpu / rows[FLOOR].cpu:.2f} | {machine(r)} |"
        )
    lines.append("")
    for kind in ("shared", "own"):
        same = [r for r in pods if r.load.hash_kind == kind]
        if len(same) < 2:
            continue
        small, large = same[0], same[-1]

        def beyond(r: Result) -> float:
            return r.rows[DEFAULT].cpu - r.rows[FLOOR].cpu

        slope = (beyond(large) - beyond(small)) / (large.load.pods - small.load.pods)
        lines.append(
            f"{kind.capitalize()} hash: exporter CPU beyond the floor's, per namespace added "
            f"from {small.load.pods} to {large.load.pods} pods: **{slope * 1000:.3f} ms** "
            f"(default flags; ({fmt_ms(beyond(large))} - {fmt_ms(beyond(small))} ms) / "
            f"{large.load.pods - small.load.pods})."
        )
        lines.append("")
    lines += goals(pods)
    lines += [
        "### Summary: series, memory, scrapes",
        "",
        "| hash | pods | series, compact | series, full | node_exporter series | "
        "daemon RSS compact / full (peak) | scrape p99 compact / full | machine load |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in pods:
        c, f = r.daemon.get("compact", {}), r.daemon.get("full", {})
        lines.append(
            f"| {r.load.hash_kind} | {r.load.pods} | {c.get('series', 0):,.0f} | "
            f"{f.get('series', 0):,.0f} | {r.node['series']:,.0f} | "
            f"{mib(c.get('rss', 0))} / {mib(f.get('rss', 0))} "
            f"({mib(c.get('hwm', 0))} / {mib(f.get('hwm', 0))}) | "
            f"{c.get('p99_ms', 0):.1f} / {f.get('p99_ms', 0):.1f} ms | {machine(r)} |"
        )
    lines.append("")
    return lines


def goals(pods: list[Result]) -> list[str]:
    """Issue 17's goals, read from the largest load of each hash kind."""
    lines = ["Issue 17's goals at the largest load:", ""]
    for r in pods:
        if r.load.pods != max(p.load.pods for p in pods):
            continue
        d, f = r.rows[DEFAULT], r.rows[FLOOR]
        series = r.daemon.get("compact", {}).get("series", 0)
        p99 = r.daemon.get("compact", {}).get("p99_ms", float("nan"))
        beyond = (d.cpu - f.cpu) / (r.load.pods + 1)
        lines.append(
            f"- {r.load.hash_kind} hash, {r.load.pods} pods (load {machine(r)}): "
            f"{series:,.0f} series with default flags "
            f"({'met' if series <= 2500 else 'NOT met'}: <= 2,500); "
            f"exporter CPU beyond the floor's {beyond * 1000:.2f} ms per namespace"
            + (
                f" ({'met' if beyond <= 0.0003 else 'NOT met'}: <= 0.3 ms)"
                if r.load.hash_kind == "own"
                else f"; CPU per poll {fmt_ms(d.cpu)} ms against the floor's {fmt_ms(f.cpu)} ms "
                f"({'met' if d.cpu <= f.cpu else 'NOT met'}: no more than the floor's)"
            )
            + f"; scrape p99 with polls every second {p99:.1f} ms"
            f" ({'met' if p99 <= 20 else 'NOT met'}: <= 20 ms)."
        )
    lines.append("")
    return lines


def from_json(path: Path) -> list[Result]:
    """The results a run wrote with --json, to report them again."""
    return [
        Result(
            Load(**r["load"]),
            {m: Row(**row) for m, row in r["rows"].items()},
            r["ratios"],
            r["daemon"],
            r["node_exporter"],
            (r["loadavg"][0], r["loadavg"][1]),
            r["alloc"],
            r["timewait_batches"],
        )
        for r in json.loads(path.read_text())
    ]


def sizing(results: list[Result], command: str) -> list[str]:
    """The README's table: series and samples/s per node at a 15 s scrape interval."""
    shared = [r for r in results if not r.load.legacy and r.load.hash_kind == "shared"]
    if not shared:
        return []
    nx = shared[-1].node
    lines = [
        SIZING_BEGIN,
        "",
        f"Series per node and samples/s per node at a {SCRAPE_INTERVAL} s scrape interval "
        "(series / 15), counted on the running daemon's /metrics (`exporter serve`, default "
        "flags but `--netns` naming the load) beside node_exporter's (default collectors, "
        "same run); each pod a namespace with a listener, 3 connections and 5 TIME-WAIT "
        "sockets, on the host's shared established hash. From "
        f"`{command}` ([docs/benchmarks.md](docs/benchmarks.md#many-namespaces) has every "
        "figure):",
        "",
        "| pods | compact (default): series | samples/s | full: series | samples/s | "
        "node_exporter: series | samples/s | machine load |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in shared:
        c, f = r.daemon["compact"]["series"], r.daemon.get("full", {}).get("series", 0)
        ns = r.node["series"]
        lines.append(
            f"| {r.load.pods} | {c:,.0f} | {c / SCRAPE_INTERVAL:,.0f} | {f:,.0f} | "
            f"{f / SCRAPE_INTERVAL:,.0f} | {ns:,.0f} | {ns / SCRAPE_INTERVAL:,.0f} | "
            f"{r.loads[0]:.2f}-{r.loads[1]:.2f} |"
        )
    lines += [
        "",
        f"node_exporter's count is this machine's (its netdev, disk and filesystem series); it "
        f"does not grow with these namespaces, which have only `lo`. On a real node each pod's "
        f"veth adds {nx['per_interface']:.0f} node_exporter series (its per-interface series "
        "here, counted on `lo`).",
        "",
        SIZING_END,
    ]
    return lines


def one_load(
    load: Load, rounds: int, scrape_seconds: float, details: list[str], nx: NodeExporter
) -> Result:
    before = loadavg()
    with node(load) as (names, keeper):
        alloc = tcp_alloc()
        if load.legacy:
            rows, ratios = measure(names, keeper, LEGACY_PAIR, LEGACY_EXTRA, rounds)
        else:
            rows, ratios = measure(names, keeper, POD_METHODS, [], rounds)
        daemon = {
            detail: scrape_daemon(names, scrape_seconds, "--metrics.detail", detail)
            for detail in details
        }
        node_figures = nx.scrape()
        batches = keeper.batches
    return Result(load, rows, ratios, daemon, node_figures, (before, loadavg()), alloc, batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pods", default="10,100,250", help="sizes of the pod-shaped loads")
    parser.add_argument("--child-ehash", type=int, default=65536)
    parser.add_argument("--busy", type=int, default=0, help="also the loads from before issue 17")
    parser.add_argument("--scrape-seconds", type=float, default=15)
    parser.add_argument("--markdown", type=Path, help="replace the node section of this file")
    parser.add_argument("--readme", type=Path, help="replace the sizing table of this file")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--from-json", type=Path, help="measure nothing: report this file's")
    parser.add_argument("--command", help="with --from-json: the command that measured it")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark builds network namespaces")
    if shutil.which(NODE_EXPORTER) is None:
        raise SystemExit(f"{NODE_EXPORTER} missing: apt-get install prometheus-node-exporter")
    raise_fd_limit()
    sizes = [int(s) for s in args.pods.split(",") if s]
    loads = [Load(f"{n} pods, shared established hash", n) for n in sizes] + [
        Load(f"{n} pods, hashes of their own", n, child_ehash=args.child_ehash) for n in sizes
    ]
    if args.busy:
        loads += [
            Load("Node-shaped (before issue 17)", 40, 2, busy=args.busy, empty=30),
            Load("250 namespaces (before issue 17)", 140, 2, busy=args.busy, empty=109),
            Load(
                "Node-shaped, tcp_child_ehash_entries set (before issue 17)",
                40, 2, args.child_ehash, args.busy, 30,
            ),
        ]  # fmt: skip
    command = (
        f"python -m benchmarks.node --rounds {args.rounds} --pods {args.pods} "
        f"--scrape-seconds {args.scrape_seconds:g}"
        + (f" --busy {args.busy}" if args.busy else "")
        + (f" --markdown {args.markdown}" if args.markdown else "")
        + (f" --readme {args.readme}" if args.readme else "")
    )
    results: list[Result] = []
    if args.from_json:
        results = from_json(args.from_json)
        command = args.command or command
        loads = []
    nx = NodeExporter() if loads else None
    try:
        for load in loads:
            assert nx is not None
            details = ["compact"] if load.legacy else ["compact", "full"]
            result = one_load(load, args.rounds, args.scrape_seconds, details, nx)
            print("\n".join(report(result)), flush=True)
            results.append(result)
    finally:
        if nx is not None:
            nx.close()
    if args.json and not args.from_json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "load": r.load.__dict__,
                        "rows": {m: row.__dict__ for m, row in r.rows.items()},
                        "ratios": r.ratios,
                        "daemon": r.daemon,
                        "node_exporter": r.node,
                        "loadavg": r.loads,
                        "alloc": r.alloc,
                        "timewait_batches": r.timewait_batches,
                    }
                    for r in results
                ],
                indent=1,
            )
        )
    summary = pod_summary(results)
    print("\n".join(summary), flush=True)
    table = sizing(results, command)
    print("\n".join(table), flush=True)
    section = [
        BEGIN,
        "## Many namespaces",
        "",
        "Produced by:",
        "",
        f"    {command}",
        "",
        *(__doc__ or "").split("\n\n", 2)[2].splitlines(),
        "",
        *summary,
    ]
    for r in results:
        section += report(r)
    section.append(END)
    if args.markdown:
        write_section(args.markdown, BEGIN, END, "\n".join(section))
    if args.readme and table:
        write_section(args.readme, SIZING_BEGIN, SIZING_END, "\n".join(table))


if __name__ == "__main__":
    main()
