"""Every atheris target (fuzz/targets.py) for a few seconds: CI fails on any finding.

Not skippable: atheris is in the test extra, and a missing atheris fails here like any
other import. The longer run is documented in docs/fuzzing.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "fuzz" / "run.py"
SECONDS_PER_TARGET = 5
JOBS = 2  # the CI runner's cores: 9 targets in about 35 s of wall time


def test_runner_knows_every_target() -> None:
    usage = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "targets.py")], capture_output=True, text=True
    ).stderr
    listed = re.search(r"\{([a-z,]+)\}", usage)
    assert listed, usage
    sys.path.insert(0, str(ROOT / "fuzz"))
    try:
        import run  # fuzz/run.py: no atheris import at module level
    finally:
        sys.path.remove(str(ROOT / "fuzz"))
    assert tuple(listed.group(1).split(",")) == run.NAMES


def test_every_target_runs_without_a_finding(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(RUN),
        f"--seconds={SECONDS_PER_TARGET}",
        f"--jobs={JOBS}",
        f"--out={tmp_path}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    report = result.stdout + result.stderr
    findings = sorted((tmp_path / "crashes").glob("*"))
    logs = "\n".join(
        f"--- {log.name} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        for log in sorted((tmp_path / "logs").glob("*.log"))
        if result.returncode != 0
    )
    assert result.returncode == 0 and not findings, (
        f"fuzz run failed (exit {result.returncode}); crashing inputs: "
        f"{[str(path) for path in findings]}\n{report}\n{logs}"
    )
    assert re.search(r"total: [1-9]\d* executions, 0 target", report), report
