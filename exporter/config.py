"""Runtime configuration, built once from the command line."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from exporter.sources.sockdiag.buckets import BucketOptions

NETNS_ALL = "all"
NETNS_SELF = "self"


@dataclass(frozen=True)
class Config:
    procfs: Path = Path("/proc")
    sysfs: Path = Path("/sys")
    pod_logs: Path = Path("/var/log/pods")
    # "all" (every namespace of the node), "self" (the exporter's own), or labels.
    netns: str | frozenset[str] = NETNS_ALL
    netns_name: str | None = None  # label of the exporter's own namespace; None: detect
    collectors: frozenset[str] | None = None  # None: every source
    netstat_fields: re.Pattern[str] = field(default_factory=lambda: re.compile(".*"))
    poll_interval: float = 15.0
    poll_workers: int = 2
    events: bool = True  # socket-destroy events (serve and report; never dump)
    listen_address: str = ":9961"
    telemetry_path: str = "/metrics"
    web_config_file: Path | None = None  # exporter-toolkit web config (TLS, basic auth)
    max_requests: int = 40  # concurrent telemetry requests; more get 503
    read_timeout: float = 10.0  # seconds to receive a request head
    idle_timeout: float = 120.0  # seconds a keep-alive connection may stay idle
    log_level: str = "info"
    log_format: str = "auto"
    buckets: BucketOptions = field(default_factory=BucketOptions)

    def enabled(self, source: str) -> bool:
        return self.collectors is None or source in self.collectors
