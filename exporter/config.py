"""Runtime configuration, built once from the command line. Every default lives here
(the engine's and the web's) or in the Option a source declares (exporter/sources/
declare.py); the CLI's flags read them from there."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
    # Values of the options sources and feeds declare, by flag; a missing one is its
    # Option's default.
    options: Mapping[str, object] = field(default_factory=dict)
    # compact: quiet namespaces show only what alerts read, the rest summed into netns=""
    # rows (exporter/engine/detail.py); full: every series of every namespace.
    detail: str = "compact"
    detail_hold: float = 900.0  # seconds a notable namespace stays in full detail
    poll_interval: float = 15.0
    # Threads that poll namespaces side by side; None (auto): 1 where most namespaces
    # share the host's established hash (every walker takes the same bucket locks, so a
    # second one costs CPU and buys no time), 2 where they have their own.
    poll_workers: int | None = None
    listen_address: str = ":9961"
    telemetry_path: str = "/metrics"
    web_config_file: Path | None = None  # exporter-toolkit web config (TLS, basic auth)
    max_requests: int = 40  # concurrent telemetry requests; more get 503
    max_connections: int = 1024  # open connections; more are closed at once
    read_timeout: float = 10.0  # seconds to receive a request head
    idle_timeout: float = 120.0  # seconds a keep-alive connection may stay idle
    log_level: str = "info"
    log_format: str = "auto"

    def enabled(self, source: str) -> bool:
        return self.collectors is None or source in self.collectors


DEFAULTS = Config()
