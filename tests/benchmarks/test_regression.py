"""Performance regression check at a modest size: the exporter's full poll must stay within
3 x the kernel's dump cost measured in the same run (the median of the rounds' ratios, so
machine speed and noise cancel). The full comparison with ss and node_exporter is
`python -m benchmarks.run`.

The floor here is the per-family dumps `ss` makes (`floor-v2`), the one this limit was set
against. The exporter now needs one walk for both families, and against that single-walk
floor a 50,000-socket poll measured 1.8-3.0 x on this machine from one run to the next:
at this size the poll's fixed cost (the slab and sysctl sources, the decode of the first
and last batch) is a third of the kernel's, so that ratio says more about the machine's
state than about a regression. The 1M-socket figures in docs/benchmarks.md use both.
Against floor-v2 the same code measured 1.7-1.8 x and, a few hours of namespace churn
later, 1.8-2.5 x (an A/B run of the tree before and after that day's changes read the
same), so the limit is 3 x: it still catches a poll that doubles."""

from __future__ import annotations

import statistics

import pytest

from benchmarks.load import loaded_namespace
from benchmarks.run import measure

SIZE = 50_000
MAX_RATIO = 3.0


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
