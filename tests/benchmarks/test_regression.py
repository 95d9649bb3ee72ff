"""Performance regression check at a modest size: the exporter's full poll must stay within
2.5 x the kernel's own dump cost measured in the same run (the median of the rounds'
ratios, so machine speed and noise cancel). The full comparison with ss and node_exporter
is `python -m benchmarks.run`."""

from __future__ import annotations

import statistics

import pytest

from benchmarks.load import loaded_namespace
from benchmarks.run import measure

SIZE = 50_000
MAX_RATIO = 2.5


@pytest.mark.parametrize("load", ["buckets", "distinct-out"])  # 512 buckets; 50,000 buckets
def test_poll_stays_close_to_the_kernel_floor(kernel: None, load: str) -> None:
    with loaded_namespace(SIZE, load=load) as loaded:
        results = measure(loaded, rounds=9, with_node=False)
    exporter, floor = results["exporter"], results["floor"]
    assert min(exporter.timewait) > 0.95 * SIZE  # the load really was there
    assert exporter.bucket_timewait == exporter.ss_timewait  # bucket sums stay exact
    # Each round runs the two next to each other: pairing cancels drifts of the machine.
    ratio = statistics.median(e / f for e, f in zip(exporter.walls, floor.walls, strict=True))
    print(f"poll/floor at {SIZE:,} sockets ({load}): {ratio:.2f}")
    if ratio > MAX_RATIO:
        pytest.fail(f"poll took {ratio:.2f} x the kernel floor (limit {MAX_RATIO})")
