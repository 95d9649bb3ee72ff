"""The node / namespace drill-down: one node ($instance), its namespaces and destinations."""

from __future__ import annotations

from typing import Any

from mixin.config import MixinConfig
from mixin.dashboards.common import (
    POD,
    Column,
    Look,
    Table,
    Target,
    by,
    dashboard,
    graph,
    grid,
    legend,
    on,
    pct,
    port_steps,
    sel,
)
from mixin.dashboards.fleet import TIMESTAMPS, TW_REUSE, WIDTH_STEPS
from mixin.recording import (
    CONNECT_FAILURES,
    NETNS_MAX_RATIO,
    NO_FREE_PORT,
    POLL_AGE,
    outbound_close_rate,
)

UID = "timewait-node"
OUTBOUND = ("instance", "netns", "local_addr", "remote_addr", "remote_port")
INBOUND = ("instance", "netns", "local_addr", "local_port", "remote_addr")
# The folded rest of a namespace's buckets: its capacity is a sum, not a limit.
NOT_OTHER = 'remote_port!="other"'
NOT_OTHER_INBOUND = 'local_port!="other"'
RATE = "[$__rate_interval]"
TIME_WAIT = 'state="time_wait"'
# Host-wide sources (slab, sockstat's global part) report their duration with netns="".
HOST_WIDE = 'netns=""'


# --metrics.detail=compact sums the quiet namespaces' counters and sockets into rows
# labelled netns="": node totals include them; per-namespace lines leave them out (`and`
# a namespace's info series, which the fold has not) or, for the TcpExt rates (the only
# per-namespace view of the quiet namespaces' churn), name them.
QUIET = "quiet namespaces"
QUIET_NOTE = f' Namespaces that compact detail keeps quiet are summed into one line, "{QUIET}".'


def _namespaces(c: MixinConfig) -> str:
    return f"group {by(c, 'instance', 'netns')} ({sel(c, 'tcptw_netns_info', netns=True)})"


def _rate(c: MixinConfig, metric: str, name: str) -> Target:
    rate = f"sum {by(c, 'instance', 'netns')} (rate({sel(c, metric, netns=True)}{RATE}))"
    return Target(
        f'label_replace({rate}, "netns", "{QUIET}", "netns", "")', f"{{{{netns}}}} {name}"
    )


