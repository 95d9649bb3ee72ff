"""Alerting rules.

One alert name per condition; a condition with two thresholds has two rules of the same
name, labelled severity="warning" and severity="critical", so that Alertmanager's usual
inhibit rule (critical silences warning when alertname and the other labels are equal)
leaves one notification per exhaustion.

Gauges that a batch of TIME-WAIT sockets expiring makes dip for one sample are smoothed
with max_over_time over MixinConfig.smoothing_window (a dip no longer restarts `for:`),
and the exhaustion alerts keep firing for Durations.exhaustion_keep_firing after the
condition clears, so that a connect() storm that pauses is still one alert.
"""

from __future__ import annotations

from typing import Any

from mixin import recording
from mixin.config import MixinConfig
from mixin.recording import NETNS, by, on, sel, with_pod

# Every threshold comes from config.thresholds (exporter/thresholds.py: utilisation,
# TIME-WAIT / tcp_max_tw_buckets, rate / sustainable, stale intervals) or, for the
# predictive alert, config.prediction_*; all are compared with >= except staleness.

WHERE = (
    "{{ if $labels.k8s_pod_name }}pod {{ $labels.k8s_namespace_name }}/{{ $labels.k8s_pod_name }}"
    "{{ else }}netns {{ $labels.netns }}{{ end }} on {{ $labels.instance }}"
)
DESTINATION = (
    "{{ if $labels.remote_addr }}from {{ $labels.local_addr }} to {{ $labels.remote_addr }}:"
    "{{ $labels.remote_port }}{{ else }}to one destination{{ end }}"
)
PERCENT = "{{ $value | humanizePercentage }}"
RATE = '{{ printf "%.2f" $value }}/s'
# A failed connect()'s destination: its address (the port is lost), or the namespace's
# `other` row, which counts the destinations outside the node-wide top K.
FAILED_TOWARD = (
    '{{ if eq $labels.remote_addr "other" }}other destinations'
    "{{ else }}{{ $labels.remote_addr }}{{ end }}"
)


def alert(
    config: MixinConfig,
    name: str,
    expr: str,
    severity: str,
    for_: str,
    summary: str,
    description: str,
    keep_firing_for: str | None = None,
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr, "for": for_}
    if keep_firing_for is not None:
        rule["keep_firing_for"] = keep_firing_for
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {
        "summary": summary,
        "description": description,
        "runbook_url": config.runbook_url(name),
    }
    return rule


def smoothed(config: MixinConfig, metric: str) -> str:
    return f"max_over_time({sel(config, metric)}[{config.smoothing_window}])"


def bucket_exhaustion(config: MixinConfig, threshold: float) -> str:
    """The smoothed per-bucket ratio, where the namespace's own max ratio agrees (it leaves
    out TIME-WAIT sockets that tcp_tw_reuse lets connect() take over; the per-bucket series
    cannot); and the namespace alone where no bucket series of its own does (the bucket was
    folded into `other`)."""
    netns = on(config, "instance", "netns")
    bucket = smoothed(config, recording.OUTBOUND_BUCKET_RATIO)
    namespace = smoothed(config, recording.NETNS_MAX_RATIO)
    return (
        f"(\n  {bucket} >= {threshold}\n  and {netns}\n  {namespace} >= {threshold}\n)\n"
        f"or {netns}\n{namespace} >= {threshold}"
    )


def span(seconds: int) -> str:
    """3600 -> "an hour", 7200 -> "2 hours", 1800 -> "30 minutes"."""
    for unit, size, one in (("hour", 3600, "an hour"), ("minute", 60, "a minute")):
        if seconds % size == 0:
            return one if seconds == size else f"{seconds // size} {unit}s"
    return "a second" if seconds == 1 else f"{seconds} seconds"


