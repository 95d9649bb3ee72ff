"""The sockdiag source's declaration: its reader (one dump per namespace), its options
(the --buckets.* flags), its handle (a NETLINK_SOCK_DIAG socket per namespace) and its
metric families (states, buckets, port capacity).

It requires the sysctl source (the port policy) and the sockstat one (a namespace with
no TCP socket is not dumped), and provides the dump's Classifier, the inbound/outbound
rule, to whoever demands CLASSIFIER in a namespace (the destroy events)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.config import Config
from exporter.sources import SourceError, sockstat, sysctl
from exporter.sources.declare import (
    FOLDED,
    LAST_POLL,
    DetailView,
    NetnsPoll,
    Notable,
    Opener,
    Option,
    Rows,
    Scope,
    Source,
    netns_gauge,
)
from exporter.sources.sockdiag.buckets import BucketOptions
from exporter.sources.sockdiag.capacity import (
    OTHER,
    Folded,
    PortPolicy,
    PortUsage,
    select_node_top,
)
from exporter.sources.sockdiag.codec import DumpInterrupted
from exporter.sources.sockdiag.dump import DiagSocket, new_buffers
from exporter.sources.sockdiag.tally import SocketStats, collect_socket_stats, no_sockets
from exporter.thresholds import DEFAULT as THRESHOLDS

DETAIL_RATIO = THRESHOLDS.detail_ratio

_DEFAULT = BucketOptions()


def _integer(flag: str, low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"--{flag} takes a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"{low}-{high}"
            raise ValueError(f"--{flag} must be {span}")
        return value

    return parse


def _ports(text: str) -> frozenset[int] | None:
    if not text:
        return None
    words = [w.strip() for w in text.split(",")]
    if not all(w.isdigit() and 0 < int(w) < 65536 for w in words):
        raise ValueError("--buckets.inbound-ports takes comma-separated ports 1-65535")
    return frozenset(int(w) for w in words)


TOP = Option(
    "buckets.top",
    _DEFAULT.top,
    "largest buckets kept per direction across the whole node; the rest are summed into "
    "one 'other' series per namespace",
    _integer("buckets.top", 0),
    group="buckets",
)
MIN_SOCKETS = Option(
    "buckets.min-sockets",
    _DEFAULT.min_sockets,
    "smaller buckets are folded into 'other'",
    _integer("buckets.min-sockets", 1),
    group="buckets",
)
IPV4_PREFIX = Option(
    "buckets.ipv4-prefix",
    _DEFAULT.ipv4_prefix,
    "group remote IPv4 addresses by this prefix length",
    _integer("buckets.ipv4-prefix", 0, 32),
    group="buckets",
)
IPV6_PREFIX = Option(
    "buckets.ipv6-prefix",
    _DEFAULT.ipv6_prefix,
    "group remote IPv6 addresses by this prefix length",
    _integer("buckets.ipv6-prefix", 0, 128),
    group="buckets",
)
INBOUND_PORTS = Option[frozenset[int] | None](
    "buckets.inbound-ports",
    _DEFAULT.inbound_ports,
    "comma-separated local ports to keep inbound buckets for",
    _ports,
    group="buckets",
    shown_default="all",
)


def bucket_options(config: Config) -> BucketOptions:
    return BucketOptions(
        top=TOP.value(config),
        min_sockets=MIN_SOCKETS.value(config),
        ipv4_prefix=IPV4_PREFIX.value(config),
        ipv6_prefix=IPV6_PREFIX.value(config),
        inbound_ports=INBOUND_PORTS.value(config),
    )


DIAG = Opener("sock_diag socket", lambda procfs: DiagSocket())
CLASSIFIER = "sockdiag.classifier"  # a demand: keep the dump's Classifier


def port_policy(poll: NetnsPoll) -> PortPolicy | None:
    """What connect() obeys in this namespace; None (and a warning) without the port
    range, so buckets and capacity are absent rather than wrong."""
    try:
        sysctls = poll.result(sysctl.SOURCE)
    except SourceError as exc:
        poll.warn(SOURCE, f"buckets unavailable: sysctls unreadable: {exc}")
        return None
    policy = PortPolicy.from_sysctls(sysctls)
    if policy is None:
        poll.warn(SOURCE, "buckets unavailable: no ip_local_port_range")
    return policy


def read_sockdiag(poll: NetnsPoll) -> SocketStats:
    """States, buckets and capacity from one pass over the namespace's sockets.

    The dump is skipped where sockstat shows no TCP socket at all (inuse 0, tw 0): the
    result is then exactly what the dump would return, and the namespace costs no walk
    of the (usually shared) established hash. A dump the kernel flags as interrupted is
    redone once on a fresh socket; any other failure also replaces the socket, whose
    stream may be out of step, before the error is reported."""
    options = bucket_options(poll.config)
    policy = port_policy(poll)
    # Without IPv6 in the kernel there is no sockstat6, and no AF_INET6 socket to count.
    missing = () if poll.files.has_net("sockstat6") else ("ipv6",)
    classify = CLASSIFIER in poll.demands
    try:
        if poll.result(sockstat.SOURCE).no_tcp_socket:
            return no_sockets(policy, options, missing, classify=classify)
    except SourceError:
        pass  # unknown: dump
    buffers = poll.scratch(new_buffers)
    for attempt in (1, 2):
        diag = poll.files.handle(DIAG)
        assert isinstance(diag, DiagSocket)
        try:
            return collect_socket_stats(diag, buffers, policy, options, missing, classify=classify)
        except DumpInterrupted:
            poll.files.reopen(DIAG)
            if attempt == 2:
                raise
        except BaseException:
            poll.files.reopen(DIAG)
            raise
    raise AssertionError("unreachable")


def outcome(stats: SocketStats) -> str:
    return "dumped" if stats.dumped else "skipped"


def render_sockets(rows: Rows[SocketStats], config: Config, detail: DetailView) -> Iterator[Metric]:
    """Where shown in full; the quiet namespaces' summed into netns="" rows."""
    if not rows:
        return
    scopes = sorted({stats.scope for _, stats in rows if stats.scope})
    scope = f"; non-listening sockets only where {' / '.join(scopes)}" if scopes else ""
    family = GaugeMetricFamily(
        "tcptw_sockets",
        "TCP sockets by address family and state, from sock_diag (compact detail: the "
        'quiet namespaces summed into netns="")' + scope + LAST_POLL,
        labels=["netns", "family", "state"],
    )
    quiet: Counter[tuple[str, str]] = Counter()
    for netns, stats in rows:
        if not detail.shows(netns):
            quiet.update(stats.states)
            continue
        for (fam, state), count in stats.states.items():
            family.add_metric([netns, fam, state], count)
    if not detail.full:
        for (fam, state), count in sorted(quiet.items()):
            family.add_metric([FOLDED, fam, state], count)
    yield family


