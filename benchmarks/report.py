"""`timewait-exporter report` timed as a user runs it, a fresh process each time (interpreter
start and imports included), beside the `ss` pipelines it replaces, in the same run. As
root, from a fresh clone:

    python -m benchmarks.report --markdown docs/benchmarks.md

Loads, each `--rounds` times (median, wall and CPU of the process and its children):
1. this machine as it is;
2. plus one namespace holding about 100,000 TIME-WAIT sockets in 512 buckets
   (benchmarks/loadgen.c);
3. plus, beside that one, 200 namespaces with one listener each: every one of them is
   dumped, and with the shared established hash (tcp_child_ehash_entries=0) each dump walks
   the whole node's table.
The peers: in the loaded namespace, `ss -tan` piped into a count per state and per
destination (what the report's first tables give); with 200 namespaces, the TIME-WAIT count
`ss` gives per namespace, looped over all of them. Writes its table between the REPORT
markers of the markdown file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from benchmarks.load import loaded_namespace
from benchmarks.markdown import write_section

ROOT = Path(__file__).resolve().parent.parent
REPORT_BEGIN, REPORT_END = "<!-- REPORT_BEGIN -->", "<!-- REPORT_END -->"
REPORT = [sys.executable, "-m", "exporter", "report"]
REPORT_LABEL = "`timewait-exporter report`"
STATES_AND_DESTINATIONS = (
    "ss -tanH | awk '{print $1}' | sort | uniq -c >/dev/null; "
    "ss -tanH | awk '{print $5}' | sort | uniq -c | sort -rn | head >/dev/null"
)


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run: CPU is user + system of the process and every
    child it waited for (wait4's rusage)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stderr is not None
    errors = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode not in (0, 3):  # 3: --fail-on met, not an error
        raise RuntimeError(f"{argv[:4]} exited {proc.returncode}: {errors[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime


@contextmanager
def listening_namespaces(count: int) -> Iterator[list[str]]:
    """count namespaces, lo up, one listener each (so that sockstat shows a TCP socket and
    the namespace is dumped, not skipped), the listeners held by one process per namespace."""
    names = [f"twrep-{os.getpid()}-{i}" for i in range(count)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
            procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", name, "python3", "-c",
                     "import socket, sys, time\n"
                     "s = socket.socket(); s.bind(('127.0.0.1', 8080)); s.listen()\n"
                     "print('ready', flush=True); time.sleep(3600)"],
                    stdout=subprocess.PIPE,
                )
            )  # fmt: skip
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError("a listener did not start")
        yield names
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False)


def namespaces_now() -> int:
    inodes = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                inodes.add(os.stat(f"/proc/{pid}/ns/net").st_ino)
            except OSError:
                continue
    run = Path("/run/netns")
    for entry in run.iterdir() if run.is_dir() else ():
        try:
            inodes.add(entry.stat().st_ino)
        except OSError:
            continue
    return len(inodes)


def median_of(rounds: int, run: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    results = [run() for _ in range(rounds)]
    return (
        statistics.median(r[0] for r in results),
        statistics.median(r[1] for r in results),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--namespaces", type=int, default=200)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    rows: list[tuple[str, str, float, float]] = []

    def row(load: str, method: str, result: tuple[float, float]) -> None:
        print(load, method, f"wall {result[0]:.2f} s, CPU {result[1]:.2f} s", flush=True)
        rows.append((load, method, *result))

    count = namespaces_now()
    as_is = f"this machine as it is ({count} network namespace{'s' if count != 1 else ''})"
    row(as_is, REPORT_LABEL, median_of(args.rounds, lambda: timed(REPORT)))
    with loaded_namespace(args.connections) as loaded:
        # TIME-WAIT sockets last 60 s: every round of this load runs within them.
        load = f"+ one namespace with {args.connections:,} TIME-WAIT sockets in 512 buckets"
        row(load, REPORT_LABEL, median_of(args.rounds, lambda: timed(REPORT)))
        pipeline = loaded.exec("sh", "-c", STATES_AND_DESTINATIONS)
        row(load, "`ss -tan` counted per state and per destination in that namespace",
            median_of(args.rounds, lambda: timed(pipeline)))  # fmt: skip
    with ExitStack() as stack:
        names = stack.enter_context(listening_namespaces(args.namespaces))
        loaded = stack.enter_context(loaded_namespace(args.connections))
        load = (
            f"+ {args.namespaces} namespaces with one listener each, beside the one with "
            f"{args.connections:,} TIME-WAIT sockets (shared established hash)"
        )
        row(load, REPORT_LABEL, median_of(args.rounds, lambda: timed(REPORT)))
        loop = " ".join([*names, loaded.name])
        script = (
            f"for ns in {loop}; do ip netns exec $ns ss -tanH state time-wait | wc -l; "
            "done >/dev/null"
        )
        row(load, "`ss -tan state time-wait` counted in each namespace, in a loop",
            median_of(args.rounds, lambda: timed(["sh", "-c", script])))  # fmt: skip
    lines = [
        REPORT_BEGIN,
        "## `report`, timed as a user runs it",
        "",
        f"`python -m benchmarks.report`: a fresh process per run (interpreter start and "
        f"imports included), median of {args.rounds} runs, wall and CPU (user + system of "
        "the process and its children). The report polls twice, 5 s apart.",
        "",
        "| load | what | wall s | CPU s |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {load} | {method} | {wall:.2f} | {cpu:.2f} |" for load, method, wall, cpu in rows]
    beyond = ", ".join(f"{wall - 5:.2f} s" for _, method, wall, _ in rows if method == REPORT_LABEL)
    lines += [
        "",
        f"Wall time beyond the 5 s window (`--window`), per load in order: {beyond}: the "
        "interpreter's start, the imports, two polls and the rendering.",
        REPORT_END,
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        write_section(args.markdown, REPORT_BEGIN, REPORT_END, text)


if __name__ == "__main__":
    main()
