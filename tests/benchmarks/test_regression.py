"""Performance regression check at a modest size: the exporter's full poll must stay within
2.5 x the kernel's dump cost measured in the same run (the median of the rounds' ratios, so
machine speed and noise cancel). The full comparison with ss and node_exporter is
`python -m benchmarks.run`.

The floor here is the per-family dumps `ss` makes (`floor-v2`), the one this limit was set
against. The exporter now needs one walk for both families, and against that single-walk
floor a 50,000-socket poll measured 1.8-3.0 x on this machine from one run to the next:
at this size the poll's fixed cost (the slab and sysctl sources, the decode of the first
and last batch) is a third of the kernel's, so that ratio says more about the machine's
state than about a regression. The 1M-socket figures in docs/benchmarks.md use both."""

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
    exporter, floor = results["exporter"], results["floor-v2"]
    assert min(exporter.timewait) > 0.95 * SIZE  # the load really was there
    assert exporter.bucket_timewait == exporter.ss_timewait  # bucket sums stay exact
    # Each round runs the two next to each other: pairing cancels drifts of the machine.
    ratio = statistics.median(e / f for e, f in zip(exporter.walls, floor.walls, strict=True))
    print(f"poll/per-family floor at {SIZE:,} sockets ({load}): {ratio:.2f}")
    if ratio > MAX_RATIO:
        pytest.fail(f"poll took {ratio:.2f} x the per-family floor (limit {MAX_RATIO})")
