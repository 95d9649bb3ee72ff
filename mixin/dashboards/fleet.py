"""The fleet dashboard: every node and pod at once, ranked, from the recording rules."""

from __future__ import annotations

from typing import Any

from mixin.config import MixinConfig
from mixin.dashboards.common import (
    POD,
    Column,
    Look,
    Table,
    Target,
    bars,
    by,
    dashboard,
    graph,
    grid,
    legend,
    limit_steps,
    on,
    port_steps,
    sel,
    single,
)
from mixin.recording import (
    EPHEMERAL_IN_USE_RATIO,
    NETNS_MAX_RATIO,
    OUTBOUND_BUCKET_RATIO,
    OUTBOUND_RATE_RATIO,
    POLL_AGE,
    POLL_AGE_INTERVALS,
    TIMEWAIT_BY_DIRECTION,
    connect_failures_rate,
    outbound_close_rate,
    tw_overflow_rate,
    tw_recycled_rate,
)

UID = "timewait-fleet"
BUCKET_LABELS = ("instance", "netns", "local_addr", "remote_addr", "remote_port")
POD_LABELS = ("instance", "netns", "k8s_namespace_name", "k8s_pod_name")
BUCKET = ("local_addr", "remote_addr", "remote_port")
TW_REUSE = {"0": ("off", "orange"), "1": ("on", "green"), "2": ("loopback only", "orange")}
TIMESTAMPS = {"0": ("off", "red"), "1": ("on", "green"), "2": ("on, no offsets", "green")}
# The host namespace's label (README: the netns label): tcp_child_ehash_entries matters there.
HOST = 'netns="host"'
LATE = 'outcome=~"deferred|failed"'
WIDTH_STEPS = ((None, "red"), (4096, "orange"), (16384, "green"))


