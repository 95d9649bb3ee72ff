"""The exporter's poll side by side with the kernel floor, ss and node_exporter, in the same
run and the same namespace. As root, from a fresh clone:

    python -m benchmarks.run --markdown docs/benchmarks.md

Per size: a fresh namespace filled by benchmarks/loadgen.c, then `--rounds` rounds in
which every method runs once (the order rotates each round, so TIME-WAIT sockets expiring
near the end of the 60 s window cost every method alike), then node_exporter's rounds on
their own (see measure). Then, at the largest size, the
latency of /metrics scrapes while polls run back to back; the decoders compared on one
capture; the idle daemon's CPU with 10,000 sockets at the default 15 s interval.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.decoders import compare
from benchmarks.load import Loaded, loaded_namespace
from benchmarks.worker import process_cpu

ROOT = Path(__file__).resolve().parent.parent
NODE_EXPORTER = "prometheus-node-exporter"
# benchmarks/node.py writes its section of the report between these markers.
NODE_BEGIN, NODE_END = "<!-- NODE_BEGIN -->", "<!-- NODE_END -->"
# ... and benchmarks/http_load.py and soak.py theirs between these.
HTTP_BEGIN, HTTP_END = "<!-- HTTP_BEGIN -->", "<!-- HTTP_END -->"
EVENTS_BEGIN, EVENTS_END = "<!-- EVENTS_BEGIN -->", "<!-- EVENTS_END -->"  # benchmarks.events
REPORT_BEGIN, REPORT_END = "<!-- REPORT_BEGIN -->", "<!-- REPORT_END -->"  # benchmarks.report
AB_BEGIN, AB_END = "<!-- AB_BEGIN -->", "<!-- AB_END -->"  # benchmarks.ab
LATENCY_BEGIN, LATENCY_END = "<!-- LATENCY_BEGIN -->", "<!-- LATENCY_END -->"  # .latency
LABELS = {
    "exporter": "timewait-exporter full poll",
    "floor": "kernel dump, received and discarded (floor)",
    "floor-v2": "per-family dumps as ss makes them, received and discarded",
    "node": "node_exporter tcpstat (scrape)",
    "ss-tw": "`ss -tan state time-wait >/dev/null`",
    "ss-all": "`ss -tan >/dev/null`",
}


FLOOR_TEXT = """\
The floor is the exporter's own requests received and thrown away: one `TCPDIAG_GETSOCK`
dump of listeners and one of every other state, each returning both families from one
walk of the established hash. `ss` asks per family (`SOCK_DIAG_BY_FAMILY`), which walks
the table twice; that row is the floor of the reports before the exporter switched
requests."""


@dataclass
class Result:
    method: str
    walls: list[float]
    cpus: list[float]
    rss: int
    timewait: list[int]
    bucket_timewait: int = 0  # over every bucket series, `other` included
    ss_timewait: int = 0  # `ss -tanH state time-wait`, right after

    @property
    def median(self) -> float:
        return statistics.median(self.walls)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(loaded: Loaded, url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    probe = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=60).read()"
    while time.monotonic() < deadline:
        ok = subprocess.run(loaded.exec(sys.executable, "-c", probe), capture_output=True)
        if ok.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def measure(loaded: Loaded, rounds: int, with_node: bool) -> dict[str, Result]:
    """Every method `rounds` times, in rotating order, then node_exporter on its own: with
    node_exporter resident after its million-socket scrapes, the exporter's polls of the
    inbound-distinct load slowed by up to a quarter and its RSS grew (node_exporter used
    no CPU meanwhile; the cause is not pinned down), so it does not share the first phase."""
    worker = subprocess.Popen(
        loaded.exec(sys.executable, "-m", "benchmarks.worker"),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdin is not None and worker.stdout is not None
    results: dict[str, Result] = {}

    def ask(method: str) -> dict[str, Any]:
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write(method + "\n")
        worker.stdin.flush()
        answer: dict[str, Any] = json.loads(worker.stdout.readline())
        return answer

    def run_rounds(methods: list[str]) -> None:
        for r in range(rounds):
            for method in methods[r % len(methods) :] + methods[: r % len(methods)]:
                answer = ask(method)
                name = answer["method"]
                result = results.setdefault(name, Result(name, [], [], 0, []))
                result.walls.append(answer["wall"])
                result.cpus.append(answer["cpu"])
                if name == "exporter":
                    result.rss = answer["rss"]
                    result.timewait.append(answer["timewait"])

    node = None
    try:
        ask("exporter")  # warm-up: imports, first allocation
        run_rounds(["exporter", "floor", "floor-v2", "ss-tw", "ss-all"])
        # Exactness: the bucket series' TIME-WAIT sum against ss, back to back.
        exact = [ask(method) for method in ("exporter", "ss-count")]
        results["exporter"].bucket_timewait = exact[0]["in_buckets"]
        results["exporter"].ss_timewait = exact[1]["timewait"]
        if with_node:
            port = free_port()
            node = subprocess.Popen(
                loaded.exec(
                    NODE_EXPORTER,
                    "--collector.disable-defaults",
                    "--collector.tcpstat",
                    f"--web.listen-address=127.0.0.1:{port}",
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_http(loaded, f"http://127.0.0.1:{port}/metrics")
            run_rounds([f"node:{port}:{node.pid}"])
            from benchmarks.worker import vm_hwm_bytes

            results["node"].rss = vm_hwm_bytes(node.pid)
    finally:
        worker.stdin.close()
        worker.wait()
        if node is not None:
            node.kill()
            node.wait()
    return results


def start_daemon(loaded: Loaded, port: int, *flags: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        loaded.exec(
            sys.executable,
            "-m",
            "exporter",
            "serve",
            *flags,
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--log.level",
            "error",
        ),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def scrape_latency(loaded: Loaded, seconds: float) -> dict[str, float]:
    """Scrape /metrics every 20 ms while the daemon polls back to back (interval 0.1 s:
    each poll overruns it, so a poll is nearly always running)."""
    port = free_port()
    daemon = start_daemon(loaded, port, "--poll.interval", "0.1")
    code = f"""
