"""Recording rules: the per-bucket and per-namespace ratios the alerts and the fleet
dashboard read, with the pod labels of tcptw_netns_info joined on, and the exporter's poll
age.

The names below are imported by the alerts and the dashboards: change one and both follow.
Every rule selects job="<job>" (mixin.promql.rule_matchers) and keeps the cluster label
(MixinConfig.cluster_label) in its aggregations, so one Prometheus holding several clusters
keeps them apart.
"""

from __future__ import annotations

from typing import Any

from mixin.config import MixinConfig
from mixin.promql import rule_matchers, selector

# used/capacity of each outbound bucket that has its own series (the `other` series left
# out), 1.0 where capacity is 0; labels of tcptw_outbound_ports_used plus the pod labels.
OUTBOUND_BUCKET_RATIO = "tcptw:outbound_port_utilization:ratio"
# tcptw_outbound_port_utilization_max_ratio per (instance, netns), pod labels joined.
NETNS_MAX_RATIO = "tcptw:outbound_port_utilization_max:ratio"
# Distinct ephemeral ports bound / ports of the range less the reserved ones, per namespace.
EPHEMERAL_IN_USE_RATIO = "tcptw:ephemeral_ports_in_use:ratio"
# TIME-WAIT sockets per namespace and direction="inbound"|"outbound", `other` included.
TIMEWAIT_BY_DIRECTION = "tcptw:timewait_sockets:sum"
# time() - tcptw_last_poll_timestamp_seconds per instance, and the same in poll intervals.
POLL_AGE = "tcptw:poll_age:seconds"
POLL_AGE_INTERVALS = "tcptw:poll_age:intervals"

# outbound_close_rate / the sustainable one (the namespace's per-destination capacity / 60 s), per
# bucket, pod labels joined; buckets that tcp_tw_reuse covers are left out (their
# TIME-WAIT does not hold ports, so capacity / 60 is no limit).
OUTBOUND_RATE_RATIO = "tcptw:outbound_connection_rate_sustainable:ratio"


# The rules over rate() windows are named after MixinConfig.rate_window, as the
# convention asks (level:metric:operation): tcptw:...:rate5m by default.
def tw_overflow_rate(config: MixinConfig) -> str:
    return f"tcptw:tcpext_tcp_time_wait_overflow:rate{config.rate_window}"


def tw_recycled_rate(config: MixinConfig) -> str:
    return f"tcptw:tcpext_tw_recycled:rate{config.rate_window}"


# Connections closed per second per outbound bucket: from the socket-destroy counters
# where the namespace has them (method="events"), else estimated as TIME-WAIT sockets / 60 s
# (method="timewait", Little's law at steady state). Each namespace's `other` row is one
# too, and so is the netns="" row where --metrics.detail=compact sums the quiet namespaces'
# closes (its TIME-WAIT left out of the estimate: the quiet namespaces' closes are in the
# events' fold), so that sums over it are the node's closes; per-bucket views and the
# ratio below leave `other` out.
def outbound_close_rate(config: MixinConfig) -> str:
    return f"tcptw:outbound_connections_closed:rate{config.rate_window}"


# connect() calls failed with EADDRNOTAVAIL per second, per namespace and destination address
# (each namespace's `other` row too: the rest of its destinations), pod labels joined; the
# netns="" rows left out. The fleet dashboard reads it.
def connect_failures_rate(config: MixinConfig) -> str:
    return f"tcptw:connect_failures:rate{config.rate_window}"


def names(config: MixinConfig) -> tuple[str, ...]:
    """Every recorded name, in the order of the rules."""
    return (
        OUTBOUND_BUCKET_RATIO,
        NETNS_MAX_RATIO,
        EPHEMERAL_IN_USE_RATIO,
        TIMEWAIT_BY_DIRECTION,
        tw_overflow_rate(config),
        tw_recycled_rate(config),
        POLL_AGE,
        POLL_AGE_INTERVALS,
        outbound_close_rate(config),
        OUTBOUND_RATE_RATIO,
        connect_failures_rate(config),
    )


