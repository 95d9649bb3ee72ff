"""The one place to set what the generated rules and dashboards select on, where their
runbooks live and the thresholds they compare with.

Three ways to change it:

- Your own config file, the usual way: a Python file that defines `config`, e.g. my_mixin.py

      from mixin.config import MixinConfig, Thresholds

      config = MixinConfig(
          job="node-tw",
          cluster_label="",
          runbook_base="https://wiki.example.com/runbooks/timewait",
          thresholds=Thresholds(port_warning=0.7, port_critical=0.85),
      )

  then `python -m mixin --config my_mixin.py --root <dir>` writes the rules, dashboards and
  runbooks under <dir> (`--check` compares instead). `dataclasses.replace(DEFAULT, ...)`
  works as well as MixinConfig(...).
- From Python: mixin.generate.generate(config) returns every file as text.
- Edit the defaults below, then `python -m mixin` and commit the result (what this
  repository's checked-in files are generated with).

The thresholds' defaults come from exporter/thresholds.py, their one home: `timewait-exporter
report` uses the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.thresholds import DEFAULT as DEFAULT_THRESHOLDS
from exporter.thresholds import Thresholds

__all__ = ["DEFAULT", "REPOSITORY", "RUNBOOK_BASE", "Durations", "MixinConfig", "Thresholds"]

# The project's public repository; its runbooks (docs/runbooks/) are published there.
REPOSITORY = "https://github.com/timewait-exporter/timewait-exporter"
RUNBOOK_BASE = f"{REPOSITORY}/blob/main/docs/runbooks"


@dataclass(frozen=True)
class Durations:
    """`for:` and `keep_firing_for:` of the alerts (Prometheus duration strings). The
    end-to-end test shortens them in its own rule file; nothing else should need to."""

    exhaustion: str = "2m"
    exhaustion_keep_firing: str = "5m"
    predicted: str = "15m"
    timewait: str = "10m"
    exporter_down: str = "5m"
    source_failing: str = "10m"
    stale: str = "2m"
    overrun: str = "30m"
    # TcpConnectFailingNoFreePort: a connect() that failed is a fact, not a forecast.
    connect_failing: str = "0s"


@dataclass(frozen=True)
class MixinConfig:
    # Value of the `job` label Prometheus gives the exporter's targets. Rules select
    # job="<job>"; dashboards offer it as the $job variable, defaulting to it.
    job: str = "timewait-exporter"
    # Label that tells clusters apart when one Prometheus (or Thanos, Mimir) holds several;
    # "" for a single cluster: no $cluster variable, no cluster matcher.
    cluster_label: str = "cluster"
    # Absolute URL where docs/runbooks/ is published: each alert's runbook_url is
    # <base>/<AlertName>.md, which Alertmanager and Grafana link to. The default is the
    # project's own copy on its public repository; point it at yours (a wiki, a docs site,
    # your fork) to serve runbooks you have edited.
    runbook_base: str = RUNBOOK_BASE
    # Window over which exhaustion rules smooth the sampling jitter (a batch of TIME-WAIT
    # sockets expiring makes utilisation dip for one sample).
    smoothing_window: str = "2m"
    # Window of every rate() in the rules (connections closed, TIME-WAIT overflows, poll
    # overruns); the recorded rates are named after it (tcptw:...:rate5m).
    rate_window: str = "5m"
    # Window of TcpConnectFailingNoFreePort's increase(): it fires on any connect() failed
    # with EADDRNOTAVAIL within it, and resolves once a whole window has none.
    failure_window: str = "2m"
    # Window over which the predictive exhaustion alert fits its linear trend.
    prediction_window: str = "30m"
    # The predictive alert fires when that trend reaches full capacity within this many
    # seconds and the bucket is already at least prediction_floor full.
    prediction_horizon_seconds: int = 3600
    prediction_floor: float = 0.5
    durations: Durations = field(default_factory=Durations)
    # What the alerts, dashboards (colours, dashed lines, descriptions) and runbooks compare
    # with; defaults from exporter/thresholds.py, shared with `timewait-exporter report`.
    thresholds: Thresholds = field(default_factory=lambda: DEFAULT_THRESHOLDS)

    def __post_init__(self) -> None:
        if "://" not in self.runbook_base:
            raise ValueError(
                "MixinConfig.runbook_base must be an absolute URL (Alertmanager and Grafana "
                f"open runbook_url as is), got {self.runbook_base!r}"
            )

    def runbook_url(self, alert: str) -> str:
        return f"{self.runbook_base.rstrip('/')}/{alert}.md"


DEFAULT = MixinConfig()