def _exhaustion(c: MixinConfig) -> list[Any]:
    t = c.thresholds
    worst = sel(c, NETNS_MAX_RATIO, POD, netns=True)
    ranked = f"topk(50, max {by(c, *POD_LABELS)} ({worst}))"
    ephemeral = sel(c, EPHEMERAL_IN_USE_RATIO, POD, netns=True)
    return [
        grid(
            c,
            "Namespaces closest to outbound port exhaustion",
            "The 50 namespaces (with their pod) whose fullest outbound bucket is closest to its "
            "capacity, and how much of the ephemeral range bind(0) competes for is taken. "
            '1.0 in "worst bucket" means the next connect() toward that destination fails '
            f"with EADDRNOTAVAIL. Above {c.thresholds.port_warning:g}: open the node dashboard "
            "for this namespace to see "
            "the destination, then widen ip_local_port_range, add destination addresses or "
            "ports, pool and keep connections alive, or enable tcp_tw_reuse (with "
            "timestamps) on the client. A high ephemeral share with a low worst bucket points "
            "to bind() before connect() (IP_BIND_ADDRESS_NO_PORT helps).",
            Table(
                columns=[
                    Column(
                        Target(ranked),
                        "worst bucket",
                        "percentunit",
                        port_steps(c),
                        gauge=True,
                        max=1,
                    ),
                    Column(
                        Target(
                            f"max {by(c, *POD_LABELS)} ({ephemeral}) "
                            f"and {on(c, 'instance', 'netns')} {ranked}"
                        ),
                        "ephemeral range in use",
                        "percentunit",
                        port_steps(c),
                        gauge=True,
                        max=1,
                    ),
                ],
                labels=POD_LABELS,
                sort_by="worst bucket",
                width=14,
                height=10,
            ),
        ),
        bars(
            "Nodes by worst outbound utilisation",
            "The 10 nodes holding the outbound bucket closest to exhaustion (max over their "
            "namespaces). A bar at 1.0 means connect() toward some destination is failing "
            "there now; pick the node as $instance in the node dashboard.",
            [Target(f"topk(10, max {by(c, 'instance')} ({worst}))", legend(c, "{{instance}}"))],
            Look(unit="percentunit", max=1, steps=port_steps(c), width=10, height=10),
        ),
        grid(
            c,
            "Destinations closest to exhaustion",
            "The 20 outbound buckets (local address, remote address and port) with the highest "
            "used/capacity, with the pod that owns them. Near 1.0 this pod is about to fail "
            "connect() toward this destination with EADDRNOTAVAIL. Fix it at the client: "
            "connection pooling and keep-alive, more destination addresses or ports, a wider "
            "ip_local_port_range, tcp_tw_reuse with timestamps (never tcp_tw_recycle). "
            "tcp_fin_timeout does not shorten TIME-WAIT.",
            Table(
                columns=[
                    Column(
                        Target(
                            f"topk(20, max {by(c, *POD_LABELS, *BUCKET)} "
                            f"({sel(c, OUTBOUND_BUCKET_RATIO, POD, netns=True)}))"
                        ),
                        "utilisation",
                        "percentunit",
                        port_steps(c),
                        gauge=True,
                        max=1,
                    )
                ],
                labels=(*POD_LABELS, *BUCKET),
                sort_by="utilisation",
                height=9,
            ),
        ),
        graph(
            "Worst outbound utilisation over time",
            "The 10 namespaces with the fullest outbound bucket at each instant. Utilisation "
            "dips for a moment whenever a batch of TIME-WAIT sockets expires, so judge the "
            f"trend, not single samples. Sustained above {t.port_critical:g} (dashed lines at "
            f"{t.port_warning:g} and {t.port_critical:g}): "
            "connect() failures are imminent or happening; see the table above for the pod "
            "and destination.",
            [
                Target(
                    f"topk(10, max {by(c, 'instance', 'netns')} ({worst}))",
                    legend(c, "{{instance}} {{netns}}"),
                )
            ],
            Look(unit="percentunit", max=1, steps=port_steps(c), threshold_lines=True, width=24),
        ),
        graph(
            "connect() failures (EADDRNOTAVAIL) by pod and destination",
            "connect() calls per second that failed with EADDRNOTAVAIL, by pod and destination "
            f"address (the 10 highest; {c.rate_window} rate): no local port was free toward "
            "that destination. Not a forecast: the application saw these errors, and "
            "TcpConnectFailingNoFreePort fires on any. It also sees failures utilisation "
            "misses (ports that clients bind() before connect() are skipped by connect()). "
            "\"other\" is the rest of a namespace's destinations. Counted from the kernel's "
            "socket-destroy events when the failed socket is closed; the destination port is "
            "not known.",
            [
                Target(
                    f"topk(10, max {by(c, *POD_LABELS, 'remote_addr')} "
                    f"({sel(c, connect_failures_rate(c), POD, netns=True)}))",
                    legend(c, "{{instance}} {{netns}} -> {{remote_addr}}"),
                )
            ],
            Look(unit="cps", steps=((None, "green"), (0.001, "red")), width=24),
        ),
    ]