def _outbound(c: MixinConfig) -> list[Any]:
    k = by(c, *OUTBOUND)
    used = f"max {k} ({sel(c, 'tcptw_outbound_ports_used', NOT_OTHER, netns=True)})"
    capacities = sel(c, "tcptw_outbound_ports_capacity", NOT_OTHER, netns=True)
    capacity = f"max {k} ({capacities})"
    timewait = f"max {k} ({sel(c, 'tcptw_outbound_timewait_sockets', NOT_OTHER, netns=True)})"
    top = f"topk(20, {used})"
    top10 = f"topk(10, {used})"
    rates = sel(c, outbound_close_rate(c), NOT_OTHER, netns=True)
    closes = f"max {by(c, *OUTBOUND, 'method')} ({rates})"
    netns = by(c, "instance", "netns")
    return [
        graph(
            "Worst outbound utilisation per namespace",
            "Per namespace, used/capacity of its fullest outbound bucket (TIME-WAIT sockets "
            "that tcp_tw_reuse can take over are not counted). 1.0 means connect() toward that "
            "destination fails with EADDRNOTAVAIL; dips for one sample are TIME-WAIT batches "
            f"expiring. Above {c.thresholds.port_warning:g} find the destination below, then "
            "pool connections, add "
            "destination addresses or ports, widen ip_local_port_range or enable tcp_tw_reuse.",
            [
                Target(
                    f"max {netns} ({sel(c, NETNS_MAX_RATIO, POD, netns=True)})",
                    legend(c, "{{netns}}"),
                )
            ],
            Look(unit="percentunit", max=1, steps=port_steps(c), threshold_lines=True),
        ),
        graph(
            "Ephemeral ports in use vs available",
            "Distinct local ports of ip_local_port_range taken by any socket (solid) against "
            "the ports the range offers minus reserved ones (dashed). When they meet, bind(0) "
            "and connect() from an unbound socket toward a new destination fail. Many clients "
            "binding before connect() fill it: set IP_BIND_ADDRESS_NO_PORT, or widen the range.",
            [
                Target(
                    f"max {netns} ({sel(c, 'tcptw_ephemeral_ports_in_use', netns=True)})",
                    legend(c, "{{netns}} in use"),
                ),
                Target(
                    f"max {netns} ({sel(c, 'tcptw_ephemeral_ports_available', netns=True)})",
                    legend(c, "{{netns}} available"),
                ),
            ],
            Look(dashed="/ available$/"),
        ),
        graph(
            "Top destinations: ports used vs capacity",
            "The 10 fullest outbound buckets (local address -> remote address:port) with the "
            "capacity of their namespace dashed: the ports connect() may use toward any one "
            "destination. A used line reaching its capacity line means connect() to that "
            "destination fails now. Capacity is an upper bound: sockets that bind() before "
            "connect() take ports it cannot see, so failures can start slightly below it.",
            [
                Target(
                    top10, legend(c, "{{netns}} {{local_addr}} -> {{remote_addr}}:{{remote_port}}")
                ),
                Target(
                    f"max {netns} ({capacities}) and {on(c, 'instance', 'netns')} {top10}",
                    legend(c, "{{netns}} capacity"),
                ),
            ],
            Look(dashed="/ capacity$/", width=24, height=9),
        ),
        graph(
            "Connections closed per second vs sustainable",
            "The 10 outbound buckets closing the most connections a second (over "
            f"{c.rate_window}), "
            "counted exactly from the kernel's socket-destroy events (method events), or "
            "estimated as TIME-WAIT sockets / 60 where the exporter has no events (method "
            "timewait), against what their namespace sustains toward one destination, "
            "dashed: capacity / 60 s, since a connection closed from this side holds its port "
            "60 s in TIME-WAIT (the events also count connections the server closed first, "
            "which hold none). A rate line above its sustainable line exhausts the ports unless "
            f"tcp_tw_reuse covers the bucket; the alert fires at {pct(c.thresholds.rate_warning)}.",
            [
                Target(
                    f"topk(10, {closes})",
                    legend(
                        c,
                        "{{netns}} {{local_addr}} -> {{remote_addr}}:{{remote_port}} ({{method}})",
                    ),
                ),
                Target(
                    f"max {netns} ({sel(c, 'tcptw_outbound_bucket_capacity', netns=True)}) / 60",
                    legend(c, "{{netns}} sustainable"),
                ),
            ],
            Look(unit="reqps", dashed="/ sustainable$/", width=24, height=9),
        ),
        graph(
            "connect() failures (EADDRNOTAVAIL) by destination",
            "connect() calls per second that failed with EADDRNOTAVAIL, per namespace (pod) and "
            "destination address: no local port was free toward it, so the kernel gave up "
            "before sending any SYN. Counted from the socket-destroy events when the "
            'application closes the failed socket (the destination port is lost; "other" is '
            "the rest of the namespace's destinations). Any value above 0 is a failure the "
            "application saw (TcpConnectFailingNoFreePort). Beside it, AttemptFails counts "
            "the other kind: connects that failed after their SYN.",
            [
                Target(
                    f"sum {by(c, 'instance', 'netns', 'remote_addr')} "
                    f"(rate({sel(c, CONNECT_FAILURES, NO_FREE_PORT, netns=True)}{RATE}))"
                    f" and {on(c, 'instance', 'netns')} {_namespaces(c)}",
                    legend(c, "{{netns}} -> {{remote_addr}}"),
                )
            ],
            Look(unit="cps", steps=((None, "green"), (0.001, "red"))),
        ),
        graph(
            "Connects failed after their SYN (AttemptFails)",
            "The Tcp group's AttemptFails per second (/proc/net/snmp): connects that sent a "
            "SYN and then failed (refused, reset before establishment, timed out), with "
            "ActiveOpens, the connects that sent one. The difference from the EADDRNOTAVAIL "
            "panel: AttemptFails is after a SYN, where the destination or the path refused; "
            "EADDRNOTAVAIL is before any SYN, where this namespace had no local port, and "
            "neither AttemptFails nor ActiveOpens counts it." + QUIET_NOTE,
            [
                _rate(c, "tcptw_tcp_attempt_fails_total", "AttemptFails"),
                _rate(c, "tcptw_tcp_active_opens_total", "ActiveOpens"),
            ],
            Look(unit="cps"),
        ),
        grid(
            c,
            "Top destinations now",
            "The 20 fullest outbound buckets: sockets (each holding one local port), the "
            "capacity, their ratio and how many of them are in TIME-WAIT. High utilisation "
            "with mostly TIME-WAIT sockets means short-lived connections: keep-alive and "
            "pooling fix it, tcp_tw_reuse (with timestamps) lets connect() recycle them. "
            'tcp_fin_timeout does not shorten TIME-WAIT. Buckets folded into "other" are '
            "left out.",
            Table(
                columns=[
                    Column(Target(top), "used"),
                    Column(Target(f"{capacity} and {top}"), "capacity"),
                    Column(
                        Target(f"{used} / ({capacity} > 0) and {top}"),
                        "utilisation",
                        "percentunit",
                        port_steps(c),
                        gauge=True,
                        max=1,
                    ),
                    Column(Target(f"{timewait} and {top}"), "time_wait"),
                ],
                labels=OUTBOUND[1:],
                sort_by="utilisation",
                extra_hidden=("instance",),
                height=9,
            ),
        ),
    ]


