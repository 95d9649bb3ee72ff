"""Golden exposition files, promtool, and render-at-scrape-time behaviour.

Regenerate the golden files after an intended output change with
    UPDATE_GOLDEN=1 pytest tests/engine/test_collector.py
and review the diff."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.engine.collector import SnapshotCollector
from exporter.engine.snapshot import Snapshot, SourceResult
from exporter.sources.sockdiag.tally import SocketStats
from tests.conftest import FIXTURES, TREES, tool

GOLDEN = FIXTURES / "golden"
# Every recorded tree: this machine's 6.18, each kernel of scripts/test-kernels (recorded in
# its guest by tests/fixtures/record.py --out), and the hand-made 4.9.
KERNELS = ["linux-6.18", "linux-6.12", "linux-6.1", "linux-5.10", "linux-4.9"]
# Values that differ on every run: durations, timestamps, the interpreter's version.
VOLATILE = re.compile(
    r"^((tcptw_source_duration_seconds|tcptw_poll_duration_seconds"
    r"|tcptw_last_poll_timestamp_seconds|tcptw_netns_poll_duration_seconds)(\{[^}]*\})?) .*$"
    r"|python_version=\"[^\"]*\"",
    re.M,
)


def normalise(text: str) -> str:
    return VOLATILE.sub(
        lambda m: f"{m.group(1)} <volatile>" if m.group(1) else 'python_version="<any>"', text
    )


def dump(tree: Path) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "dump",
            "--path.procfs",
            str(tree / "proc"),
            "--path.sysfs",
            str(tree / "sys"),
            "--no-collector.sockdiag",
            "--netns=self",
            "--netns.name",
            "fixture",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


def promtool() -> str:
    return tool("promtool", "Debian package prometheus")


@pytest.mark.parametrize("kernel", KERNELS)
def test_golden_exposition(kernel: str) -> None:
    text = normalise(dump(TREES / kernel))
    golden = GOLDEN / f"{kernel}.prom"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("kernel", KERNELS)
def test_promtool_check_metrics_is_clean(kernel: str) -> None:
    result = subprocess.run(
        [promtool(), "check", "metrics"],
        input=dump(TREES / kernel),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", (
        result.stdout + result.stderr
    )


def test_live_dump_passes_promtool() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "dump"], capture_output=True, text=True, timeout=60
    ).stdout
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=out, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", (
        result.stdout + result.stderr
    )


def render(collector: SnapshotCollector) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def snapshot_with(states: dict[tuple[str, str], int]) -> Snapshot:
    stats = SocketStats(states=states, missing_families=())
    result = SourceResult("sockdiag", "ns1", True, 0.01, stats)
    return Snapshot(results=(result,), started_at=1.0, duration_seconds=0.01)


def test_each_scrape_renders_the_latest_snapshot_only() -> None:
    collector = SnapshotCollector()
    assert "tcptw_sockets" not in render(collector)  # before the first poll
    collector.update(snapshot_with({("ipv4", "time_wait"): 3, ("ipv6", "time_wait"): 1}))
    first = render(collector)
    assert 'tcptw_sockets{family="ipv6",netns="ns1",state="time_wait"} 1.0' in first
    collector.update(snapshot_with({("ipv4", "time_wait"): 2}))
    second = render(collector)
    assert 'tcptw_sockets{family="ipv4",netns="ns1",state="time_wait"} 2.0' in second
    assert 'family="ipv6"' not in second  # a series that is gone vanishes


def test_failed_source_shows_success_zero_and_no_data() -> None:
    failed = SourceResult("netstat", "ns1", False, 0.001, None, "SourceError: boom")
    collector = SnapshotCollector()
    collector.update(Snapshot(results=(failed,), started_at=1.0, duration_seconds=0.01))
    text = render(collector)
    assert 'tcptw_source_success{netns="ns1",source="netstat"} 0.0' in text
    assert "tcptw_tcpext_" not in text
