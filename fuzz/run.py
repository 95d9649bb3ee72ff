"""Run the atheris targets of fuzz/targets.py for a bounded time; exit 1 on any finding.

    python fuzz/run.py --seconds 5                  # every target, 5 s each (what CI runs)
    python fuzz/run.py --target netlink --seconds 3600
    python fuzz/run.py --target netlink --reproduce fuzz/out/crashes/netlink-crash-<sha1>

Each target runs in its own process (libFuzzer: -max_total_time, -rss_limit_mb, -timeout
per input), `--jobs` at a time. Its corpus is fuzz/out/corpus/<target>/ (kept between
runs, so a long run goes on from where the last stopped) plus seeds written from
tests/fixtures into fuzz/out/seeds/<target>/; findings go to fuzz/out/crashes/ as
<target>-crash-<sha1> (or -timeout-, -oom-, -leak-). fuzz/out/ is not in git.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SLICE = 60  # seconds per libFuzzer process at most (see run_target)
TARGETS_PY = HERE / "targets.py"
NAMES = (
    "netlink",
    "tally",
    "bytecode",
    "netstat",
    "snmp",
    "sockstat",
    "slab",
    "sysctl",
    "mountinfo",
    "pods",
)  # TARGETS in targets.py (not imported here: that needs atheris and instruments)


@dataclass(frozen=True)
class Result:
    target: str
    returncode: int
    executions: int
    seconds: float
    findings: tuple[Path, ...]
    log: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.findings


def write_seeds(target: str, seeds_dir: Path) -> None:
    """The target's seeds from tests/fixtures (written by targets.py: it needs atheris)."""
    shutil.rmtree(seeds_dir, ignore_errors=True)
    seeds_dir.mkdir(parents=True)
    command = [sys.executable, str(TARGETS_PY), target, "--write-seeds", str(seeds_dir)]
    subprocess.run(command, check=True, capture_output=True)


def run_target(target: str, seconds: int, out: Path, rss_limit_mb: int, timeout: int) -> Result:
    corpus = out / "corpus" / target
    seeds = out / "seeds" / target
    crashes = out / "crashes"
    for directory in (corpus, crashes, out / "logs"):
        directory.mkdir(parents=True, exist_ok=True)
    write_seeds(target, seeds)
    before = set(crashes.glob(f"{target}-*"))
    log = out / "logs" / f"{target}.log"
    command = [
        sys.executable,
        str(TARGETS_PY),
        target,
        str(corpus),  # new inputs are written to the first directory
        str(seeds),
        f"-max_total_time={seconds}",
        f"-rss_limit_mb={rss_limit_mb}",
        f"-timeout={timeout}",
        f"-artifact_prefix={crashes}/{target}-",
        "-print_final_stats=1",
        "-max_len=65536",
    ]
    started = time.monotonic()
    returncode, executions = 0, 0
    with open(log, "wb") as handle:
        # In slices: atheris's instrumentation leaks a few KB per input on the numpy-heavy
        # targets (the same loop without it holds steady), so a long run restarts from its
        # corpus every SLICE seconds before -rss_limit_mb could be reached.
        while returncode == 0 and (left := seconds - int(time.monotonic() - started)) > 0:
            part = min(left, SLICE)
            command[5] = f"-max_total_time={part}"
            before_log = handle.tell()
            try:
                returncode = subprocess.run(
                    command,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    timeout=part + 120,  # libFuzzer stops itself; this is the safety net
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                returncode = -1
            handle.flush()
            with open(log, "rb") as reader:
                reader.seek(before_log)
                found = re.findall(rb"stat::number_of_executed_units: (\d+)", reader.read())
            executions += int(found[-1]) if found else 0
    elapsed = time.monotonic() - started
    findings = tuple(sorted(set(crashes.glob(f"{target}-*")) - before))
    return Result(target, returncode, executions, elapsed, findings, log)


def reproduce(target: str, path: Path) -> int:
    return subprocess.run([sys.executable, str(TARGETS_PY), target, str(path)]).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="append", choices=NAMES, help="default: all")
    parser.add_argument("--seconds", type=int, default=5, help="per target (default 5)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--timeout", type=int, default=5, help="per input, seconds")
    parser.add_argument("--reproduce", type=Path, help="run one input through --target")
    args = parser.parse_args(argv)
    targets = args.target or list(NAMES)
    if args.reproduce:
        if len(targets) != 1:
            parser.error("--reproduce needs exactly one --target")
        return reproduce(targets[0], args.reproduce)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(
            pool.map(
                lambda t: run_target(t, args.seconds, args.out, args.rss_limit_mb, args.timeout),
                targets,
            )
        )
    for result in results:
        status = "ok" if result.ok else f"FINDING (exit {result.returncode})"
        print(
            f"{result.target:10} {status:22} {result.executions:>12} execs "
            f"in {result.seconds:6.1f} s  log {result.log}"
        )
        for path in result.findings:
            digest = hashlib.sha1(path.read_bytes()).hexdigest()[:12]
            print(
                f"  finding: {path} (sha1 {digest}); reproduce with: python {HERE / 'run.py'} "
                f"--target {result.target} --reproduce {path}"
            )
    total = sum(r.executions for r in results)
    print(f"total: {total} executions, {sum(not r.ok for r in results)} target(s) with findings")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
