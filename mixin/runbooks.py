"""Runbooks: one Markdown page per alert (docs/runbooks/<Alert>.md), linked from the alert's
runbook_url annotation. Each says what the alert means, how to confirm it from inside the
network namespace, and the remedies that apply to it (and only those)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable

from mixin import alerts, recording
from mixin.config import MixinConfig

ENTER = """\
Every command below runs inside the alert's network namespace (its `netns` label):

- `host`: run it as it is, on the node that `instance` names.
- `<namespace>/<pod>`: on the node, find the pid of one of the pod's containers, then
  prefix the command with `nsenter -t "$PID" -n`:

  ```sh
  POD=$(crictl pods -q --namespace <namespace> --name <pod>)
  PID=$(crictl inspect --output go-template --template '{{.info.pid}}' \\
    "$(crictl ps -q --pod "$POD" | head -1)")
  nsenter -t "$PID" -n ss -Htan | head
  ```

  Without access to the node, `kubectl debug -it -n <namespace> <pod>
  --image=nicolaka/netshoot --target=<container>` starts a shell in the pod's namespace.
- an `ip netns` name (`cni-…`, or a name of your own): prefix it with `ip netns exec <name>`.
- `ino-<inode>`: find a process of that namespace, then use `nsenter -t "$PID" -n`:

  ```sh
  for p in /proc/[0-9]*; do
    [ "$(stat -Lc %i "$p/ns/net" 2>/dev/null)" = <inode> ] && PID=${p#/proc/} && break
  done
  ```

A pod's sysctls are its namespace's own: read and change them inside it. In a pod spec,
`net.ipv4.ip_local_port_range` and `net.ipv4.ip_local_reserved_ports` are safe sysctls
(`securityContext.sysctls`); `net.ipv4.tcp_tw_reuse` must first be allowed with kubelet's
`--allowed-unsafe-sysctls`.
"""

NOT_FIN_TIMEOUT = (
    "- **Not `net.ipv4.tcp_fin_timeout`**: it bounds orphaned FIN-WAIT-2 sockets only. "
    "TIME-WAIT lasts `TCP_TIMEWAIT_LEN`, 60 s, fixed at compile time."
)
NOT_RECYCLE = (
    "- **Never `net.ipv4.tcp_tw_recycle`**: it dropped connections from clients behind "
    "NAT, and Linux 4.12 removed it."
)
REUSE = (
    "- **`net.ipv4.tcp_tw_reuse=1` on the client** (the side that calls `connect()`): "
    "`connect()` may then take over a TIME-WAIT socket of the same quadruplet once it is "
    "1 s old (`tcp_tw_reuse_delay` on recent kernels). It needs TCP timestamps "
    "(`net.ipv4.tcp_timestamps` 1 or 2, and a peer that sends them). The default, 2 since "
    "Linux 4.20, does this for loopback only. It does nothing for incoming connections, "
    "and `tcptw_outbound_port_utilization_max_ratio` already leaves such TIME-WAIT "
    "sockets out."
)
POOLING = (
    "- **Reuse connections** (keep-alive, a connection pool with a bounded size): the "
    "lasting fix, since every closed connection holds its port for 60 s in TIME-WAIT on "
    "the side that closed first. Where the protocol allows, let the server close first: "
    "its TIME-WAIT sockets cost no ephemeral port."
)
WIDEN = (
    '- **Widen the range**: `sysctl -w net.ipv4.ip_local_port_range="10000 65000"` '
    "(persist it in `/etc/sysctl.d/` or the pod's `securityContext.sysctls`). First list "
    "the listeners that the new range would cover (`ss -Htln`) and put their ports in "
    "`net.ipv4.ip_local_reserved_ports`, or a service that binds its port after a client "
    "took it fails with `EADDRINUSE`."
)
MORE_DESTINATIONS = (
    "- **Add destination ports or addresses** (more listening ports or IPs behind the "
    "service), or source addresses on the client: each new (local address, remote address, "
    "remote port) is a new quadruplet space with a whole port range of its own."
)
NO_PORT = (
    "- **Clients that `bind()` before `connect()`** (to choose a source address) should set "
    "`IP_BIND_ADDRESS_NO_PORT` (Linux 4.2+): the port is then picked at `connect()`, per "
    "destination, instead of reserving one port of the range for every destination."
)


def wrap(markdown: str) -> str:
    """Paragraphs and list items reflowed to 92 columns; code blocks, tables and headings
    kept as they are."""
    out: list[str] = []
    block: list[str] = []
    indent = ""
    fenced = False

    def flush() -> None:
        if block:
            text = " ".join(line.strip() for line in block)
            first = indent + "- " if block[0].lstrip().startswith("- ") else indent
            text = text.removeprefix("- ") if first.endswith("- ") else text
            rest = indent + ("  " if first.endswith("- ") else "")
            out.append(
                textwrap.fill(
                    text,
                    92,
                    initial_indent=first,
                    subsequent_indent=rest,
                    break_on_hyphens=False,
                    break_long_words=False,
                )
            )
            block.clear()

    for line in markdown.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("```"):
            flush()
            fenced = not fenced
            out.append(line)
        elif fenced or not stripped or stripped.startswith(("#", "|")):
            flush()
            out.append(line)
        elif stripped.startswith("- ") or not block:
            flush()
            indent = line[: len(line) - len(stripped)]
            block.append(line)
        else:
            block.append(line)
    flush()
    return "\n".join(out)


def page(name: str, severity: str, meaning: str, confirm: str, fix: str) -> str:
    meaning, confirm, fix = (wrap(part.strip()) for part in (meaning, confirm, fix))
    return (
        f"# {name}\n\n"
        f"Severity: {severity}. Generated by `python -m mixin` from mixin/runbooks.py.\n\n"
        f"## Meaning\n\n{meaning.strip()}\n\n"
        f"## Confirm\n\n{confirm.strip()}\n\n"
        f"## Fix\n\n{fix.strip()}\n"
    )


def exhaustion(config: MixinConfig) -> tuple[str, str, str]:
    return (
        f"""