LOOPBACK = '"127\\\\..+|::1"'  # tcp_tw_reuse=2 covers buckets with a loopback end

NETNS = ("instance", "job", "netns")
BUCKET = (*NETNS, "local_addr", "remote_addr", "remote_port")
POD_LABELS = ("k8s_namespace_name", "k8s_pod_name")
# Not the netns="" rows, where --metrics.detail=compact sums the quiet namespaces (and
# host-wide sources report).
NOT_FOLDED = 'netns!=""'
# connect() failed with EADDRNOTAVAIL, per namespace and destination address (exporter/events).
CONNECT_FAILURES = "tcptw_connect_failures_total"
NO_FREE_PORT = 'error="eaddrnotavail"'


def labels(config: MixinConfig, *names: str) -> str:
    """`cluster, names...` (the cluster label first when configured)."""
    return ", ".join([config.cluster_label, *names] if config.cluster_label else names)


def by(config: MixinConfig, *names: str) -> str:
    return f"by ({labels(config, *names)})"


def on(config: MixinConfig, *names: str) -> str:
    return f"on ({labels(config, *names)})"


def sel(config: MixinConfig, metric: str, *extra: str) -> str:
    """metric{job="<job>", extra...}."""
    return selector(metric, rule_matchers(config), *extra)


def with_pod(config: MixinConfig, expr: str) -> str:
    """expr (one series per namespace at most) with tcptw_netns_info's pod labels joined."""
    info = sel(config, "tcptw_netns_info")
    return (
        f"{expr}\n"
        f"* {on(config, 'instance', 'netns')} group_left ({', '.join(POD_LABELS)})\n"
        f"  max {by(config, 'instance', 'netns', *POD_LABELS)} ({info})"
    )


def ratio(
    config: MixinConfig, numerator: str, denominator: str, keep: tuple[str, ...], *extra: str
) -> str:
    """sum(numerator) / sum(denominator) by `keep`, and 1 where the denominator is 0 (no
    port left at all: the next connect() or bind(0) fails, as the exporter's max ratio says)."""
    num = f"sum {by(config, *keep)} ({sel(config, numerator, *extra)})"
    den = f"sum {by(config, *keep)} ({sel(config, denominator, *extra)})"
    return f"(\n  {num}\n  / ({den} > 0)\n  or ({den} == 0) * 0 + 1\n)"