def _inbound(c: MixinConfig) -> list[Any]:
    k = by(c, *INBOUND)
    sockets = f"max {k} ({sel(c, 'tcptw_inbound_sockets', NOT_OTHER_INBOUND, netns=True)})"
    timewait_sockets = sel(c, "tcptw_inbound_timewait_sockets", NOT_OTHER_INBOUND, netns=True)
    timewait = f"max {k} ({timewait_sockets})"
    top = f"topk(20, {sockets})"
    return [
        grid(
            c,
            "Inbound peers per listening port",
            "The 20 largest inbound buckets: per local address and port, the sockets of one "
            "client address, and how many are in TIME-WAIT. A client holding tens of "
            "thousands of sockets on one port is about to run out of its own ports toward us; "
            "many TIME-WAIT sockets here mean our server closes first (let the client close, "
            "or use keep-alive).",
            Table(
                columns=[
                    Column(Target(top), "sockets"),
                    Column(Target(f"{timewait} and {top}"), "time_wait"),
                ],
                labels=INBOUND[1:],
                sort_by="sockets",
                extra_hidden=("instance",),
                width=14,
                height=9,
            ),
        ),
        graph(
            "Peers per listening port",
            "Distinct client addresses per local port over time (the 10 busiest ports; "
            "addresses are grouped by --buckets.ipv4-prefix). A sudden rise is a new client "
            "population or a scan; a fall to few peers with many sockets each points to a "
            "proxy or NAT that will exhaust its ports first.",
            [
                Target(
                    f"topk(10, count {by(c, 'instance', 'netns', 'local_addr', 'local_port')} "
                    f"({sel(c, 'tcptw_inbound_sockets', NOT_OTHER_INBOUND, netns=True)}))",
                    legend(c, "{{netns}} {{local_addr}}:{{local_port}}"),
                )
            ],
            Look(width=10, height=9),
        ),
    ]


def _states(c: MixinConfig) -> list[Any]:
    netns = by(c, "instance", "netns")
    return [
        graph(
            "Sockets by state",
            "TCP sockets of the selected namespaces per state, as ss -tan counts them. "
            "time_wait far above established means short connections; close_wait growing "
            "means an application does not close its sockets (a leak); syn_recv piling up "
            "means a SYN flood or a slow accept loop.",
            [
                Target(
                    f"sum {by(c, 'instance', 'state')} ({sel(c, 'tcptw_sockets', netns=True)})",
                    legend(c, "{{state}}"),
                )
            ],
        ),
        graph(
            "TIME-WAIT vs tcp_max_tw_buckets",
            "TIME-WAIT sockets per namespace from sock_diag (namespaces shown in full) and "
            "from sockstat (every namespace; it also counts orphaned FIN-WAIT-2 "
            "minisockets), with tcp_max_tw_buckets dashed. Reaching "
            "the limit destroys new TIME-WAIT sockets at once (TCPTimeWaitOverflow): raise "
            "the limit or reduce connection churn.",
            [
                Target(
                    f"sum {netns} ({sel(c, 'tcptw_sockets', TIME_WAIT, netns=True)})"
                    f" and {on(c, 'instance', 'netns')} {_namespaces(c)}",
                    legend(c, "{{netns}} time_wait (sock_diag)"),
                ),
                Target(
                    f"max {netns} ({sel(c, 'tcptw_sockstat_tcp_tw', netns=True)})",
                    legend(c, "{{netns}} tw (sockstat)"),
                ),
                Target(
                    f"max {netns} ({sel(c, 'tcptw_sysctl_tcp_max_tw_buckets', netns=True)})",
                    legend(c, "{{netns}} tcp_max_tw_buckets"),
                ),
            ],
            Look(dashed="/ tcp_max_tw_buckets$/"),
        ),
    ]