OUTBOUND_LABELS = ["netns", "local_addr", "remote_addr", "remote_port"]
INBOUND_LABELS = ["netns", "local_addr", "local_port", "remote_addr"]
BEYOND_TOP = (
    " Buckets beyond --buckets.top are summed into one series labelled other (with "
    '--metrics.detail=compact, every bucket of the quiet namespaces into netns="")."'
)


def render_ports(rows: Rows[SocketStats], config: Config, detail: DetailView) -> Iterator[Metric]:
    """Top-K buckets of the whole node, and each namespace's other where shown in full
    (the quiet namespaces' summed into netns=""); the alerts' per-namespace gauges in
    every namespace."""
    usages = [(netns, stats.ports) for netns, stats in rows if stats.ports is not None]
    if not usages:
        return
    used = GaugeMetricFamily(
        "tcptw_outbound_ports_used",
        "Sockets of an outbound bucket (local addr, remote addr, remote port), any state: "
        "each holds one local ephemeral port" + BEYOND_TOP + LAST_POLL,
        labels=OUTBOUND_LABELS,
    )
    capacity = GaugeMetricFamily(
        "tcptw_outbound_ports_capacity",
        "Local ports connect() may use for an outbound bucket: ip_local_port_range minus "
        "reserved ports minus ports held by listeners" + BEYOND_TOP + LAST_POLL,
        labels=OUTBOUND_LABELS,
    )
    out_tw = GaugeMetricFamily(
        "tcptw_outbound_timewait_sockets",
        "TIME-WAIT sockets of an outbound bucket" + BEYOND_TOP + LAST_POLL,
        labels=OUTBOUND_LABELS,
    )
    inbound = GaugeMetricFamily(
        "tcptw_inbound_sockets",
        "Sockets of an inbound bucket (local addr, local port, remote addr), any state"
        + BEYOND_TOP
        + LAST_POLL,
        labels=INBOUND_LABELS,
    )
    in_tw = GaugeMetricFamily(
        "tcptw_inbound_timewait_sockets",
        "TIME-WAIT sockets of an inbound bucket" + BEYOND_TOP + LAST_POLL,
        labels=INBOUND_LABELS,
    )
    max_ratio = netns_gauge(
        "tcptw_outbound_port_utilization_max_ratio",
        "Highest used/capacity of any outbound bucket, before folding; TIME-WAIT sockets "
        "that tcp_tw_reuse lets connect() take over are not counted as used",
    )
    in_use = netns_gauge(
        "tcptw_ephemeral_ports_in_use",
        "Distinct local ports inside ip_local_port_range used by any socket",
    )
    available = netns_gauge(
        "tcptw_ephemeral_ports_available",
        "Ports in ip_local_port_range minus ip_local_reserved_ports",
    )
    per_bucket = netns_gauge(
        "tcptw_outbound_bucket_capacity",
        "Local ports connect() may use toward any one destination: the capacity of every "
        "outbound bucket of the namespace. Each closed connection holds its port 60 s "
        "(TIME-WAIT), so this / 60 is the sustainable connections/s per destination",
    )
    folded = GaugeMetricFamily(
        "tcptw_buckets_folded",
        "Buckets of the whole node summed into the namespaces' other series, per direction "
        "(beyond the node-wide --buckets.top or under --buckets.min-sockets)" + LAST_POLL,
        labels=["direction"],
    )
    # Compact detail: the top K come from the namespaces shown in full; the quiet ones'
    # buckets are summed into one other series labelled netns="".
    shown = [(netns, usage) for netns, usage in usages if detail.shows(netns)]
    node = select_node_top(shown, TOP.value(config))
    if not detail.full:
        quiet = _fold_quiet(usages, detail)
        node.outbound_other[FOLDED] = quiet["outbound"]
        node.inbound_other[FOLDED] = quiet["inbound"]
    for netns, row in node.outbound:
        labels = [netns, row.local_addr, row.remote_addr, row.remote_port]
        used.add_metric(labels, row.sockets)
        capacity.add_metric(labels, row.capacity)
        out_tw.add_metric(labels, row.timewait)
    for netns, rest in node.outbound_other.items():
        labels = [netns, OTHER, OTHER, OTHER]
        used.add_metric(labels, rest.sockets)
        capacity.add_metric(labels, rest.capacity)
        out_tw.add_metric(labels, rest.timewait)
    for netns, irow in node.inbound:
        labels = [netns, irow.local_addr, irow.local_port, irow.remote_addr]
        inbound.add_metric(labels, irow.sockets)
        in_tw.add_metric(labels, irow.timewait)
    for netns, rest in node.inbound_other.items():
        labels = [netns, OTHER, OTHER, OTHER]
        inbound.add_metric(labels, rest.sockets)
        in_tw.add_metric(labels, rest.timewait)
    folded.add_metric(["outbound"], sum(r.buckets for r in node.outbound_other.values()))
    folded.add_metric(["inbound"], sum(r.buckets for r in node.inbound_other.values()))
    for netns, usage in usages:
        max_ratio.add_metric([netns], usage.max_ratio)
        in_use.add_metric([netns], usage.ephemeral_in_use)
        available.add_metric([netns], usage.ephemeral_available)
        if detail.shows(netns):
            per_bucket.add_metric([netns], usage.capacity)
    yield from (used, capacity, out_tw, inbound, in_tw, max_ratio, in_use, available, folded)
    yield per_bucket