def groups(config: MixinConfig) -> list[dict[str, Any]]:
    other = 'remote_addr!="other"'
    rate = f"[{config.rate_window}]"
    rules: list[dict[str, Any]] = [
        {
            "record": OUTBOUND_BUCKET_RATIO,
            "expr": with_pod(
                config,
                ratio(
                    config,
                    "tcptw_outbound_ports_used",
                    "tcptw_outbound_ports_capacity",
                    BUCKET,
                    other,
                ),
            ),
        },
        {
            "record": NETNS_MAX_RATIO,
            "expr": with_pod(
                config,
                f"max {by(config, *NETNS)} "
                f"({sel(config, 'tcptw_outbound_port_utilization_max_ratio')})",
            ),
        },
        {
            "record": EPHEMERAL_IN_USE_RATIO,
            "expr": with_pod(
                config,
                ratio(
                    config, "tcptw_ephemeral_ports_in_use", "tcptw_ephemeral_ports_available", NETNS
                ),
            ),
        },
        {
            "record": TIMEWAIT_BY_DIRECTION,
            "expr": "\nor\n".join(
                f"label_replace(\n  sum {by(config, *NETNS)} "
                f"({sel(config, f'tcptw_{direction}_timewait_sockets')}),\n"
                f'  "direction", "{direction}", "", ""\n)'
                for direction in ("inbound", "outbound")
            ),
        },
        {
            "record": tw_overflow_rate(config),
            "expr": f"sum {by(config, *NETNS)} "
            f"(rate({sel(config, 'tcptw_tcpext_tcp_time_wait_overflow_total')}{rate}))",
        },
        {
            "record": tw_recycled_rate(config),
            "expr": f"sum {by(config, *NETNS)} "
            f"(rate({sel(config, 'tcptw_tcpext_tw_recycled_total')}{rate}))",
        },
        {
            "record": POLL_AGE,
            "expr": f"time() - max {by(config, 'instance', 'job')} "
            f"({sel(config, 'tcptw_last_poll_timestamp_seconds')})",
        },
        {
            # Same group, so evaluated right after POLL_AGE, in the same evaluation.
            "record": POLL_AGE_INTERVALS,
            "expr": f"{sel(config, POLL_AGE)}\n"
            f"/ {on(config, 'instance', 'job')}\n"
            f"  max {by(config, 'instance', 'job')} "
            f"({sel(config, 'tcptw_poll_interval_seconds')})",
        },
    ]
    rules += connection_rate(config)
    rules.append(
        {
            "record": connect_failures_rate(config),
            "expr": with_pod(
                config,
                f"sum {by(config, *NETNS, 'remote_addr')} "
                f"(rate({sel(config, CONNECT_FAILURES, NOT_FOLDED, NO_FREE_PORT)}{rate}))",
            ),
        }
    )
    return [{"name": "timewait-exporter.recording", "rules": rules}]


def reuse_covers(config: MixinConfig, value: int) -> str:
    """Namespaces where tcp_tw_reuse is `value` and timestamps are on."""
    ns = ("instance", "job", "netns")
    return (
        f"(max {by(config, *ns)} ({sel(config, 'tcptw_sysctl_tcp_tw_reuse')} == {value})\n"
        f"  and {on(config, *ns)} max {by(config, *ns)} "
        f"({sel(config, 'tcptw_sysctl_tcp_timestamps')} == 1))"
    )


def connection_rate(config: MixinConfig) -> list[dict[str, Any]]:
    rate = f"[{config.rate_window}]"
    other = 'remote_addr!="other"'
    ns = ("instance", "job", "netns")
    events = (
        f"label_replace(\n  sum {by(config, *BUCKET)} "
        f"(rate({sel(config, 'tcptw_outbound_connections_closed_total')}{rate})),\n"
        '  "method", "events", "", ""\n)'
    )
    estimate = (
        f"label_replace(\n  sum {by(config, *BUCKET)} "
        f"({sel(config, 'tcptw_outbound_timewait_sockets', NOT_FOLDED)}) / 60\n"
        f"  unless {on(config, *ns)} "
        f"max {by(config, *ns)} ({sel(config, 'tcptw_socket_events_up')} == 1),\n"
        '  "method", "timewait", "", ""\n)'
    )
    closes = sel(config, outbound_close_rate(config), other)
    near_loop = (
        f"{sel(config, outbound_close_rate(config), f'local_addr=~{LOOPBACK}')} "
        f"or {sel(config, outbound_close_rate(config), f'remote_addr=~{LOOPBACK}')}"
    )
    limited = (
        f"(\n  ({closes}\n  unless {on(config, *ns)} {reuse_covers(config, 1)})\n"
        f"  unless (({near_loop}) and {on(config, *ns)} {reuse_covers(config, 2)})\n)"
    )
    capacity = f"max {by(config, *ns)} ({sel(config, 'tcptw_outbound_bucket_capacity')} > 0)"
    return [
        {"record": outbound_close_rate(config), "expr": f"{events}\nor\n{estimate}"},
        {
            "record": OUTBOUND_RATE_RATIO,
            "expr": with_pod(
                config,
                f"60 * {limited}\n/ {on(config, *ns)} group_left\n  {capacity}",
            ),
        },
    ]