The sockets of one outbound bucket, (`local_addr`, `remote_addr`, `remote_port`) of the
alert, hold at least {config.thresholds.port_warning:.0%} (warning) or
{config.thresholds.port_critical:.0%} (critical) of
the local ports `connect()` may pick: `ip_local_port_range` less `ip_local_reserved_ports`
less ports held by listeners. At 100% the next `connect()` toward that destination fails
with `EADDRNOTAVAIL` ("Cannot assign requested address"). Each socket holds its port in any
state, TIME-WAIT included (60 s after the side that closed first closed).

The ratio is smoothed over `{config.smoothing_window}` (a batch of TIME-WAIT sockets
expiring makes it dip for one sample) and the alert keeps firing for
`{config.durations.exhaustion_keep_firing}` after it drops. Capacity is an upper bound:
ports that clients `bind()` before `connect()` are skipped by `connect()` but cannot be
told apart, so connects may fail below 100% (they have failed at 90%), hence the critical
threshold. An alert without `remote_addr` names a namespace whose fullest bucket was folded
into the `other` series.
""",
        """
```sh
# sockets of the bucket, any state, and those in TIME-WAIT
ss -Htan '( src <local_addr> and dst <remote_addr> and dport = :<remote_port> )' | wc -l
ss -Htan state time-wait '( dst <remote_addr> and dport = :<remote_port> )' | wc -l
# by state: TIME-WAIT means churn, ESTAB or CLOSE-WAIT growing means a leak
ss -Htan '( dst <remote_addr> and dport = :<remote_port> )' | awk '{print $1}' | sort | uniq -c
# who opens them (TIME-WAIT sockets have no process any more)
ss -Htanp state established '( dst <remote_addr> and dport = :<remote_port> )' | head
# the range, reserved ports, reuse
sysctl net.ipv4.ip_local_port_range net.ipv4.ip_local_reserved_ports \\
  net.ipv4.tcp_tw_reuse net.ipv4.tcp_timestamps
```

In Prometheus: `tcptw_outbound_ports_used`, `tcptw_outbound_ports_capacity` and
`tcptw_outbound_timewait_sockets` of the bucket; `tcptw_ephemeral_ports_in_use` shows how
many ports all sockets hold, including those bound before `connect()`.
""",
        "\n".join(
            [POOLING, REUSE, WIDEN, MORE_DESTINATIONS, NO_PORT, NOT_RECYCLE, NOT_FIN_TIMEOUT]
        ),
    )


def connection_rate(config: MixinConfig) -> tuple[str, str, str]:
    return (
        f"""