def _tcpext(c: MixinConfig) -> list[Any]:
    return [
        graph(
            "TIME-WAIT lifecycle rates",
            "Per second: TIME-WAIT sockets expired (TW), taken over by tcp_tw_reuse "
            "(TWRecycled), killed early (TWKilled), and not created because tcp_max_tw_buckets "
            "was full (TCPTimeWaitOverflow). TW tracks the connection close rate; any "
            "TCPTimeWaitOverflow is bad: raise tcp_max_tw_buckets or reduce churn." + QUIET_NOTE,
            [
                _rate(c, "tcptw_tcpext_tw_total", "TW"),
                _rate(c, "tcptw_tcpext_tw_recycled_total", "TWRecycled"),
                _rate(c, "tcptw_tcpext_tw_killed_total", "TWKilled"),
                _rate(c, "tcptw_tcpext_tcp_time_wait_overflow_total", "TCPTimeWaitOverflow"),
            ],
            Look(unit="cps", width=8),
        ),
        graph(
            "PAWS and timestamp rejections",
            "Segments dropped by PAWS (timestamps going backwards) and related checks. "
            "PAWSPassive rising on old kernels with tcp_tw_recycle means clients behind NAT "
            "are being refused: turn tcp_tw_recycle off. PAWSEstab or TSEcrRejected rising "
            "points to a middlebox rewriting timestamps. PAWSPassive exists only before 4.12."
            + QUIET_NOTE,
            [
                _rate(c, "tcptw_tcpext_paws_passive_total", "PAWSPassive"),
                _rate(c, "tcptw_tcpext_paws_active_total", "PAWSActive"),
                _rate(c, "tcptw_tcpext_paws_estab_total", "PAWSEstab"),
                _rate(c, "tcptw_tcpext_paws_old_ack_total", "PAWSOldAck"),
                _rate(c, "tcptw_tcpext_paws_timewait_total", "PAWSTimewait"),
                _rate(c, "tcptw_tcpext_ts_ecr_rejected_total", "TSEcrRejected"),
                _rate(c, "tcptw_tcpext_tcp_ack_skipped_time_wait_total", "TCPACKSkippedTimeWait"),
                _rate(c, "tcptw_tcpext_tcp_ack_skipped_paws_total", "TCPACKSkippedPAWS"),
            ],
            Look(unit="cps", width=8),
        ),
        graph(
            "Listen queue overflows and drops",
            "Connection attempts per second dropped because a listener's accept queue was full "
            "(ListenOverflows) or for any reason (ListenDrops). Above 0: the server accepts too "
            "slowly or its backlog (listen(), net.core.somaxconn) is too small; clients see "
            "timeouts and retries, which add to their own port pressure." + QUIET_NOTE,
            [
                _rate(c, "tcptw_tcpext_listen_overflows_total", "ListenOverflows"),
                _rate(c, "tcptw_tcpext_listen_drops_total", "ListenDrops"),
            ],
            Look(unit="cps", steps=((None, "green"), (0.001, "red")), width=8),
        ),
    ]