def _timewait(c: MixinConfig) -> list[Any]:
    t = c.thresholds
    tw = sel(c, "tcptw_sockstat_tcp_tw", netns=True)
    buckets = sel(c, "tcptw_sysctl_tcp_max_tw_buckets", netns=True)
    netns = by(c, "instance", "netns")
    return [
        graph(
            "TIME-WAIT sockets, inbound vs outbound",
            "TIME-WAIT sockets on the selected nodes by who closed first: outbound (we "
            "connected, and each one holds an ephemeral port toward its destination for 60 s) "
            "and inbound (peers connected to us; they cost memory, not ports). Outbound "
            "growing with the connection rate is the road to port exhaustion: reuse "
            "connections. Inbound growing means our servers close first; letting clients "
            "close first moves TIME-WAIT to them.",
            [
                Target(
                    f"sum {by(c, 'direction')} ({sel(c, TIMEWAIT_BY_DIRECTION, netns=True)})",
                    legend(c, "{{direction}}"),
                )
            ],
            Look(stack=True, width=12),
        ),
        graph(
            "TIME-WAIT as a share of tcp_max_tw_buckets",
            "The 10 namespaces closest to tcp_max_tw_buckets (sockstat's tw count over the "
            "sysctl). At 1.0 the kernel destroys new TIME-WAIT sockets at once "
            "(TCPTimeWaitOverflow rises), which can let delayed segments of an old connection "
            "corrupt a new one; the alert fires at "
            f"{t.timewait_buckets_warning:g}. Reduce the connection churn, or raise "
            "tcp_max_tw_buckets.",
            [
                Target(
                    f"topk(10, max {netns} ({tw}) / {on(c, 'instance', 'netns')} "
                    f"(max {netns} ({buckets}) > 0))",
                    legend(c, "{{instance}} {{netns}}"),
                )
            ],
            Look(
                unit="percentunit",
                max=1,
                steps=limit_steps(t.timewait_buckets_warning),
                threshold_lines=True,
                width=12,
            ),
        ),
        graph(
            "TIME-WAIT overflow (TCPTimeWaitOverflow)",
            "TIME-WAIT sockets per second not created because tcp_max_tw_buckets was reached "
            "(5-minute rate, per node). Anything above 0 means the limit is hit: the "
            "connection's quadruplet is free at once and the protection TIME-WAIT gives "
            "against old duplicates is gone. Raise tcp_max_tw_buckets or cut connection churn.",
            [
                Target(
                    f"sum {by(c, 'instance')} ({sel(c, tw_overflow_rate(c), netns=True)})",
                    legend(c, "{{instance}}"),
                )
            ],
            Look(unit="cps", steps=((None, "green"), (0.001, "red")), width=12),
        ),
        graph(
            "TIME-WAIT reuse (TWRecycled)",
            "TIME-WAIT sockets per second that connect() took over thanks to tcp_tw_reuse "
            "(TcpExt TWRecycled, despite the name; 5-minute rate, per node). Not an error: it "
            "shows clients survive on reuse. A high rate together with high utilisation means "
            "reuse is what keeps connect() working; pool connections to need it less.",
            [
                Target(
                    f"sum {by(c, 'instance')} ({sel(c, tw_recycled_rate(c), netns=True)})",
                    legend(c, "{{instance}}"),
                )
            ],
            Look(unit="cps", width=12),
        ),
        graph(
            "Connections closed per second",
            "Outbound connections closed per second per node (5-minute rate), counted from the "
            "kernel's socket-destroy events, or estimated as TIME-WAIT sockets / 60 where a "
            'namespace has no events (method timewait); every destination, "other" and the '
            'quiet namespaces that compact detail sums into netns="" included. Each holds its '
            "local port 60 s: churn toward few destinations is what exhausts ports; pool "
            "connections.",
            [
                Target(
                    f"sum {by(c, 'instance', 'method')} "
                    f"({sel(c, outbound_close_rate(c), netns=True)})",
                    legend(c, "{{instance}} {{method}}"),
                )
            ],
            Look(unit="cps", width=12),
        ),
        graph(
            "Connection rate vs sustainable, worst destinations",
            "The 10 outbound buckets closest to the rate their ports sustain: connections "
            "closed per second over capacity / 60 s (buckets tcp_tw_reuse covers left out). "
            "At 1.0 the bucket's ports run out in TIME-WAIT and connect() fails with "
            f"EADDRNOTAVAIL; the alert fires at {t.rate_warning:g}.",
            [
                Target(
                    f"topk(10, max {by(c, *BUCKET_LABELS)} "
                    f"({sel(c, OUTBOUND_RATE_RATIO, netns=True)}))",
                    legend(
                        c,
                        "{{instance}} {{netns}} {{local_addr}} -> {{remote_addr}}:{{remote_port}}",
                    ),
                )
            ],
            Look(
                unit="percentunit",
                steps=limit_steps(t.rate_warning),
                threshold_lines=True,
                width=12,
            ),
        ),
    ]