def ports(config: MixinConfig) -> list[dict[str, Any]]:
    d = config.durations
    t = config.thresholds
    rules = []
    for severity, threshold, consequence in (
        (
            "warning",
            t.port_warning,
            "connect() to that destination fails with EADDRNOTAVAIL once they are all held",
        ),
        (
            "critical",
            t.port_critical,
            "connect() to that destination is failing with EADDRNOTAVAIL or about to (below "
            "100% already where clients bind() before connect())",
        ),
    ):
        rules.append(
            alert(
                config,
                "TcpEphemeralPortExhaustion",
                bucket_exhaustion(config, threshold),
                severity,
                d.exhaustion,
                f"{PERCENT} of the ephemeral ports {DESTINATION} used in {WHERE}",
                f"Outbound connections {DESTINATION} in {WHERE} hold {PERCENT} of the local "
                f"ports connect() may pick (the peak of every {config.smoothing_window} "
                f"window has been {threshold:.0%} or more for {d.exhaustion}): {consequence}. "
                "Each (local address, remote address, remote port) has a port range of its "
                "own; a TIME-WAIT socket holds its port for 60 s.",
                keep_firing_for=d.exhaustion_keep_firing,
            )
        )
    ratio = sel(config, recording.OUTBOUND_BUCKET_RATIO)
    horizon = span(config.prediction_horizon_seconds)
    floor = f"{config.prediction_floor:.0%} or more"
    rules.append(
        alert(
            config,
            "TcpEphemeralPortExhaustionPredicted",
            f"predict_linear({ratio}[{config.prediction_window}], "
            f"{config.prediction_horizon_seconds}) >= 1\n"
            f"and {ratio} >= {config.prediction_floor}",
            "warning",
            d.predicted,
            f"Ephemeral ports {DESTINATION} will run out within {horizon} in {WHERE}",
            f"At the trend of the last {config.prediction_window}, outbound connections "
            f"{DESTINATION} in {WHERE} will hold {PERCENT} of the local ports connect() may "
            f"pick in {horizon} ({floor} are held now); at 100% connect() to that "
            "destination fails with EADDRNOTAVAIL.",
        )
    )
    rules.append(
        alert(
            config,
            "TcpConnectionRateNearSustainable",
            f"{sel(config, recording.OUTBOUND_RATE_RATIO)} >= {t.rate_warning}",
            "warning",
            d.exhaustion,
            f"New connections {DESTINATION} at {PERCENT} of the sustainable rate in {WHERE}",
            f"Connections {DESTINATION} in {WHERE} close at {PERCENT} of the rate its ports "
            "sustain (capacity / 60 s: a connection closed from this side holds its local "
            f"port in TIME-WAIT for 60 s), over {config.rate_window} "
            "(method {{ $labels.method }}: events counts the "
            "kernel's socket-destroy events, including connections the server closed first, "
            "timewait estimates TIME-WAIT sockets / 60 where "
            "events are unavailable). Above 100% the bucket's ports run out and connect() "
            "fails with EADDRNOTAVAIL.",
        )
    )
    for severity, threshold in (("warning", t.port_warning), ("critical", t.port_critical)):
        rules.append(
            alert(
                config,
                "TcpEphemeralPortRangeExhaustion",
                f"{smoothed(config, recording.EPHEMERAL_IN_USE_RATIO)} >= {threshold}",
                severity,
                d.exhaustion,
                f"{PERCENT} of the ephemeral port range is bound in {WHERE}",
                f"Sockets in {WHERE} hold {PERCENT} of the ports of ip_local_port_range "
                f"less ip_local_reserved_ports (the peak of every {config.smoothing_window} "
                f"window has been {threshold:.0%} or more for {d.exhaustion}). Once none is "
                "free, bind() to port 0 fails with EADDRINUSE whatever the destination, and "
                "so do clients that bind() before connect().",
                keep_firing_for=d.exhaustion_keep_firing,
            )
        )
    return rules


def connect_failing(config: MixinConfig) -> dict[str, Any]:
    """Any connect() failed with EADDRNOTAVAIL within failure_window, per namespace and
    destination address (the `other` row too: a failure is a failure), the netns="" rows
    left out. A fact, so critical at once, whatever the utilisation says."""
    window = config.failure_window
    failures = sel(config, recording.CONNECT_FAILURES, recording.NOT_FOLDED, recording.NO_FREE_PORT)
    increase = f"sum {by(config, *NETNS, 'remote_addr')} (increase({failures}[{window}]))"
    return alert(
        config,
        "TcpConnectFailingNoFreePort",
        f"(\n{with_pod(config, increase)}\n) > 0",
        "critical",
        config.durations.connect_failing,
        f"connect() to {FAILED_TOWARD} fails with EADDRNOTAVAIL in {WHERE}",
        f'In {WHERE}, about {{{{ printf "%.0f" $value }}}} connect() calls toward '
        f'{FAILED_TOWARD} failed in the last {window} with EADDRNOTAVAIL ("Cannot assign '
        'requested address"): no local port was free toward that destination, so they '
        "failed before sending a SYN. Counted from the kernel's socket-destroy events when "
        "the application closed the failed socket; the destination port is not known. "
        "Ports that clients bind() before connect() are skipped by connect(), so this can "
        "fire while the destination's utilisation is low; the bind(0) calls themselves fail "
        "with EADDRINUSE, which this does not count.",
    )