Connections toward one outbound bucket (`local_addr`, `remote_addr`, `remote_port` of the
alert) close at {config.thresholds.rate_warning:.0%} or more of the rate its ports can sustain. Each
closed connection holds its local port in TIME-WAIT for 60 s (`TCP_TIMEWAIT_LEN`), so a
bucket with `capacity` usable ports sustains `capacity / 60` connections a second: about
470/s with the default range. Above that, its ports run out and `connect()` fails with
`EADDRNOTAVAIL`. This alert comes before `TcpEphemeralPortExhaustion`: it sees the rate,
not the ports already held.

The rate is `rate(tcptw_outbound_connections_closed_total[{config.rate_window}])`, exact counts
from the kernel's socket-destroy events (`method="events"`); where a namespace has no events
(`--no-events`, or a kernel that refuses them), it is estimated as the bucket's TIME-WAIT
sockets / 60 (`method="timewait"`), which is only right at steady state. Buckets that
`tcp_tw_reuse` covers (1, or 2 with a loopback end, timestamps on) are left out: their
TIME-WAIT ports can be taken over, so capacity / 60 is no limit for them.

The count is every connection closed toward the bucket, including those the server closed
first: the server then holds the TIME-WAIT and the local port is free at once. Toward a
server that always closes first, the ratio overstates the pressure; the bucket's TIME-WAIT
sockets (below) tell which side holds them, and `TcpEphemeralPortExhaustion` stays the
authority on ports actually held.
""",
        f"""
```sh
# connections closing toward the destination: watch the count of TIME-WAIT sockets
ss -Htan state time-wait '( dst <remote_addr> and dport = :<remote_port> )' | wc -l
# every socket destroyed, as the exporter sees them (Ctrl-C to stop)
ss -Etn '( dst <remote_addr> and dport = :<remote_port> )'
sysctl net.ipv4.ip_local_port_range net.ipv4.ip_local_reserved_ports \\
  net.ipv4.tcp_tw_reuse net.ipv4.tcp_timestamps
```

In Prometheus: `{recording.outbound_close_rate(config)}` of the bucket against
`tcptw_outbound_bucket_capacity / 60` of its namespace (the node dashboard plots both).
""",
        "\n".join([POOLING, REUSE, WIDEN, MORE_DESTINATIONS, NOT_RECYCLE, NOT_FIN_TIMEOUT]),
    )


def connect_failing(config: MixinConfig) -> tuple[str, str, str]:
    return (
        f"""