def _posture(c: MixinConfig) -> list[Any]:
    def count(metric: str, condition: str, *extra: str, netns: bool = True) -> str:
        return f"count({sel(c, metric, *extra, netns=netns)} {condition}) or vector(0)"

    low = sel(c, "tcptw_sysctl_ip_local_port_range_min", netns=True)
    high = sel(c, "tcptw_sysctl_ip_local_port_range_max", netns=True)
    bad = ((None, "green"), (1, "orange"))
    look = Look(steps=bad, width=4, height=5)
    netns = by(c, "instance", "netns")
    return [
        single(
            "Namespaces with tcp_tw_reuse off",
            "Namespaces where tcp_tw_reuse is 0. A client there cannot take over its own "
            "TIME-WAIT sockets, so every connection toward one destination holds a port for "
            "60 s. Set net.ipv4.tcp_tw_reuse=1 on clients (it needs tcp_timestamps); 2, the "
            "default, only covers loopback.",
            [Target(count("tcptw_sysctl_tcp_tw_reuse", "== 0"))],
            look,
        ),
        single(
            "Namespaces with tcp_timestamps off",
            "Namespaces where tcp_timestamps is 0. tcp_tw_reuse does nothing without "
            "timestamps, and PAWS cannot protect reused quadruplets. Turn net.ipv4."
            "tcp_timestamps back on unless a middlebox truly requires it off.",
            [Target(count("tcptw_sysctl_tcp_timestamps", "== 0"))],
            Look(steps=((None, "green"), (1, "red")), width=4, height=5),
        ),
        single(
            "Namespaces with tcp_tw_recycle on",
            "Namespaces where tcp_tw_recycle is 1 (kernels before 4.12 only; newer kernels "
            "have no such sysctl, so this stays 0). It drops connections from clients behind "
            "NAT whose timestamps disagree. Never enable it: set net.ipv4.tcp_tw_recycle=0.",
            [Target(count("tcptw_sysctl_tcp_tw_recycle", "== 1"))],
            Look(steps=((None, "green"), (1, "red")), width=4, height=5),
        ),
        single(
            "Smallest ephemeral port range",
            "The narrowest ip_local_port_range (max - min + 1) of any selected namespace: the "
            "most connections it can hold toward one destination, TIME-WAIT included. Under "
            "4096 (red) a moderate connection rate exhausts it in a minute; the default is "
            "28232. Widen net.ipv4.ip_local_port_range (e.g. 1024 65535, keeping listening "
            "ports out with ip_local_reserved_ports).",
            [Target(f"min({high} - {low} + 1)")],
            Look(steps=WIDTH_STEPS, min=None, width=4, height=5),
        ),
        single(
            "Namespaces sharing the host's established hash",
            "Namespaces whose tcp_ehash_entries is negative: they use the host's TCP "
            "established hash (tcp_child_ehash_entries was 0 when they were created, the "
            "default). Harmless with few sockets; on busy nodes every dump in any of them walks "
            "the whole node's table. Set tcp_child_ehash_entries on the host (Linux 6.1+).",
            [Target(count("tcptw_sysctl_tcp_ehash_entries", "< 0"))],
            Look(steps=((None, "green"), (1, "blue")), width=4, height=5),
        ),
        single(
            "Nodes with tcp_child_ehash_entries 0",
            "Nodes whose host namespace has tcp_child_ehash_entries 0, so new pod namespaces "
            "share the host's established hash. On nodes with many pods and many sockets set "
            "net.ipv4.tcp_child_ehash_entries (e.g. 65536) on the host; it applies to pods "
            "started afterwards.",
            [Target(count("tcptw_sysctl_tcp_child_ehash_entries", "== 0", HOST, netns=False))],
            Look(steps=((None, "green"), (1, "blue")), width=4, height=5),
        ),
        grid(
            c,
            "Sysctl posture per namespace",
            "The sysctls that decide how soon ports run out, per namespace. Bad values: "
            "tcp_tw_reuse off (0) or loopback only (2) on a client; a port range under a few "
            "thousand ports; many reserved ports; tcp_timestamps off; a negative "
            "tcp_ehash_entries (shared hash) on a busy node. Fix them in the pod's or node's "
            "sysctls (securityContext.sysctls, or the node's /etc/sysctl.d).",
            Table(
                columns=[
                    Column(
                        Target(f"max {netns} ({sel(c, 'tcptw_sysctl_tcp_tw_reuse', netns=True)})"),
                        "tcp_tw_reuse",
                        mappings=TW_REUSE,
                    ),
                    Column(
                        Target(f"max {netns} ({high}) - max {netns} ({low}) + 1"),
                        "port range width",
                        steps=WIDTH_STEPS,
                    ),
                    Column(
                        Target(
                            f"max {netns} "
                            f"({sel(c, 'tcptw_sysctl_ip_local_reserved_ports', netns=True)})"
                        ),
                        "reserved ports",
                    ),
                    Column(
                        Target(
                            f"max {netns} ({sel(c, 'tcptw_sysctl_tcp_timestamps', netns=True)})"
                        ),
                        "tcp_timestamps",
                        mappings=TIMESTAMPS,
                    ),
                    Column(
                        Target(
                            f"max {netns} ({sel(c, 'tcptw_sysctl_tcp_ehash_entries', netns=True)})"
                        ),
                        "tcp_ehash_entries",
                        steps=((None, "blue"), (0, "green")),
                    ),
                    Column(
                        Target(
                            f"max {netns} ({sel(c, 'tcptw_sysctl_tcp_max_tw_buckets', netns=True)})"
                        ),
                        "tcp_max_tw_buckets",
                    ),
                ],
                labels=("instance", "netns"),
                height=10,
            ),
        ),
    ]