def netns_rate(config: MixinConfig, metric: str) -> str:
    return with_pod(
        config,
        f"sum {by(config, *NETNS)} (rate({sel(config, metric)}[{config.rate_window}]))",
    )


def timewait(config: MixinConfig) -> list[dict[str, Any]]:
    d = config.durations
    near_limit = config.thresholds.timewait_buckets_warning
    overflow = with_pod(config, sel(config, recording.tw_overflow_rate(config)))
    tw = f"max {by(config, *NETNS)} ({smoothed(config, 'tcptw_sockstat_tcp_tw')})"
    limit = f"max {by(config, *NETNS)} ({sel(config, 'tcptw_sysctl_tcp_max_tw_buckets')} > 0)"
    near = with_pod(config, f"{tw}\n/ {limit}")
    recycle = f"max {by(config, *NETNS)} ({sel(config, 'tcptw_sysctl_tcp_tw_recycle')})"
    return [
        alert(
            config,
            "TcpTimeWaitOverflow",
            f"(\n{overflow}\n) > 0",
            "warning",
            d.timewait,
            f"TIME-WAIT table full in {WHERE} ({RATE} closing sockets skip TIME-WAIT)",
            f"TCPTimeWaitOverflow rises in {WHERE}: tcp_max_tw_buckets is reached, so "
            "closing connections are destroyed at once instead of entering TIME-WAIT, and "
            'the kernel logs "time wait bucket table overflow". Late segments of those '
            "connections can reach a new connection on the same quadruplet.",
        ),
        alert(
            config,
            "TcpTimeWaitNearMaxBuckets",
            f"(\n{near}\n) >= {near_limit}",
            "warning",
            d.timewait,
            f"TIME-WAIT sockets at {PERCENT} of tcp_max_tw_buckets in {WHERE}",
            f"TIME-WAIT sockets in {WHERE} reach {PERCENT} of net.ipv4.tcp_max_tw_buckets "
            f"(the peak of every {config.smoothing_window} window has been "
            f"{near_limit:.0%} or more for {d.timewait}). At the limit, "
            "TCPTimeWaitOverflow starts and closing sockets skip TIME-WAIT.",
        ),
        alert(
            config,
            "TcpTwRecycleEnabled",
            f"(\n{with_pod(config, recycle)}\n) > 0",
            "warning",
            d.timewait,
            f"net.ipv4.tcp_tw_recycle is on in {WHERE}",
            f"tcp_tw_recycle is enabled in {WHERE} (a kernel before 4.12, which removed "
            "it). It drops SYNs whose timestamp is lower than the last one seen from the "
            "same address, so clients behind one NAT address fail to connect at random "
            "(PAWSPassive counts the drops).",
        ),
        alert(
            config,
            "TcpPawsPassiveRising",
            f"(\n{netns_rate(config, 'tcptw_tcpext_paws_passive_total')}\n) > 0",
            "warning",
            d.timewait,
            f"Incoming SYNs rejected by PAWS in {WHERE} ({RATE})",
            f"TcpExt PAWSPassive rises in {WHERE}: connection requests are dropped because "
            "their TCP timestamp is older than the one remembered for that address, which "
            "tcp_tw_recycle does (the counter exists before Linux 4.12 only). The clients "
            "see connect() time out.",
        ),
        alert(
            config,
            "TcpListenOverflows",
            f"(\n{netns_rate(config, 'tcptw_tcpext_listen_overflows_total')}\n) > 0",
            "warning",
            d.timewait,
            f"Listen queue overflows in {WHERE} ({RATE})",
            f"ListenOverflows rises in {WHERE}: a listening socket's accept queue is full "
            "and incoming connections are dropped (clients see retransmitted SYNs and slow "
            "connects). The application does not accept() fast enough or its backlog is "
            "too small.",
        ),
    ]