import json, time, urllib.request
url = "http://127.0.0.1:{port}/metrics"
def ready():
    try:
        return b"tcptw_sockets" in urllib.request.urlopen(url).read()
    except OSError:
        return False
deadline = time.monotonic() + 60
while not ready() and time.monotonic() < deadline:
    time.sleep(0.1)
lat = []
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    t = time.perf_counter(); urllib.request.urlopen(url).read(); lat.append(time.perf_counter() - t)
    time.sleep(0.02)
body = urllib.request.urlopen(url).read().decode()
print(json.dumps({{"lat": lat, "body": body}}))
"""
    try:
        out = subprocess.run(
            loaded.exec(sys.executable, "-c", code),
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 120,
        ).stdout
    finally:
        daemon.terminate()
        daemon.wait()
    data = json.loads(out)
    lat = np.array(data["lat"]) * 1000
    overruns = [
        line for line in data["body"].splitlines() if line.startswith("tcptw_poll_overruns_total")
    ]
    return {
        "scrapes": float(len(lat)),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "overruns": float(overruns[0].split()[1]) if overruns else 0.0,
    }


def idle_cpu(loaded: Loaded, seconds: float) -> dict[str, float]:
    """The daemon at the default 15 s interval: CPU used over `seconds`, after start-up."""
    port = free_port()
    daemon = start_daemon(loaded, port)
    try:
        wait_http(loaded, f"http://127.0.0.1:{port}/metrics")
        pid = daemon.pid  # `ip netns exec` execs the daemon: same pid
        before, start = process_cpu(pid), time.monotonic()
        time.sleep(seconds)
        used, wall = process_cpu(pid) - before, time.monotonic() - start
    finally:
        daemon.terminate()
        daemon.wait()
    return {"seconds": wall, "cpu_seconds": used, "percent_of_one_core": 100 * used / wall}


LOAD_TITLES = {
    "buckets": "in 512 buckets",
    "distinct-out": "each outbound toward its own destination address",
    "distinct-in": "each inbound from its own client address",
}


def loadavg() -> float:
    """The machine's 1-minute load average (other work shares it: every figure names it)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def table(
    size: int, load: str, loaded: Loaded, results: dict[str, Result], loads: tuple[float, float]
) -> list[str]:
    floor = results["floor"].median
    exporter = results["exporter"]
    same = "equal" if exporter.bucket_timewait == exporter.ss_timewait else "DIFFERENT"
    if same != "equal" and min(exporter.timewait) < loaded.sockets * 0.9:
        same += ": sockets were expiring, 60 s after they were made, between the two counts"
    lines = [
        f"### {size:,} connections {LOAD_TITLES[load]} ({loaded.sockets:,} sockets asked for; "
        f"TIME-WAIT seen by the exporter: {min(exporter.timewait):,}-{max(exporter.timewait):,}; "
        f"generated in {loaded.seconds:.1f} s)",
        "",
        f"Machine load (1-minute average) {loads[0]:.2f} before, {loads[1]:.2f} after.",
        "",
        f"TIME-WAIT over every bucket series, `other` included: {exporter.bucket_timewait:,}; "
        f"`ss -tanH state time-wait` right after: {exporter.ss_timewait:,} ({same}).",
        "",
        "| method | median wall | min | max | median CPU | peak RSS | wall / floor | "
        "exporter speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("floor", "exporter", "floor-v2", "node", "ss-tw", "ss-all"):
        if name not in results:
            continue
        r = results[name]
        rss = f"{r.rss / 2**20:.0f} MiB" if r.rss else "-"
        speedup = "-" if name in ("exporter", "floor") else f"{r.median / exporter.median:.2f} x"
        lines.append(
            f"| {LABELS[name]} | {r.median * 1000:.0f} ms | {min(r.walls) * 1000:.0f} ms | "
            f"{max(r.walls) * 1000:.0f} ms | {statistics.median(r.cpus) * 1000:.0f} ms | {rss} | "
            f"{r.median / floor:.2f} | {speedup} |"
        )
    return lines


def machine() -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 2**20
    node = subprocess.run([NODE_EXPORTER, "--version"], capture_output=True, text=True)
    ss = subprocess.run(["ss", "--version"], capture_output=True, text=True).stdout.strip()
    return [
        f"- kernel {platform.release()}, {os.cpu_count()} cores ({cpu}), {mem} GiB",
        f"- Python {platform.python_version()}, numpy {np.__version__}",
        f"- {(node.stdout or node.stderr).splitlines()[0]}; {ss}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,300000,1000000", help="of the 512-bucket load")
    parser.add_argument(
        "--distinct-sizes",
        default="200000,1000000",
        help="of the loads with one bucket per connection (0: skip them)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scrape-seconds", type=float, default=10)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--no-node-exporter", action="store_true")
    parser.add_argument(
        "--decoders",
        type=int,
        default=100_000,
        help="connections for the decoder comparison (0: skip)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark builds network namespaces")
    with_node = not args.no_node_exporter
    if with_node and shutil.which(NODE_EXPORTER) is None:
        raise SystemExit(f"{NODE_EXPORTER} missing: apt-get install prometheus-node-exporter")
    sizes = [int(s) for s in args.sizes.split(",") if int(s)]
    runs = [("buckets", size) for size in sizes]
    distinct = [int(s) for s in args.distinct_sizes.split(",") if int(s)]
    runs += [(load, size) for load in ("distinct-out", "distinct-in") for size in distinct]
    report = [
        "# Benchmarks",
        "",
        "Produced by:",
        "",
        f"    python -m benchmarks.run --sizes {args.sizes} --distinct-sizes "
        f"{args.distinct_sizes} --rounds {args.rounds}"
        + (f" --markdown {args.markdown}" if args.markdown else ""),
        "",
        "and, for the sections marked below, `benchmarks.node`, `benchmarks.latency`,",
        "`benchmarks.http_load`, `benchmarks.soak`, `benchmarks.events`, `benchmarks.report` and",
        "`benchmarks.ab` (each names its command).",
        "",
        "On this machine:",
        "",
        *machine(),
        "",
        "The machine is shared with other work (test suites, VMs): each figure names the",
        "1-minute load average measured before and after it. With 2 cores, a load above 2",
        "means the exporter's receiver and decoder threads rarely ran side by side.",
        "",
        *FLOOR_TEXT.splitlines(),
        "",
    ]
    headline = []
    for load, size in runs:
        before = loadavg()
        with loaded_namespace(size, load=load) as loaded:
            results = measure(loaded, args.rounds, with_node)
        lines = table(size, load, loaded, results, (before, loadavg()))
        print("\n".join(lines), "", sep="\n", flush=True)
        report += [*lines, ""]
        exporter = results["exporter"]
        exact = exporter.bucket_timewait == exporter.ss_timewait
        headline.append(
            (
                load,
                size,
                exporter.median / results["floor"].median,
                exporter.rss,
                exact,
                f"{before:.2f}-{loadavg():.2f}",
            )
        )
    report += [
        "### Summary",
        "",
        "| load | sockets | poll / floor | exporter peak RSS | bucket TIME-WAIT sum = ss | "
        "machine load |",
        "|---|---|---|---|---|---|",
    ]
    report += [
        f"| {LOAD_TITLES[load]} | {s:,} | {r:.2f} | {rss / 2**20:.0f} MiB | "
        f"{'yes' if exact else 'NO'} | {machine} |"
        for load, s, r, rss, exact, machine in headline
    ]
    report.append("")
    if args.decoders > 0:
        before = loadavg()
        lines = compare(args.decoders, 10_000)
        lines += ["", f"Machine load {before:.2f} before, {loadavg():.2f} after."]
        print("\n".join(lines), flush=True)
        report += ["### Why numpy", "", *lines, ""]
    if args.scrape_seconds > 0:
        before = loadavg()
        with loaded_namespace(max(sizes)) as loaded:
            lat = scrape_latency(loaded, args.scrape_seconds)
        text = (
            f"Scrapes of /metrics while {max(sizes):,}-connection polls ran back to back: "
            f"{lat['scrapes']:.0f} scrapes, p50 {lat['p50_ms']:.1f} ms, "
            f"p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms "
            f"({lat['overruns']:.0f} poll overruns counted); machine load {before:.2f} before, "
            f"{loadavg():.2f} after."
        )
        print(text, flush=True)
        report += ["### Scrape latency during polls", "", text, ""]
    if args.idle_seconds > 0:
        before = loadavg()
        with loaded_namespace(10_000, established=100) as loaded:
            idle = idle_cpu(loaded, args.idle_seconds)
        text = (
            f"Idle daemon, 10,000 sockets, default 15 s interval: "
            f"{idle['cpu_seconds']:.2f} s CPU in {idle['seconds']:.0f} s = "
            f"{idle['percent_of_one_core']:.2f} % of one core; machine load {before:.2f} "
            f"before, {loadavg():.2f} after."
        )
        print(text, flush=True)
        report += ["### Idle cost", "", text, ""]
    if args.markdown:
        # Keep the sections other benchmarks write into the file (many namespaces, HTTP,
        # socket-destroy events, report).
        old = args.markdown.read_text() if args.markdown.exists() else ""
        for begin, end in (
            (NODE_BEGIN, NODE_END),
            (LATENCY_BEGIN, LATENCY_END),
            (HTTP_BEGIN, HTTP_END),
            (EVENTS_BEGIN, EVENTS_END),
            (REPORT_BEGIN, REPORT_END),
            (AB_BEGIN, AB_END),
        ):
            if begin in old and end in old:
                kept = old.split(begin, 1)[1].split(end, 1)[0]
                report += ["", begin + kept + end, ""]
        args.markdown.write_text("\n".join(report))


if __name__ == "__main__":
    main()