def _memory(c: MixinConfig) -> list[Any]:
    slab = by(c, "instance", "cache", "merged", "shared_cache")
    node = by(c, "instance")
    return [
        graph(
            "Slab memory (TIME-WAIT and bind buckets)",
            "Memory of the tw_sock_TCP(v6), tcp_bind_bucket and tcp_bind2_bucket slab caches "
            '(merged="true": the shared cache SLUB merged it into). TIME-WAIT sockets are '
            "small (a few hundred bytes); gigabytes here mean millions of them: cut churn "
            "rather than raising limits.",
            [
                Target(
                    f"max {slab} ({sel(c, 'tcptw_slab_memory_bytes')})",
                    legend(c, "{{cache}} merged={{merged}} {{shared_cache}}"),
                )
            ],
            Look(unit="bytes", width=6),
        ),
        graph(
            "Slab objects in use",
            "Object slots in use in the same caches: roughly the TIME-WAIT sockets and bound "
            "ports of the node. tcp_bind_bucket growing without bound points to sockets that "
            "bind() and never close.",
            [
                Target(
                    f"max {slab} ({sel(c, 'tcptw_slab_active_objects')})",
                    legend(c, "{{cache}} merged={{merged}}"),
                ),
            ],
            Look(width=6),
        ),
        graph(
            "TCP buffer memory (sockstat)",
            "TCP buffer memory of the whole node (sockstat mem). Approaching tcp_mem's "
            "pressure threshold makes the kernel shrink buffers and, beyond it, drop "
            "segments: find the sockets with large queues (ss -tm).",
            [
                Target(
                    f"max {node} ({sel(c, 'tcptw_sockstat_tcp_memory_bytes')})",
                    legend(c, "{{instance}}"),
                )
            ],
            Look(unit="bytes", width=6),
        ),
        graph(
            "TCP sockets (sockstat)",
            "Allocated and orphaned TCP sockets of the node, and in-use sockets of the selected "
            "namespaces. Orphans (closed by the application, still finishing) near "
            "tcp_max_orphans get killed with a reset; many orphans in FIN-WAIT-2 are what "
            "tcp_fin_timeout shortens (it does not shorten TIME-WAIT).",
            [
                Target(f"max {node} ({sel(c, 'tcptw_sockstat_tcp_alloc')})", legend(c, "alloc")),
                Target(f"max {node} ({sel(c, 'tcptw_sockstat_tcp_orphan')})", legend(c, "orphan")),
                Target(
                    f"sum {node} ({sel(c, 'tcptw_sockstat_tcp_inuse', netns=True)})",
                    legend(c, "inuse"),
                ),
            ],
            Look(width=6),
        ),
    ]


def _sysctls(c: MixinConfig) -> list[Any]:
    netns = by(c, "instance", "netns")

    def value(metric: str) -> Target:
        return Target(f"max {netns} ({sel(c, metric, netns=True)})")

    low = sel(c, "tcptw_sysctl_ip_local_port_range_min", netns=True)
    high = sel(c, "tcptw_sysctl_ip_local_port_range_max", netns=True)
    return [
        grid(
            c,
            "Sysctls per namespace",
            "Every sysctl the exporter reads, per namespace. Bad values: a narrow "
            "ip_local_port_range (width under a few thousand), many reserved ports, "
            "tcp_tw_reuse 0 (or 2, loopback only) on a client, tcp_tw_recycle 1 (never behind "
            "NAT; the sysctl is gone since 4.12, so the column stays empty there), "
            "tcp_timestamps 0, a negative tcp_ehash_entries (shared host hash) on a busy node, "
            "tcp_child_ehash_entries 0 on the host. tcp_fin_timeout only affects orphaned "
            "FIN-WAIT-2 sockets, not TIME-WAIT.",
            Table(
                columns=[
                    Column(value("tcptw_sysctl_ip_local_port_range_min"), "port range min"),
                    Column(value("tcptw_sysctl_ip_local_port_range_max"), "port range max"),
                    Column(
                        Target(f"max {netns} ({high}) - max {netns} ({low}) + 1"),
                        "width",
                        steps=WIDTH_STEPS,
                    ),
                    Column(value("tcptw_sysctl_ip_local_reserved_ports"), "reserved"),
                    Column(value("tcptw_sysctl_tcp_tw_reuse"), "tcp_tw_reuse", mappings=TW_REUSE),
                    Column(value("tcptw_sysctl_tcp_tw_reuse_delay_seconds"), "tw_reuse_delay", "s"),
                    Column(
                        value("tcptw_sysctl_tcp_tw_recycle"),
                        "tcp_tw_recycle",
                        mappings={"0": ("off", "green"), "1": ("ON", "red")},
                    ),
                    Column(value("tcptw_sysctl_tcp_max_tw_buckets"), "max_tw_buckets"),
                    Column(
                        value("tcptw_sysctl_tcp_timestamps"), "tcp_timestamps", mappings=TIMESTAMPS
                    ),
                    Column(value("tcptw_sysctl_tcp_fin_timeout_seconds"), "fin_timeout", "s"),
                    Column(
                        value("tcptw_sysctl_tcp_ehash_entries"),
                        "ehash_entries",
                        steps=((None, "blue"), (0, "green")),
                    ),
                    Column(value("tcptw_sysctl_tcp_child_ehash_entries"), "child_ehash_entries"),
                ],
                labels=("instance", "netns"),
                extra_hidden=("instance",),
                height=10,
            ),
        ),
    ]


