"""The one place to set what the generated rules and dashboards select on.

Edit the defaults (or build a MixinConfig in your own script and call
mixin.generate.generate(config, root)) and regenerate with `python -m mixin`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class MixinConfig:
    # Value of the `job` label Prometheus gives the exporter's targets. Rules select
    # job="<job>"; dashboards offer it as the $job variable, defaulting to it.
    job: str = "timewait-exporter"
    # Label that tells clusters apart when one Prometheus (or Thanos, Mimir) holds several;
    # "" for a single cluster: no $cluster variable, no cluster matcher.
    cluster_label: str = "cluster"
    # Where docs/runbooks/ is served; each alert's runbook_url is <base>/<AlertName>.md.
    runbook_base: str = "docs/runbooks"
    # Window over which exhaustion rules smooth the sampling jitter (a batch of TIME-WAIT
    # sockets expiring makes utilisation dip for one sample).
    smoothing_window: str = "2m"
    # Window of every rate() in the rules (connections closed, TIME-WAIT overflows, poll
    # overruns); the recorded rates are named after it (tcptw:...:rate5m).
    rate_window: str = "5m"
    # Window over which the predictive exhaustion alert fits its linear trend.
    prediction_window: str = "30m"
    durations: Durations = field(default_factory=Durations)

    def runbook_url(self, alert: str) -> str:
        return f"{self.runbook_base}/{alert}.md"


DEFAULT = MixinConfig()