`connect()` calls in the namespace failed with `EADDRNOTAVAIL` ("Cannot assign requested
address") toward `remote_addr` within the last `{config.failure_window}`: no local port
was free toward that destination, so the kernel gave up before sending a SYN. This is not
a forecast, it happened: the application saw the errors. `remote_addr="other"` counts
the namespace's destinations outside the node-wide top K (`--buckets.top`): the failures
are real, the address is just not named.

It is counted from the kernel's socket-destroy events
(`tcptw_connect_failures_total{{error="eaddrnotavail"}}`): a failed socket is counted
when the application closes it (a leaked descriptor only once it is closed; a socket that
retries `connect()` counts once), and the destination port is lost. Unlike
`TcpEphemeralPortExhaustion` it sees failures that the capacity forecast misses: ports
that sockets `bind()` before `connect()` (toward any destination) are skipped by
`connect()`, so it fails while the destination's bucket looks far from full. The
`bind(0)` calls of those clients fail with `EADDRINUSE` once the whole range is taken:
`TcpEphemeralPortRangeExhaustion` covers them, this alert does not.

`tcptw_tcp_attempt_fails_total` (AttemptFails) is another failure: connects that failed
*after* their SYN (refused, reset, timed out). `EADDRNOTAVAIL` fails *before* any SYN, so
AttemptFails and ActiveOpens do not count it.
""",
        """
```sh
# the sockets holding the ports toward the destination, by state
ss -Htan '( dst <remote_addr> )' | awk '{print $1}' | sort | uniq -c
# ports bound before connect(): every socket of the range, whatever the destination
read LOW HIGH < /proc/sys/net/ipv4/ip_local_port_range
ss -Htan | awk -v lo=$LOW -v hi=$HIGH '{n=split($4,a,":"); p=a[n]; if (p>=lo && p<=hi) print p}' \\
  | sort -u | wc -l
# the failures as they happen: destroy events with peer port 0 (Ctrl-C to stop)
ss -Etn 'dport = :0'
sysctl net.ipv4.ip_local_port_range net.ipv4.ip_local_reserved_ports \\
  net.ipv4.tcp_tw_reuse net.ipv4.tcp_timestamps
```

In Prometheus: `rate(tcptw_connect_failures_total[5m])` of the namespace per
`remote_addr`, `tcptw_outbound_ports_used` of its buckets and `tcptw_ephemeral_ports_in_use`;
the dashboards plot the failures per pod and destination.
""",
        "\n".join(
            [POOLING, REUSE, WIDEN, MORE_DESTINATIONS, NO_PORT, NOT_RECYCLE, NOT_FIN_TIMEOUT]
        ),
    )


def predicted(config: MixinConfig) -> tuple[str, str, str]:
    return (
        f"""
A linear fit of the bucket's utilisation over the last `{config.prediction_window}`
reaches 100% within {alerts.span(config.prediction_horizon_seconds)}, and the bucket is
{config.prediction_floor:.0%} full or more already. At 100%
`connect()` toward `remote_addr:remote_port` fails with `EADDRNOTAVAIL`.
TcpEphemeralPortExhaustion follows if the trend holds.
""",
        """
```sh
# which state grows: ESTAB or CLOSE-WAIT growing is a connection leak, TIME-WAIT a
# rising connection rate
watch -n 10 "ss -Htan '( dst <remote_addr> and dport = :<remote_port> )' \\
  | awk '{print \\$1}' | sort | uniq -c"
ss -Htanp state close-wait '( dst <remote_addr> and dport = :<remote_port> )' | head
```
""",
        "\n".join(
            [
                "- **A leak** (ESTAB or CLOSE-WAIT keeps growing): the application does not "
                "close connections, or its pool has no upper bound. Fix it there; none of the "
                "settings below helps for long.",
                POOLING,
                REUSE,
                WIDEN,
                MORE_DESTINATIONS,
                NOT_FIN_TIMEOUT,
            ]
        ),
    )


def range_exhaustion(config: MixinConfig) -> tuple[str, str, str]:
    return (
        f"""
Sockets of the namespace hold at least {config.thresholds.port_warning:.0%} (warning) or
{config.thresholds.port_critical:.0%} (critical) of the distinct ports in `ip_local_port_range` less
`ip_local_reserved_ports` (smoothed over `{config.smoothing_window}`). Plain `connect()`
shares a port between destinations, but `bind()` to port 0 needs a port nobody holds: once
none is free it fails with `EADDRINUSE`, whatever the destination, and so do clients that
`bind()` before `connect()`. Those bound ports are also skipped by every `connect()`.
""",
        """
```sh
read LOW HIGH < /proc/sys/net/ipv4/ip_local_port_range
ss -Htan | awk -v lo=$LOW -v hi=$HIGH '{n=split($4,a,":"); p=a[n]; if (p>=lo && p<=hi) print p}' \\
  | sort -u | wc -l
# the destinations holding most of them
ss -Htan | awk '{print $5}' | sed 's/:[0-9]*$//' | sort | uniq -c | sort -rn | head
```
""",
        "\n".join([POOLING, NO_PORT, WIDEN, REUSE, NOT_RECYCLE, NOT_FIN_TIMEOUT]),
    )


def tw_overflow(config: MixinConfig) -> tuple[str, str, str]:
    return (
        """
TcpExt TCPTimeWaitOverflow rises: the namespace has `net.ipv4.tcp_max_tw_buckets`
TIME-WAIT sockets, so connections that close now are destroyed at once instead of entering
TIME-WAIT (the kernel logs "TCP: time wait bucket table overflow"). Without TIME-WAIT, late
segments of an old connection can be taken for data of a new connection on the same
quadruplet, and a lost last ACK makes the peer's retransmitted FIN answered by a reset.
""",
        TW_CONFIRM,
        "\n".join(
            [
                "- **Raise `net.ipv4.tcp_max_tw_buckets`** if memory allows: a TIME-WAIT socket "
                'is a small minisocket (`tcptw_slab_object_size_bytes{cache="tw_sock_TCP"}`), '
                "far cheaper than a full socket.",
                POOLING,
                NOT_FIN_TIMEOUT,
                NOT_RECYCLE,
            ]
        ),
    )


TW_CONFIRM = """
```sh
ss -Htan state time-wait | wc -l
sysctl net.ipv4.tcp_max_tw_buckets
nstat -az TcpExtTCPTimeWaitOverflow
# who closes first: local ports in the ephemeral range mean our clients, a listening port
# means our servers
ss -Htan state time-wait | awk '{print $4}' | sed 's/.*://' | sort | uniq -c | sort -rn | head
```
On the node: `dmesg | grep 'time wait bucket table overflow'`.
"""


def tw_near_max(config: MixinConfig) -> tuple[str, str, str]:
    return (
        f"""
TIME-WAIT sockets of the namespace (`/proc/net/sockstat` `tw`) reach
{config.thresholds.timewait_buckets_warning:.0%} of `net.ipv4.tcp_max_tw_buckets`. At the limit,
TcpTimeWaitOverflow follows: closing connections skip TIME-WAIT. The count is the closing
rate times 60 s, so it follows the connection churn.
""",
        TW_CONFIRM,
        "\n".join(
            [
                "- **Raise `net.ipv4.tcp_max_tw_buckets`** if memory allows "
                '(`tcptw_slab_memory_bytes{cache="tw_sock_TCP"}` shows what they cost now).',
                POOLING,
                "- `tcp_tw_reuse` lets outgoing connections take over TIME-WAIT sockets; it does "
                "not make the table smaller.",
                NOT_FIN_TIMEOUT,
                NOT_RECYCLE,
            ]
        ),
    )


def tw_recycle(config: MixinConfig) -> tuple[str, str, str]:
    return (
        """
`net.ipv4.tcp_tw_recycle` is 1 (only kernels before 4.12 have it). The kernel then
remembers the last TCP timestamp of every peer address and drops connection requests with
an older one. Clients behind one NAT address, or a load balancer, have unrelated
timestamps: their connections fail at random, counted by PAWSPassive.
""",
        """
```sh
sysctl net.ipv4.tcp_tw_recycle
nstat -az TcpExtPAWSPassive
grep -rs tcp_tw_recycle /etc/sysctl.conf /etc/sysctl.d/
```
""",
        "\n".join(
            [
                "- **Turn it off**: `sysctl -w net.ipv4.tcp_tw_recycle=0`, and remove it from "
                "`/etc/sysctl.d/`.",
                "- If it was turned on against TIME-WAIT on clients, use what works instead:",
                "  " + REUSE,
                "  " + POOLING,
            ]
        ),
    )


def paws_passive(config: MixinConfig) -> tuple[str, str, str]:
    return (
        """
TcpExt PAWSPassive rises: incoming connection requests are dropped because their TCP
timestamp is older than the one remembered for their address. That check is what
`tcp_tw_recycle` does (the counter exists on kernels before 4.12 only). The clients see
`connect()` time out; clients behind NAT are hit most.
""",
        """
```sh
nstat -az TcpExtPAWSPassive
sysctl net.ipv4.tcp_tw_recycle net.ipv4.tcp_timestamps
```
""",
        "- **Turn `net.ipv4.tcp_tw_recycle` off** (see TcpTwRecycleEnabled). Never enable "
        "it on a server reached through NAT or a load balancer.",
    )


def listen_overflows(config: MixinConfig) -> tuple[str, str, str]:
    return (
        """
TcpExt ListenOverflows rises: a listening socket's accept queue is full, so completed
connections are dropped (clients retransmit their SYN or ACK and connect slowly, or time
out). The application does not `accept()` fast enough, or its backlog is too small. This
is not TIME-WAIT: its remedies do not apply.
""",
        """
```sh
# for listeners, Recv-Q is the accept queue now and Send-Q its size
ss -Htln
nstat -az TcpExtListenOverflows TcpExtListenDrops
sysctl net.core.somaxconn
```
""",
        "\n".join(
            [
                "- **A larger backlog**: the application's `listen()` backlog, capped by "
                "`net.core.somaxconn`; raise both.",
                "- **Accept faster**: more accept threads or workers, or `SO_REUSEPORT` listeners.",
                "- **Fewer connections**: clients that keep connections alive make far fewer "
                "`accept()`s.",
            ]
        ),
    )


def down(config: MixinConfig) -> tuple[str, str, str]:
    return (
        f"""
Prometheus cannot scrape the exporter at `instance` (job `{config.job}`): the exhaustion
alerts are blind on that node.
""",
        """
```sh
curl -s http://<instance>/healthz
systemctl status timewait-exporter          # systemd
kubectl -n timewait-exporter get pods -o wide --field-selector spec.nodeName=<node>
```
Prometheus' Targets page shows the scrape error.
""",
        "- Start or restart the exporter (`systemctl restart timewait-exporter`, or delete "
        "the DaemonSet pod). Check that it listens on 9961, that the NetworkPolicy admits "
        "Prometheus, and, with the tls-auth overlay, that the certificate and credentials "
        "are valid.",
    )


def absent(config: MixinConfig) -> tuple[str, str, str]:
    return (
        f"""
Prometheus has no target of job `{config.job}` at all: the exporters are not deployed,
or service discovery lost them, or their job label is not `{config.job}` (the mixin's
`MixinConfig.job`).
""",
        """
```sh
kubectl -n timewait-exporter get daemonset,pods,endpoints,servicemonitor
```
Prometheus' Service Discovery page shows whether the targets were dropped by relabelling.
""",
        "- Deploy the exporter (`kubectl apply -k deploy/kubernetes`), make the Prometheus "
        "operator select the ServiceMonitor, or regenerate the rules with the job name your "
        "scrape configuration gives (`MixinConfig.job`, then `python -m mixin`).",
    )


def source_failing(config: MixinConfig) -> tuple[str, str, str]:
    return (
        """
Every poll of one source (`source`: sockdiag, netstat, sockstat, sysctl or slab) fails in
the namespace `netns` (`netns=""`: a host-wide source). Its metrics are absent there, so
the alerts built on them cannot fire. A namespace that cannot be entered fails every
source.
""",
        """
```sh
journalctl -u timewait-exporter | grep -i <source>      # or: kubectl logs <exporter pod>
timewait-exporter dump --netns=<netns> > /dev/null       # one poll, errors on stderr
```
""",
        "- Missing privileges: CAP_SYS_ADMIN (`setns`) and CAP_SYS_PTRACE (another "
        "process's `ns/net`).\n"
        "- Host `/proc` or `/sys` not where `--path.procfs` and `--path.sysfs` point.\n"
        "- A kernel without the file: switch the source off with `--no-collector.<source>`.",
    )


def stale(config: MixinConfig) -> tuple[str, str, str]:
    return (
        f"""
The last complete poll is more than {config.thresholds.stale_intervals} poll intervals old
(`tcptw_last_poll_timestamp_seconds` against `tcptw_poll_interval_seconds`, as of each
scrape). A poll hangs, typically in a read under `/proc` or `/sys` (those reads have no
timeout). `/metrics` keeps answering with the last figures and `tcptw_source_success` stays
1, so every other alert for that node sees frozen values.
""",
        """
```sh
curl -s http://<instance>/readyz                 # 503 with the age of the last poll
PID=$(pgrep -o -f 'timewait-exporter serve')
grep . /proc/$PID/task/*/wchan                   # where its threads wait in the kernel
cat /proc/$PID/task/*/stack 2>/dev/null | sort | uniq -c | sort -rn | head
```
""",
        "- Restart the exporter (the DaemonSet's readiness probe already marks it not "
        "ready). If it hangs again, note the blocked file from the stacks and switch that "
        "source off (`--no-collector.<source>`) until the kernel or mount is fixed.",
    )


def overrun(config: MixinConfig) -> tuple[str, str, str]:
    return (
        """
Polls keep taking longer than `--poll.interval`: figures are refreshed less often than
configured, and namespaces are deferred to later polls
(`tcptw_poll_namespaces{outcome="deferred"}`, `tcptw_netns_poll_age_seconds`).
""",
        """
Compare `tcptw_poll_duration_seconds` with `tcptw_poll_interval_seconds`, and find the
costly namespaces with `topk(10, tcptw_netns_poll_duration_seconds)`.
`tcptw_sysctl_tcp_ehash_entries < 0` marks namespaces that share the host's established
hash: each of their dumps walks the node's whole table.
""",
        "- A longer `--poll.interval`, more `--poll.workers`, or `--buckets.inbound-ports` "
        "so that the kernel filters the dump.\n"
        "- `net.ipv4.tcp_child_ehash_entries` on the host (Linux 6.1+) gives new pod "
        "namespaces their own hash.",
    )


def discovery_limited(config: MixinConfig) -> tuple[str, str, str]:
    return (
        """
The exporter runs with `--netns=all` (or a list of names) but cannot see or enter the
node's other network namespaces, so pods are not watched. `reason` says why:

- `no_cap_sys_ptrace`: without CAP_SYS_PTRACE, reading another process's
  `/proc/<pid>/ns/net` is refused (a ptrace-mode check), so its namespace is not found. In
  a container, only the exporter's own namespace is polled.
- `no_cap_sys_admin`: without CAP_SYS_ADMIN (in the user namespace owning the target),
  `setns(2)` is refused: namespaces are found but cannot be entered; each fails with
  `tcptw_source_success 0` (TimewaitExporterSourceFailing fires too).
- `ns_link_denied`: the links are refused although CAP_SYS_PTRACE is held, and the host's
  namespace is not found: an LSM (AppArmor's runtime-default profile) or a user namespace.
- `proc_unreadable`: `--path.procfs` cannot be listed (the host's `/proc` not mounted there).

The pod is also not ready (`/readyz` answers 503 with the reasons), so a DaemonSet rollout
with the privilege missing stops at `maxUnavailable`.
""",
        """
```sh
kubectl -n timewait-exporter logs <exporter pod> | grep 'namespace discovery is limited'
kubectl -n timewait-exporter exec <exporter pod> -- python3 -c \\
  "print(open('/proc/1/status').read())" | grep -E 'CapEff|NoNewPrivs'
```

CapEff must have bits 19 (SYS_PTRACE) and 21 (SYS_ADMIN): `0000000000280000` with the
shipped DaemonSet. `curl -s http://<instance>/readyz` names the reasons.
""",
        "- Restore the DaemonSet's `securityContext`: `capabilities.add: [SYS_ADMIN, "
        "SYS_PTRACE]`, `runAsUser: 0`, AppArmor `unconfined` (a policy engine or a Pod "
        "Security admission level may have removed them; the namespace needs "
        "`pod-security.kubernetes.io/enforce: privileged`).\n"
        "- No user namespace for the pod (`hostUsers` left at its default, true).\n"
        "- `--path.procfs=/host/proc` with the host's `/proc` mounted there.\n"
        "- systemd: `AmbientCapabilities=` and `CapabilityBoundingSet=` must keep "
        "CAP_SYS_ADMIN and CAP_SYS_PTRACE.\n"
        "- To poll only the exporter's own namespace on purpose, run with `--netns=self`: "
        "the check does not apply there.",
    )


PAGES: dict[str, Callable[[MixinConfig], tuple[str, str, str]]] = {
    "TcpEphemeralPortExhaustion": exhaustion,
    "TcpEphemeralPortExhaustionPredicted": predicted,
    "TcpConnectionRateNearSustainable": connection_rate,
    "TcpEphemeralPortRangeExhaustion": range_exhaustion,
    "TcpConnectFailingNoFreePort": connect_failing,
    "TcpTimeWaitOverflow": tw_overflow,
    "TcpTimeWaitNearMaxBuckets": tw_near_max,
    "TcpTwRecycleEnabled": tw_recycle,
    "TcpPawsPassiveRising": paws_passive,
    "TcpListenOverflows": listen_overflows,
    "TimewaitExporterDown": down,
    "TimewaitExporterAbsent": absent,
    "TimewaitExporterSourceFailing": source_failing,
    "TimewaitExporterStale": stale,
    "TimewaitExporterPollsOverrunning": overrun,
    "TimewaitExporterDiscoveryLimited": discovery_limited,
}

# Pages that enter the alert's network namespace start with how to.
IN_NAMESPACE = frozenset(name for name in PAGES if name.startswith("Tcp"))


def pages(config: MixinConfig) -> dict[str, str]:
    """Alert name -> Markdown, for every alert of mixin.alerts, in the rules' order."""
    severities: dict[str, list[str]] = {}
    for group in alerts.groups(config):
        for rule in group["rules"]:
            severities.setdefault(rule["alert"], []).append(rule["labels"]["severity"])
    result = {}
    for name, levels in severities.items():
        meaning, confirm, fix = PAGES[name](config)
        if name in IN_NAMESPACE:
            confirm = ENTER + "\n" + confirm.strip()
        result[name] = page(name, " / ".join(levels), meaning, confirm, fix)
    return result
