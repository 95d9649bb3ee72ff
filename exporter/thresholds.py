"""The thresholds that `report`, the alerts, the recording rules and the dashboards share:
their one home.

`timewait-exporter report` reads DEFAULT; the mixin (mixin/config.py, not part of the
installed package) takes its MixinConfig.thresholds from here, so its alerts, dashboard
colours, dashed lines, panel descriptions and runbooks quote the same numbers. Every ratio
is compared with >= (a value equal to the threshold reaches it): capacity is an upper
bound, since clients that bind() before connect() hold ports sock_diag cannot tell apart
from connect()'s, and connect() has been seen failing at exactly 90 of 100 ports.

Changed when this module was made (issue 16): `report` used to call a bucket critical from
0.95 (not 0.9), to warn only above 0.8 (not from 0.8), and to warn on TIME-WAIT from 90 %
of tcp_max_tw_buckets (not 80 %); it now uses the alerts' figures below (README.md,
"Diagnose a node").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    """Ratios (0..1) unless said otherwise."""

    # Outbound port utilisation: a bucket's (local address, remote address, remote port)
    # ports in use / the ports connect() may pick for it, and likewise the ephemeral
    # range's ports in use / its size. report: finding port-exhaustion, warning from here;
    # alerts TcpEphemeralPortExhaustion and TcpEphemeralPortRangeExhaustion, severity
    # warning; dashboards: orange, and the first dashed line.
    port_warning: float = 0.8
    # The same ratios, critical: report's port-exhaustion turns critical (it was 0.95 before
    # issue 16), the alerts' severity="critical" twins fire, dashboards turn red.
    port_critical: float = 0.9
    # TIME-WAIT sockets (sockstat tw) / net.ipv4.tcp_max_tw_buckets. report: finding
    # timewait-overflow, warning (it was 0.9 before issue 16); alert TcpTimeWaitNearMaxBuckets;
    # dashboards: orange (red at 1.0, where TCPTimeWaitOverflow starts).
    timewait_buckets_warning: float = 0.8
    # Connections closed per second toward a bucket / the rate its ports sustain (capacity
    # / 60 s, TIME-WAIT's length). Alert TcpConnectionRateNearSustainable; dashboards:
    # orange (red at 1.0, where the ports run out).
    rate_warning: float = 0.8
    # With --metrics.detail=compact, a namespace is shown in full once a bucket or its
    # ephemeral range reaches this share of capacity, or its TIME-WAIT sockets this share
    # of tcp_max_tw_buckets (exporter/engine/detail.py): well below the warnings above, so
    # every series an alert or a dashboard needs is there before it fires.
    detail_ratio: float = 0.5
    # Poll intervals (a count, not a ratio): the exporter is stale once its last complete
    # poll is this many --poll.interval old. /readyz fails (exporter/daemon.py); alert
    # TimewaitExporterStale.
    stale_intervals: int = 3

    def __post_init__(self) -> None:
        names = ("port_warning", "port_critical", "timewait_buckets_warning", "rate_warning")
        for name in (*names, "detail_ratio"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"Thresholds.{name} is a ratio in (0, 1], got {value!r}")
        if self.port_warning > self.port_critical:
            raise ValueError(
                f"Thresholds.port_warning ({self.port_warning}) is above port_critical "
                f"({self.port_critical})"
            )
        if self.stale_intervals < 1:
            raise ValueError(f"Thresholds.stale_intervals must be >= 1, got {self.stale_intervals}")


DEFAULT = Thresholds()