def _health(c: MixinConfig) -> list[Any]:
    stale = c.thresholds.stale_intervals
    node = by(c, "instance")
    return [
        single(
            "Exporters down",
            "Targets of $job whose last scrape failed (up == 0). Their nodes are blind: no "
            "utilisation, no alerts. Check the DaemonSet pod or systemd unit on that node, "
            "and the network path from Prometheus.",
            [Target(f"count({sel(c, 'up')} == 0) or vector(0)")],
            Look(steps=((None, "green"), (1, "red")), width=6, height=5),
        ),
        single(
            "Oldest poll",
            "How long ago the stalest exporter started its last complete poll. More than "
            f"{stale} poll intervals means a hung poll: /metrics still answers with old figures "
            "and tcptw_source_success 1, but nothing is current. Look at the exporter's log and "
            "/readyz, and restart it.",
            [Target(f"max({sel(c, POLL_AGE)})")],
            Look(
                unit="s", steps=((None, "green"), (60, "orange"), (120, "red")), width=6, height=5
            ),
        ),
        single(
            "Failing sources",
            "(namespace, source) pairs whose last read failed (tcptw_source_success 0); their "
            "metrics are absent, so panels and alerts undercount. The exporter logs the reason "
            "once; usually a namespace that cannot be entered (capabilities) or a root-only "
            "file.",
            [Target(f"sum(1 - {sel(c, 'tcptw_source_success')})")],
            Look(steps=((None, "green"), (1, "orange")), width=6, height=5),
        ),
        single(
            "Namespaces deferred or failed",
            "Namespaces the last polls deferred (poll budget exhausted) or failed to read. "
            "Deferred ones show older figures (see the node dashboard's namespace poll age); "
            "raise --poll.interval or the budget, or set tcp_child_ehash_entries so dumps get "
            "cheaper.",
            [Target(f"sum({sel(c, 'tcptw_poll_namespaces', LATE)}) or vector(0)")],
            Look(steps=((None, "green"), (1, "orange")), width=6, height=5),
        ),
        graph(
            "Poll age in poll intervals",
            "Age of each exporter's last complete poll, in poll intervals. Normal is below 1 "
            f"plus a scrape interval; above {stale} (red line) the exporter is stale and the stale "
            "alert fires: the poll is hung, figures are frozen. Restart the exporter and read "
            "its log.",
            [Target(f"max {node} ({sel(c, POLL_AGE_INTERVALS)})", legend(c, "{{instance}}"))],
            Look(
                steps=((None, "green"), (max(stale - 1, 0.5), "orange"), (stale, "red")),
                threshold_lines=True,
                width=12,
            ),
        ),
        graph(
            "Failing sources per node",
            "Failed (namespace, source) reads per node and source in the last poll. A "
            "persistent non-zero value hides that source's metrics for those namespaces; "
            "the exporter's log says why (privileges, a kernel without the file).",
            [
                Target(
                    f"sum {by(c, 'instance', 'source')} (1 - {sel(c, 'tcptw_source_success')})",
                    legend(c, "{{instance}} {{source}}"),
                )
            ],
            Look(steps=((None, "green"), (1, "orange")), width=12),
        ),
        graph(
            "Poll duration vs interval",
            "Wall time of each exporter's last complete poll, with the poll interval dashed. "
            "A poll longer than the interval is an overrun: the next poll is delayed and "
            "figures age. Reduce the work (--buckets.inbound-ports, tcp_child_ehash_entries) "
            "or raise --poll.interval.",
            [
                Target(
                    f"max {node} ({sel(c, 'tcptw_poll_duration_seconds')})",
                    legend(c, "{{instance}}"),
                ),
                Target(
                    f"max {node} ({sel(c, 'tcptw_poll_interval_seconds')})",
                    legend(c, "{{instance}} interval"),
                ),
            ],
            Look(unit="s", dashed="/ interval$/", width=8),
        ),
        graph(
            "Poll overruns",
            "Polls per second that outlasted --poll.interval. Occasional ones are harmless; a "
            "steady rate means figures are always late and the stale alert may fire. See "
            "poll duration.",
            [
                Target(
                    f"sum {node} (rate({sel(c, 'tcptw_poll_overruns_total')}[$__rate_interval]))",
                    legend(c, "{{instance}}"),
                )
            ],
            Look(unit="cps", steps=((None, "green"), (0.001, "orange")), width=8),
        ),
        graph(
            "Namespaces per poll outcome",
            "Namespaces in the last poll by outcome, summed over the selected nodes: dumped, "
            "skipped (no TCP socket, still exact), read (sockdiag off), deferred and failed. "
            "Deferred or failed above 0 means some figures are old or missing.",
            [
                Target(
                    f"sum {by(c, 'outcome')} ({sel(c, 'tcptw_poll_namespaces')})",
                    legend(c, "{{outcome}}"),
                )
            ],
            Look(stack=True, width=8),
        ),
        graph(
            "Exporter memory (RSS)",
            "Resident memory of each exporter process. It grows with the number of namespaces "
            "and buckets; a steady climb with a constant workload is a leak worth a bug "
            "report. Check it against the container's memory limit.",
            [
                Target(
                    f"max {node} ({sel(c, 'process_resident_memory_bytes')})",
                    legend(c, "{{instance}}"),
                )
            ],
            Look(unit="bytes", width=12),
        ),
        graph(
            "Exporter CPU",
            "CPU used by each exporter process (1.0 = one core). High values come from large "
            "dumps; on nodes with many sockets limit inbound buckets (--buckets.inbound-ports), "
            "give namespaces their own hash, or poll less often.",
            [
                Target(
                    f"sum {node} (rate({sel(c, 'process_cpu_seconds_total')}[$__rate_interval]))",
                    legend(c, "{{instance}}"),
                )
            ],
            Look(unit="percentunit", width=12),
        ),
    ]


def fleet(config: MixinConfig) -> dict[str, Any]:
    return dashboard(
        config,
        uid=UID,
        title="TIME-WAIT / Fleet",
        description="timewait-exporter: nodes and pods ranked by outbound port exhaustion, "
        "TIME-WAIT, sysctl posture and exporter health across the fleet.",
        many_instances=True,
        sections=[
            ("Outbound port exhaustion", _exhaustion(config)),
            ("TIME-WAIT", _timewait(config)),
            ("Sysctl posture", _posture(config)),
            ("Exporter health", _health(config)),
        ],
    )
