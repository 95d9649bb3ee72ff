"""Runtime configuration, built once from the command line."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from exporter.buckets import BucketOptions

SOURCES = ("sockdiag", "netstat", "sockstat", "sysctl", "slab")


@dataclass(frozen=True)
class Config:
    procfs: Path = Path("/proc")
    sysfs: Path = Path("/sys")
    run_netns: Path = Path("/run/netns")
    netns_name: str | None = None  # label of the exporter's own namespace; None: detect
    collectors: frozenset[str] = frozenset(SOURCES)
    netstat_fields: re.Pattern[str] = field(default_factory=lambda: re.compile(".*"))
    poll_interval: float = 15.0
    listen_address: str = ":9961"
    telemetry_path: str = "/metrics"
    log_level: str = "info"
    log_format: str = "auto"
    buckets: BucketOptions = field(default_factory=BucketOptions)
