"""A/B: this tree's poll against another tree's, alternated on the same load in the same
run, so that a regression shows beyond what the machine's load does to both. As root:

    git archive cba6009 | (mkdir -p /tmp/old && tar -x -C /tmp/old)
    python -m benchmarks.ab --old /tmp/old --sizes 1000000 --rounds 7

Per load: one namespace filled by benchmarks/loadgen.c (benchmarks/load.py), then a
worker of each tree inside it (`python -m benchmarks.worker`, each run from its own tree,
so each imports its own exporter/), warmed up, then `--rounds` rounds of: this tree's
full poll, the other's, the floor (the kernel's dumps received and discarded), in an
order that rotates each round. The ratio new / old is taken within each round; the
figure is the median of those, with the smallest and largest beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.load import loaded_namespace
from benchmarks.markdown import write_section
from benchmarks.run import AB_BEGIN, AB_END, LOAD_TITLES, ROOT


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


class Worker:
    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def ask(self, method: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(method + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def ab(load: str, size: int, old: Path, rounds: int) -> dict[str, Any]:
    before = loadavg()
    with loaded_namespace(size, load=load) as loaded:
        argv = loaded.exec(sys.executable, "-m", "benchmarks.worker")
        workers = {"new": Worker(argv, ROOT), "old": Worker(argv, old)}
        runs: dict[str, list[dict[str, Any]]] = {"new": [], "old": [], "floor": []}
        try:
            for worker in workers.values():
                worker.ask("exporter")  # warm-up: imports, first allocation
            steps = ["new", "old", "floor"]
            for r in range(rounds):
                for step in steps[r % 3 :] + steps[: r % 3]:
                    if step == "floor":
                        runs[step].append(workers["new"].ask("floor"))
                    else:
                        runs[step].append(workers[step].ask("exporter"))
        finally:
            for worker in workers.values():
                worker.close()
    walls = {k: [a["wall"] for a in v] for k, v in runs.items()}
    cpus = {k: [a["cpu"] for a in v] for k, v in runs.items()}
    ratios = [n / o for n, o in zip(walls["new"], walls["old"], strict=True)]
    cpu_ratios = [n / o for n, o in zip(cpus["new"], cpus["old"], strict=True)]
    return {
        "load": load,
        "size": size,
        "walls": walls,
        "cpus": cpus,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "rss": {k: runs[k][-1]["rss"] for k in ("new", "old")},
        "timewait": {k: [a["timewait"] for a in runs[k]] for k in ("new", "old")},
        "loadavg": (before, loadavg()),
    }


# One poll of the host and the named namespaces, then rendered as text once, on one worker
# and at full detail: what both trees can do. The imports of either layout (before and
# after the modules moved into subpackages).
NODE_WORKER = """
import json, re, resource, sys, time
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry
from exporter import log
labels = frozenset({"host", *sys.argv[1:]})
try:
    from exporter.config import Config
    from exporter.engine.collector import SnapshotCollector
    from exporter.engine.poller import Poller
    from exporter.netns.context import raise_fd_limit
    config = Config(netns=labels, detail="full", poll_workers=1)
except ImportError:
    from exporter.collector import SnapshotCollector
    from exporter.config import Config
    from exporter.context import raise_fd_limit
    from exporter.poller import Poller
    from exporter.sources.netstat import DEFAULT_FIELDS
    config = Config(netstat_fields=re.compile(DEFAULT_FIELDS), netns=labels, poll_workers=1)
log.configure("warning", "json")
raise_fd_limit()
collector = SnapshotCollector(config)
registry = CollectorRegistry(auto_describe=False)
registry.register(collector)
poller = Poller(config)
def cpu():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime
for line in sys.stdin:
    c, t = cpu(), time.perf_counter()
    snapshot = poller.poll_once()
    collector.update(snapshot)
    text = generate_latest(registry)
    wall, used = time.perf_counter() - t, cpu() - c
    series = sum(1 for s in text.splitlines() if s and not s.startswith(b"#"))
    print(json.dumps({"wall": wall, "cpu": used, "series": series,
                      "namespaces": len(snapshot.namespaces)}), flush=True)
