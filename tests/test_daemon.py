"""The poll loop: a poll that outlasts the interval delays the next (never overlaps it)
and is counted as an overrun; the collector always holds the latest finished snapshot."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from exporter.collector import SnapshotCollector
from exporter.config import Config
from exporter.daemon import poll_forever
from exporter.poller import Poller
from exporter.snapshot import Snapshot


class SlowPoller(Poller):
    """The real poller on a recorded tree, made slower than the interval."""

    def __init__(self, config: Config, delay: float) -> None:
        super().__init__(config)
        self.delay = delay
        self.running = 0
        self.most_at_once = 0
        self.polls = 0
        self.lock = threading.Lock()

    def poll_once(self) -> Snapshot:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.delay)
            return super().poll_once()
        finally:
            with self.lock:
                self.running -= 1
                self.polls += 1


def test_overrunning_polls_never_overlap_and_are_counted(tree: Path) -> None:
    config = Config(
        procfs=tree / "proc", sysfs=tree / "sys", netns_name="t", collectors=frozenset({"sockstat"})
    )
    poller = SlowPoller(config, delay=0.05)
    collector = SnapshotCollector()

    async def run() -> None:
        task = asyncio.create_task(poll_forever(poller, collector, interval=0.01))
        await asyncio.sleep(0.6)
        task.cancel()

    asyncio.run(run())
    snapshot = collector.snapshot
    assert snapshot is not None
    assert poller.most_at_once == 1
    assert poller.polls >= 5
    assert snapshot.poll_overruns >= poller.polls - 2  # every finished poll but the last
    assert snapshot.results[0].ok


def test_polls_within_the_interval_are_not_overruns(tree: Path) -> None:
    config = Config(
        procfs=tree / "proc", sysfs=tree / "sys", netns_name="t", collectors=frozenset({"sockstat"})
    )
    poller = SlowPoller(config, delay=0.0)
    collector = SnapshotCollector()

    async def run() -> None:
        task = asyncio.create_task(poll_forever(poller, collector, interval=0.1))
        await asyncio.sleep(0.55)
        task.cancel()

    asyncio.run(run())
    assert collector.snapshot is not None and collector.snapshot.poll_overruns == 0
    assert 5 <= poller.polls <= 7
