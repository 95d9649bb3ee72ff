"""Performance regression check at a modest size: the exporter's full poll must stay within
2.5 x the kernel's own dump cost measured in the same run (a ratio, so machine speed and
noise cancel). The full comparison with ss and node_exporter is `python -m benchmarks.run`."""

from __future__ import annotations

import statistics

import pytest

from benchmarks.load import loaded_namespace
from benchmarks.run import measure
from tests.kernel import Netns

SIZE = 50_000
MAX_RATIO = 2.5


def test_poll_stays_close_to_the_kernel_floor(netns: Netns) -> None:
    # `netns` is unused but enforces the kernel-test rules (root and ip netns; never
    # skipped under CI=true).
    with loaded_namespace(SIZE) as loaded:
        results = measure(loaded, rounds=7, with_node=False)
    exporter, floor = results["exporter"], results["floor"]
    assert min(exporter.timewait) > 0.95 * SIZE  # the load really was there
    ratio = statistics.median(exporter.walls) / statistics.median(floor.walls)
    print(f"poll/floor at {SIZE:,} sockets: {ratio:.2f}")
    if ratio > MAX_RATIO:
        pytest.fail(f"poll took {ratio:.2f} x the kernel floor (limit {MAX_RATIO})")