def _exporter(c: MixinConfig) -> list[Any]:
    netns = by(c, "instance", "netns")
    return [
        graph(
            "Namespace poll age",
            "How much older than the last poll each namespace's figures are (0: read in the "
            "last poll; the 10 oldest shown), with the age of the last complete poll dashed. "
            "Namespaces that stay behind were deferred by the poll budget; a rising poll age "
            "is a hung poll (stale exporter): restart it and read its log.",
            [
                Target(
                    f"topk(10, max {netns} ({sel(c, 'tcptw_netns_poll_age_seconds', netns=True)}))",
                    legend(c, "{{netns}}"),
                ),
                Target(f"max {by(c, 'instance')} ({sel(c, POLL_AGE)})", legend(c, "last poll")),
            ],
            Look(unit="s", dashed="/last poll$/", width=8),
        ),
        graph(
            "Namespace poll duration",
            "Time all sources of a namespace took when last read (the 10 slowest), and of the "
            "host-wide sources. An empty namespace that still takes tens of ms shares the "
            "host's established hash with a busy one: set tcp_child_ehash_entries on the host.",
            [
                Target(
                    f"topk(10, max {netns} "
                    f"({sel(c, 'tcptw_netns_poll_duration_seconds', netns=True)}))",
                    legend(c, "{{netns}}"),
                ),
                Target(
                    f"max {by(c, 'instance', 'source')} "
                    f"({sel(c, 'tcptw_source_duration_seconds', HOST_WIDE)})",
                    legend(c, "{{source}} (host-wide)"),
                ),
            ],
            Look(unit="s", width=8),
        ),
        graph(
            "Failing sources",
            "Per source, the namespaces whose last read of it failed. Above 0 that source's "
            "metrics are missing there, so panels undercount; the exporter's log names the "
            "reason once (capabilities, a root-only file, a kernel without it).",
            [
                Target(
                    f"sum {by(c, 'instance', 'source')} "
                    f"(1 - {sel(c, 'tcptw_source_success', netns=True)})",
                    legend(c, "{{source}}"),
                )
            ],
            Look(steps=((None, "green"), (1, "orange")), width=4),
        ),
        graph(
            'Buckets folded into "other"',
            'Buckets of the node summed into each namespace\'s "other" series because only '
            "the --buckets.top largest get their own. Sums stay exact, but a destination "
            'hidden in "other" cannot be named: raise --buckets.top if the tables above '
            "miss the destination you are chasing.",
            [
                Target(
                    f"max {by(c, 'instance', 'direction')} ({sel(c, 'tcptw_buckets_folded')})",
                    legend(c, "{{direction}}"),
                )
            ],
            Look(width=4),
        ),
    ]


def node(config: MixinConfig) -> dict[str, Any]:
    return dashboard(
        config,
        uid=UID,
        title="TIME-WAIT / Node",
        description="timewait-exporter: one node's namespaces, their destinations and peers, "
        "socket states, TcpExt counters, slab memory and sysctls.",
        many_instances=False,
        sections=[
            ("Outbound ports", _outbound(config)),
            ("Inbound peers", _inbound(config)),
            ("Socket states", _states(config)),
            ("TcpExt counters", _tcpext(config)),
            ("Memory", _memory(config)),
            ("Sysctls", _sysctls(config)),
            ("Exporter on this node", _exporter(config)),
        ],
    )