"""


def ab_node(pods: int, old: Path, rounds: int) -> dict[str, Any]:
    """The same A/B on `pods` pod-shaped namespaces of benchmarks.node on the shared hash."""
    from benchmarks.node import Load, node

    before = loadavg()
    with node(Load(f"{pods} pods", pods)) as (names, keeper):
        argv = [sys.executable, "-c", NODE_WORKER, *names]
        workers = {"new": Worker(argv, ROOT), "old": Worker(argv, old)}
        runs: dict[str, list[dict[str, Any]]] = {"new": [], "old": []}
        try:
            for worker in workers.values():
                for _ in range(2):  # opens every namespace; first allocations
                    worker.ask("poll")
            for r in range(rounds):
                for step in ("new", "old") if r % 2 == 0 else ("old", "new"):
                    with keeper.lock:  # no TIME-WAIT socket made during a timed poll
                        runs[step].append(workers[step].ask("poll"))
        finally:
            for worker in workers.values():
                worker.close()
    walls = {k: [a["wall"] for a in v] for k, v in runs.items()}
    cpus = {k: [a["cpu"] for a in v] for k, v in runs.items()}
    return {
        "load": "pods",
        "size": pods,
        "walls": walls,
        "cpus": cpus,
        "ratios": [n / o for n, o in zip(walls["new"], walls["old"], strict=True)],
        "cpu_ratios": [n / o for n, o in zip(cpus["new"], cpus["old"], strict=True)],
        "series": {k: runs[k][-1]["series"] for k in runs},
        "namespaces": {k: runs[k][-1]["namespaces"] for k in runs},
        "loadavg": (before, loadavg()),
    }


def node_lines(result: dict[str, Any]) -> list[str]:
    walls, cpus, ratios, cpu_ratios = (
        result["walls"], result["cpus"], result["ratios"], result["cpu_ratios"]
    )  # fmt: skip

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.0f} ms"

    return [
        f"| {result['namespaces']['new']} namespaces: {result['size']} pod-shaped and the "
        f"host, shared hash | {ms(walls['old'])} / {ms(cpus['old'])} | {ms(walls['new'])} / "
        f"{ms(cpus['new'])} | {statistics.median(ratios):.3f} ({min(ratios):.2f}-"
        f"{max(ratios):.2f}) | {statistics.median(cpu_ratios):.3f} ({min(cpu_ratios):.2f}-"
        f"{max(cpu_ratios):.2f}) | {result['series']['old']:,} / {result['series']['new']:,} | "
        f"{result['loadavg'][0]:.2f}-{result['loadavg'][1]:.2f} |"
    ]


NODE_HEADER = [
    "| load | old poll + text wall / CPU | new poll + text wall / CPU | new / old wall, median "
    "of rounds (range) | new / old CPU | series old / new | machine load |",
    "|---|---|---|---|---|---|---|",
]


def lines(result: dict[str, Any]) -> list[str]:
    walls, cpus = result["walls"], result["cpus"]

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.0f} ms"

    ratios, cpu_ratios = result["ratios"], result["cpu_ratios"]
    return [
        f"| {result['size']:,} {LOAD_TITLES[result['load']]} | {ms(walls['floor'])} / "
        f"{ms(cpus['floor'])} | {ms(walls['old'])} / {ms(cpus['old'])} | {ms(walls['new'])} / "
        f"{ms(cpus['new'])} | {statistics.median(ratios):.3f} ({min(ratios):.2f}-"
        f"{max(ratios):.2f}) | {statistics.median(cpu_ratios):.3f} ({min(cpu_ratios):.2f}-"
        f"{max(cpu_ratios):.2f}) | {result['rss']['old'] / 2**20:.0f} / "
        f"{result['rss']['new'] / 2**20:.0f} MiB | {result['loadavg'][0]:.2f}-"
        f"{result['loadavg'][1]:.2f} |"
    ]


HEADER = [
    "| load | floor wall / CPU | old poll wall / CPU | new poll wall / CPU | new / old wall, "
    "median of rounds (range) | new / old CPU | peak RSS old / new | machine load |",
    "|---|---|---|---|---|---|---|---|",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the other tree")
    parser.add_argument("--sizes", default="1000000")
    parser.add_argument("--loads", default="buckets,distinct-out,distinct-in")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--node-pods", default="", help="also these pod-shaped loads")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--from-json", type=Path, help="measure nothing: report this file's")
    parser.add_argument("--label", default="", help="what the other tree is (for the report)")
    parser.add_argument("--note", default="", help="a reading of the figures (for the report)")
    parser.add_argument("--markdown", type=Path, help="replace the A/B section of this file")
    args = parser.parse_args()
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        results = [
            ab(load, int(size), args.old, args.rounds)
            for size in args.sizes.split(",")
            if int(size)
            for load in args.loads.split(",")
        ]
        results += [ab_node(int(p), args.old, args.rounds) for p in args.node_pods.split(",") if p]
    socket_results = [r for r in results if r["load"] != "pods"]
    node_results = [r for r in results if r["load"] == "pods"]
    out = (HEADER + [line for r in socket_results for line in lines(r)]) if socket_results else []
    if node_results:
        out += [""] if out else []
        out += NODE_HEADER + [line for r in node_results for line in node_lines(r)]
    print("\n".join(out))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.markdown:
        rounds = len(results[0]["ratios"]) if results else args.rounds
        section = [
            AB_BEGIN,
            "## A/B against an earlier tree",
            "",
            f"    python -m benchmarks.ab --old OLD --sizes {args.sizes} --loads {args.loads} "
            f"--rounds {rounds}" + (f" --node-pods {args.node_pods}" if args.node_pods else ""),
            "",
            f"OLD: {args.label or args.old} " + " ".join(__doc__.split("\n\n")[2].split()),
            "",
            *out,
            "",
            *([args.note, ""] if args.note else []),
            AB_END,
        ]
        write_section(args.markdown, AB_BEGIN, AB_END, "\n".join(section))


if __name__ == "__main__":
    main()