def exporter(config: MixinConfig) -> list[dict[str, Any]]:
    d = config.durations
    stale_intervals = config.thresholds.stale_intervals
    keep = by(config, "instance", "job")
    last = sel(config, "tcptw_last_poll_timestamp_seconds")
    interval = sel(config, "tcptw_poll_interval_seconds")
    source = "{{ $labels.source }}"
    source_where = (
        "{{ if $labels.netns }}netns {{ $labels.netns }}{{ else }}the host-wide sources{{ end }}"
        " on {{ $labels.instance }}"
    )
    return [
        alert(
            config,
            "TimewaitExporterDown",
            f"{sel(config, 'up')} == 0",
            "warning",
            d.exporter_down,
            "timewait-exporter target {{ $labels.instance }} is down",
            "Prometheus cannot scrape {{ $labels.instance }} (job {{ $labels.job }}), so "
            "TIME-WAIT and ephemeral ports on that node are not watched.",
        ),
        alert(
            config,
            "TimewaitExporterAbsent",
            f"absent({sel(config, 'up')})",
            "warning",
            d.exporter_down,
            f"No timewait-exporter target in job {config.job}",
            f"Prometheus has no target of job {config.job}: service discovery lost the "
            "exporters, or they were never deployed, so no node's ephemeral ports are "
            "watched.",
        ),
        alert(
            config,
            "TimewaitExporterSourceFailing",
            f"{sel(config, 'tcptw_source_success')} == 0",
            "warning",
            d.source_failing,
            f"timewait-exporter cannot read {source} in {source_where}",
            f"Every poll of the {source} source fails in {source_where}, so its metrics are "
            "absent and the alerts built on them are blind there.",
        ),
        alert(
            config,
            "TimewaitExporterStale",
            # Age as of each scrape (the sample's timestamp), so a scrape interval longer
            # than the poll interval does not count as staleness.
            f"max {keep} (timestamp({last}) - {last})\n"
            f"/ max {keep} ({interval})\n"
            f"> {stale_intervals}",
            "warning",
            d.stale,
            "timewait-exporter polls on {{ $labels.instance }} have stopped",
            "The last complete poll on {{ $labels.instance }} is "
            f'{{{{ $value | printf "%.1f" }}}} poll intervals old (more than '
            f"{stale_intervals}): a poll hangs, and /metrics keeps answering with frozen "
            "figures (tcptw_source_success stays 1), so every alert on that node is blind.",
        ),
        alert(
            config,
            "TimewaitExporterPollsOverrunning",
            f"rate({sel(config, 'tcptw_poll_overruns_total')}[{config.rate_window}]) > 0",
            "warning",
            d.overrun,
            "timewait-exporter polls on {{ $labels.instance }} outlast the poll interval",
            "Polls on {{ $labels.instance }} keep taking longer than --poll.interval, so "
            "figures are refreshed less often than configured and namespaces are deferred "
            '(tcptw_poll_namespaces{outcome="deferred"}).',
        ),
        alert(
            config,
            "TimewaitExporterDiscoveryLimited",
            f"{sel(config, 'tcptw_netns_discovery_limited')} == 1",
            "warning",
            # A missing privilege is a fact from the first poll: as soon as a target is.
            d.exporter_down,
            "timewait-exporter on {{ $labels.instance }} cannot see or enter other "
            "network namespaces ({{ $labels.reason }})",
            "--netns=all on {{ $labels.instance }} is limited ({{ $labels.reason }}): "
            "pods' namespaces are not found or cannot be entered, so their TIME-WAIT and "
            "ephemeral ports are not watched. The exporter logged which privilege is "
            "missing.",
        ),
    ]


def groups(config: MixinConfig) -> list[dict[str, Any]]:
    return [
        {"name": "timewait-exporter.ports", "rules": [*ports(config), connect_failing(config)]},
        {"name": "timewait-exporter.timewait", "rules": timewait(config)},
        {"name": "timewait-exporter.exporter", "rules": exporter(config)},
    ]