def _fold_quiet(usages: list[tuple[str, PortUsage]], detail: DetailView) -> dict[str, Folded]:
    """Every bucket of the quiet namespaces, summed per direction into netns=""."""
    outbound, inbound = Folded(), Folded()
    for netns, usage in usages:
        if detail.shows(netns):
            continue
        outbound = outbound.merge(usage.outbound_rest)
        for row in usage.outbound:
            outbound = outbound.plus(row.sockets, row.timewait, row.capacity)
        inbound = inbound.merge(usage.inbound_rest)
        for irow in usage.inbound:
            inbound = inbound.plus(irow.sockets, irow.timewait)
    return {"outbound": outbound, "inbound": inbound}


def near_capacity(seen: Notable[SocketStats]) -> str:
    """A bucket, or the ephemeral range, at Thresholds.detail_ratio of its capacity."""
    ports = seen.data.ports
    if ports is None:
        return ""
    if ports.max_ratio >= DETAIL_RATIO:
        return f"an outbound bucket at {ports.max_ratio:.2f} of its capacity"
    available = ports.ephemeral_available
    if available and ports.ephemeral_in_use / available >= DETAIL_RATIO:
        return f"{ports.ephemeral_in_use} of {available} ephemeral ports in use"
    return ""


def render_sockdiag(
    rows: Rows[SocketStats], config: Config, detail: DetailView
) -> Iterator[Metric]:
    yield from render_sockets(rows, config, detail)
    yield from render_ports(rows, config, detail)


SOURCE: Source[SocketStats] = Source(
    "sockdiag",
    "TCP sockets per state, quadruplet buckets and port capacity from netlink sock_diag",
    Scope.NETNS,
    render_sockdiag,
    read_netns=read_sockdiag,
    net_files=("sockstat6",),
    openers=(DIAG,),
    options=(TOP, MIN_SOCKETS, IPV4_PREFIX, IPV6_PREFIX, INBOUND_PORTS),
    requires=(sysctl.SOURCE, sockstat.SOURCE),
    outcome=outcome,
    notable=near_capacity,
    outcomes=(
        ("dumped", "dumped"),
        ("skipped", "skipped (sockstat showed no TCP socket, so no dump was needed)"),
    ),
)
