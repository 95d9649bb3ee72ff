"""The top K and the compact-detail folding of the close counters (exporter/events/
ranking.py), on hand-made counts: every close shows in exactly one series."""

from __future__ import annotations

from exporter.events.ranking import Direction, Ranked, TopK
from exporter.sources.declare import FOLDED, DetailView

QUIET = DetailView(full=False)
BUSY = DetailView(full=False, detailed=frozenset({"busy"}))


def values(rows: list[Ranked]) -> dict[tuple[str, bytes | None], int]:
    return {(row.label, row.key): row.value for row in rows}


def test_closes_that_make_a_namespace_notable_show_in_its_bucket() -> None:
    """Quiet, its closes go to the netns="" fold; once shown in full, the bucket that
    was closing is first exposed at 0 with the closes of the poll that made it notable
    moved from the fold into it, so increase() over its series counts them."""
    top = TopK(top=5)
    busy, calm = Direction(True), Direction(True)
    namespaces = [("busy", busy), ("calm", calm)]
    top.add(busy, [b"a"], [3], now=0.0)
    top.add(calm, [b"b"], [2], now=0.0)
    first = values(top.rank(namespaces, 1.0, QUIET))
    assert first == {(FOLDED, None): 5}
    top.add(busy, [b"a"], [7], now=2.0)  # the burst that makes it notable
    top.add(calm, [b"b"], [1], now=2.0)
    entering = values(top.rank(namespaces, 3.0, BUSY))
    assert entering == {("busy", b"a"): 0, ("busy", None): 0, (FOLDED, None): 6}
    after = values(top.rank(namespaces, 4.0, BUSY))
    assert after == {("busy", b"a"): 7, ("busy", None): 0, (FOLDED, None): 6}
    # Every close once: the burst's 7 in the bucket's series (from 0), the rest (3 + 2
    # before, 1 after) in the fold.
    assert after[("busy", b"a")] - entering[("busy", b"a")] == 7
    assert after[(FOLDED, None)] == 3 + 2 + 1


def test_full_detail_keeps_a_series_per_bucket_and_other_per_namespace() -> None:
    top = TopK(top=1)
    one = Direction(True)
    top.add(one, [b"a", b"b"], [4, 1], now=0.0)
    rows = values(top.rank([("one", one)], 1.0))
    assert rows == {("one", b"a"): 0, ("one", None): 1}
    top.add(one, [b"a"], [2], now=1.5)
    assert values(top.rank([("one", one)], 2.0)) == {("one", b"a"): 6, ("one", None): 1}
