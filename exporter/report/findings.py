"""The findings: one pure function per finding id, over the two snapshots of a report.

Each returns the findings it makes (none when its condition does not hold), with the
numbers that triggered it as evidence and a remedy of two or three sentences. The
conditions are exact and listed in README.md ("Diagnose a node").
"""

from __future__ import annotations

from collections.abc import Callable

from exporter.engine.snapshot import Snapshot
from exporter.report.holders import Holder, Inspection
from exporter.report.model import (
    DEFAULT_FIN_TIMEOUT,
    DEFAULT_PORT_RANGE,
    DEFAULT_PORTS,
    SEVERITIES,
    TIME_WAIT_SECONDS,
    Bucket,
    Finding,
    NamespaceView,
    buckets,
    local_ports,
    rate_text,
    reuse_value_covers,
    slab_caches,
)
from exporter.thresholds import DEFAULT, Thresholds

# port-exhaustion, close-wait-leak and timewait-overflow compare with the alerts'
# thresholds (exporter/thresholds.py); the rest are the report's own.
THRESHOLDS: Thresholds = DEFAULT
TW_REUSE_SHARE = 0.25  # outbound TIME-WAIT holding this share of a bucket's capacity
SERVER_CLOSES_MIN = 50  # inbound TIME-WAIT sockets on one local port
SERVER_CLOSES_SHARE = 0.5  # ... and more than this share of that port's inbound sockets
EHASH_SHARED_MANY = 10  # namespaces on the host's established hash
CLOSE_WAIT_SHARE = 0.1  # CLOSE-WAIT sockets holding this share of a hot bucket's capacity
SHOWN_DESTINATIONS = 5  # connect-failing: destinations named in the evidence


def _pct(ratio: float) -> str:
    return f"{100 * ratio:.0f} %"


def port_exhaustion(all_views: list[NamespaceView], second: Snapshot) -> list[Finding]:
    """A namespace's highest outbound bucket ratio (tcptw_outbound_port_utilization_max
    _ratio, over every bucket) reaches Thresholds.port_warning (0.8); critical from
    port_critical (0.9)."""
    found = []
    for view in all_views:
        if view.stats is None or view.stats.ports is None:
            continue
        ports = view.stats.ports
        if ports.max_ratio < THRESHOLDS.port_warning:
            continue
        top = buckets(view)
        evidence: dict[str, float | int | str] = {
            "max_ratio": round(ports.max_ratio, 4),
            "capacity": ports.capacity,
        }
        where = "an outbound bucket"
        if top:
            b = top[0]
            where = f"toward {b.destination}"
            evidence |= {
                "destination": b.destination,
                "local_addr": b.local_addr,
                "used": b.used,
                "timewait": b.timewait,
            }
            if b.limit is not None:
                evidence["limit_per_second"] = round(b.limit, 2)
        held = ""
        top_holder = _holder(view, top[0]) if top else None
        if top_holder is not None:
            holder, inspection = top_holder
            evidence |= _holder_evidence(holder)
            held = (
                f"; {holder.sockets:,} of its {sum(inspection.states.values()):,} sockets are "
                f"held by {_process(holder)}"
            )
        found.append(
            Finding(
                "port-exhaustion",
                "critical" if ports.max_ratio >= THRESHOLDS.port_critical else "warning",
                view.label,
                f"{where}: {_pct(ports.max_ratio)} of {ports.capacity:,} usable local ports "
                f"in use; connect() fails with EADDRNOTAVAIL at 100 %{held}",
                evidence,
                "Reuse connections (keep-alive, a connection pool) instead of opening one per "
                "request: every closed connection keeps its port for 60 s. If that is not "
                "possible, widen net.ipv4.ip_local_port_range, add local or destination "
                "addresses (each pair has its own port space), or enable "
                "net.ipv4.tcp_tw_reuse=1 for client traffic.",
            )
        )
    return found


def _inspection(view: NamespaceView, b: Bucket) -> Inspection | None:
    for inspection in view.inspections:
        key = (inspection.local_addr, inspection.remote_addr, inspection.remote_port)
        if key == (b.local_addr, b.remote_addr, b.remote_port):
            return inspection
    return None


def _holder(view: NamespaceView, b: Bucket) -> tuple[Holder, Inspection] | None:
    """The process holding the most of the bucket's sockets, when it was named."""
    inspection = _inspection(view, b)
    if inspection is None or not inspection.holders:
        return None
    return inspection.holders[0], inspection


def _process(holder: Holder) -> str:
    pod = f", pod {holder.pod}" if holder.pod else ""
    return f"pid {holder.pid} ({holder.comm or '?'}{pod})"


def _holder_evidence(holder: Holder) -> dict[str, float | int | str]:
    evidence: dict[str, float | int | str] = {
        "holder_pid": holder.pid,
        "holder_comm": holder.comm,
        "holder_sockets": holder.sockets,
    }
    if holder.pod:
        evidence["holder_pod"] = holder.pod
    return evidence


def connect_failing(all_views: list[NamespaceView], second: Snapshot) -> list[Finding]:
    """connect() failed with EADDRNOTAVAIL at least once during the window, counted from
    the socket-destroy events (exporter/events/failures.py) in a namespace whose listener
    ran for the whole window; critical. Namespaces without events have no count, and no
    finding: the report says why in their section and in its --fail-on line."""
    found = []
    for view in all_views:
        failures = view.failures
        if failures is None or failures.total == 0:
            continue
        shown = list(failures.failed.items())[:SHOWN_DESTINATIONS]
        evidence: dict[str, float | int | str] = {
            "failures": failures.total,
            "window_seconds": round(view.window, 3),
            "destinations": len(failures.failed),
        }
        for remote, n in shown:
            evidence[f"failed@{remote}"] = n
        rest = failures.total - sum(n for _, n in shown)
        if rest:
            evidence["failed@other"] = rest
        toward = ", ".join(f"{n:,} toward {remote}" for remote, n in shown)
        if rest:
            toward += f", {rest:,} toward other destinations"
        found.append(
            Finding(
                "connect-failing",
                "critical",
                view.label,
                f"connect() failed with EADDRNOTAVAIL {failures.total:,} times in "
                f"{view.window:.1f} s, no local port free: {toward}",
                evidence,
                "These connections were never made: every local port toward that address was "
                "taken (the failed socket keeps the destination address, not its port; the "
                "outbound buckets show which port). Free ports now: close leaked connections "
                "(close-wait-leak names them) or set net.ipv4.tcp_tw_reuse=1; then reuse "
                "connections, widen net.ipv4.ip_local_port_range or add addresses. A client "
                "that bind()s before connect() runs out sooner than the capacity says: set "
                "IP_BIND_ADDRESS_NO_PORT before its bind().",
            )
        )
    return found


def close_wait_leak(all_views: list[NamespaceView], second: Snapshot) -> list[Finding]:
    """A bucket at Thresholds.port_warning or more (one of those `report` inspects) whose
    CLOSE-WAIT sockets hold at least CLOSE_WAIT_SHARE (10 %) of its capacity: the peer
    closed, the application never closed its end. Critical when the bucket reaches
    port_critical. The holding process is named where /proc/<pid>/fd shows it."""
    found = []
    for view in all_views:
        hit = []
        for b in buckets(view):
            inspection = _inspection(view, b)
            if inspection is None or not b.capacity:
                continue
            close_wait = inspection.states.get("close_wait", 0)
            if close_wait and close_wait >= CLOSE_WAIT_SHARE * b.capacity:
                hit.append((close_wait, b, inspection))
        if not hit:
            continue
        close_wait, b, inspection = max(hit, key=lambda x: (x[0], x[1].ratio, x[1].destination))
        evidence: dict[str, float | int | str] = {
            "destination": b.destination,
            "local_addr": b.local_addr,
            "close_wait": close_wait,
            "capacity": b.capacity,
            "share": round(close_wait / b.capacity, 4),
            "ratio": round(b.ratio, 4),
            "buckets": len(hit),
        }
        leaking = [h for h in inspection.holders if h.close_wait]
        if leaking:
            holder = max(leaking, key=lambda h: (h.close_wait, -h.pid))
            evidence |= _holder_evidence(holder)
            evidence["holder_close_wait"] = holder.close_wait
            who = f"held by {_process(holder)}, {holder.close_wait:,} of them"
        else:
            why = inspection.error or "no readable /proc/<pid>/fd holds them"
            who = f"the holding process could not be named ({why})"
        found.append(
            Finding(
                "close-wait-leak",
                "critical" if b.ratio >= THRESHOLDS.port_critical else "warning",
                view.label,
                f"toward {b.destination}: {close_wait:,} CLOSE-WAIT sockets hold "
                f"{_pct(close_wait / b.capacity)} of {b.capacity:,} ports: the peer closed, "
                f"the application never closed its end; {who}",
                evidence,
                "Fix the application: close the socket once a read returns end of file (0 "
                "bytes), and bound the life of idle pooled connections. Restarting the "
                "process frees the ports now. tcp_tw_reuse and a wider port range do not "
                "help: a CLOSE-WAIT socket keeps its port until its descriptor is closed.",
            )
        )
    return found


def timewait_overflow(all_views: list[NamespaceView], second: Snapshot) -> list[Finding]:
    """TCPTimeWaitOverflow rose between the two polls, or the namespace's TIME-WAIT
    sockets (sockstat tw) reach Thresholds.timewait_buckets_warning (80 %) of
    tcp_max_tw_buckets."""
    found = []
    for view in all_views:
        rose = view.delta("TCPTimeWaitOverflow")
        limit = view.sysctl("tcp_max_tw_buckets")
        tw = view.sockstat.tw if view.sockstat is not None else None
        near = bool(tw is not None and limit and tw >= THRESHOLDS.timewait_buckets_warning * limit)
        if not near and not rose:
            continue
        evidence: dict[str, float | int | str] = {}
        if tw is not None:
            evidence["timewait"] = tw
        if limit is not None:
            evidence["tcp_max_tw_buckets"] = int(limit)
        if rose is not None:
            evidence["overflow_delta"] = rose
            evidence["overflow_per_second"] = round(view.rate("TCPTimeWaitOverflow") or 0.0, 3)
        what = f"{tw:,} TIME-WAIT sockets" if tw is not None else "TIME-WAIT sockets"
        bound = f" of tcp_max_tw_buckets {int(limit):,}" if limit is not None else ""
        extra = f"; {rose:,} destroyed early in the window" if rose else ""
        found.append(
            Finding(
                "timewait-overflow",
                "critical" if rose else "warning",
                view.label,
                f"{what}{bound}{extra}",
                evidence,
                "Past tcp_max_tw_buckets the kernel skips TIME-WAIT and destroys the socket at "
                "once (TCPTimeWaitOverflow), losing the protection against stray segments of "
                "an old connection. Raise net.ipv4.tcp_max_tw_buckets (a TIME-WAIT socket "
                "costs a few hundred bytes) or open fewer short connections.",
            )
        )
    return found


def tw_recycle_enabled(all_views: list[NamespaceView], second: Snapshot) -> list[Finding]:
    """tcp_tw_recycle exists (kernels before 4.12) and is not 0."""
    found = []
    for view in all_views:
        value = view.sysctl("tcp_tw_recycle")
        if not value:
            continue
        evidence: dict[str, float | int | str] = {"tcp_tw_recycle": int(value)}
        for counter in ("PAWSPassive", "PAWSActive"):
            rate = view.rate(counter)
            if rate is not None:
                evidence[f"{counter}_per_second"] = round(rate, 3)
        found.append(
            Finding(
                "tw-recycle-enabled",
                "critical",
                view.label,
                "net.ipv4.tcp_tw_recycle is on: clients behind one NAT address are refused",
                evidence,
                "Set net.ipv4.tcp_tw_recycle=0: it drops connections whose timestamps go "
                "backwards for a peer address, which is what several hosts behind one NAT "
                "look like (PAWSPassive counts them). Linux 4.12 removed the option; use "
                "tcp_tw_reuse on the client side instead.",
            )
        )
    return found


def tw_reuse_off_for_clients(all_views: list[NamespaceView], second: Snapshot) -> list[Finding]:
    """An outbound bucket's TIME-WAIT sockets hold at least 25 % of its capacity, and
    tcp_tw_reuse does not cover it: 0, or 2 with neither end on loopback."""
    found = []
    for view in all_views:
        policy = view.policy
        if policy is None:
            continue
        hit = [
            b
            for b in buckets(view)
            if b.capacity
            and b.timewait >= TW_REUSE_SHARE * b.capacity
            and not reuse_value_covers(policy, b.local_addr, b.remote_addr)
        ]
        if not hit:
            continue
        b = max(hit, key=lambda x: (x.timewait, x.destination))
        found.append(
            Finding(
                "tw-reuse-off-for-clients",
                "warning",
                view.label,
                f"toward {b.destination}: {b.timewait:,} TIME-WAIT sockets hold "
                f"{_pct(b.timewait / b.capacity)} of {b.capacity:,} ports, and "
                f"tcp_tw_reuse={policy.tw_reuse} does not let connect() reuse them",
                {
                    "destination": b.destination,
                    "local_addr": b.local_addr,
                    "timewait": b.timewait,
                    "capacity": b.capacity,
                    "share": round(b.timewait / b.capacity, 4),
                    "tcp_tw_reuse": policy.tw_reuse,
                    "buckets": len(hit),
                },
                "Set net.ipv4.tcp_tw_reuse=1 in this namespace: connect() may then take over a "
                "TIME-WAIT quadruplet older than a second, safely thanks to TCP timestamps. "
                "The default 2 covers loopback only, and the setting does nothing for "
                "connections this host accepts.",
            )
        )
    return found


def timestamps_off(all_views: list[NamespaceView], second: Snapshot) -> list[Finding]:
    """tcp_timestamps is 0."""
    found = []
    for view in all_views:
        value = view.sysctl("tcp_timestamps")
        if value is None or value != 0:
            continue
        reuse = view.sysctl("tcp_tw_reuse")
        found.append(
            Finding(
                "timestamps-off",
                "warning",
                view.label,
                "net.ipv4.tcp_timestamps=0: tcp_tw_reuse cannot work, whatever its value",
                {"tcp_timestamps": 0, "tcp_tw_reuse": int(reuse) if reuse is not None else -1},
                "Set net.ipv4.tcp_timestamps=1 (the default). Reusing a TIME-WAIT quadruplet "
                "is only safe when timestamps tell old segments from new ones, so without "
                "them every TIME-WAIT socket keeps its port for the full 60 s.",
            )
        )
    return found


def narrow_port_range(all_views: list[NamespaceView], second: Snapshot) -> list[Finding]:
    """ip_local_port_range minus ip_local_reserved_ports leaves fewer ports than the
    default range (32768-60999: 28,232)."""
    found = []
    for view in all_views:
        if view.sysctls is None or view.sysctls.port_range is None:
            continue
        low, high = view.sysctls.port_range
        reserved = view.sysctls.reserved_count() or 0
        available = (high - low + 1) - _reserved_inside(view.sysctls.reserved_ports, low, high)
        if available >= DEFAULT_PORTS:
            continue
        found.append(
            Finding(
                "narrow-port-range",
                "warning",
                view.label,
                f"ip_local_port_range {low}-{high} leaves {available:,} ephemeral ports: at "
                f"most {rate_text(available / TIME_WAIT_SECONDS)} new connections/s per "
                f"destination (default range: {rate_text(DEFAULT_PORTS / TIME_WAIT_SECONDS)})",
                {
                    "port_range_min": low,
                    "port_range_max": high,
                    "reserved": reserved,
                    "available": available,
                    "limit_per_second": round(available / TIME_WAIT_SECONDS, 2),
                    "default_available": DEFAULT_PORTS,
                },
                "Widen net.ipv4.ip_local_port_range (the default is "
                f"{DEFAULT_PORT_RANGE[0]}-{DEFAULT_PORT_RANGE[1]}; 1024-65535 is common on "
                "busy clients), keeping listening ports out of it or in "
                "ip_local_reserved_ports. Each TIME-WAIT socket holds its port for 60 s, so "
                "the range size divided by 60 caps the connection rate to one destination.",
            )
        )
    return found


def _reserved_inside(reserved: tuple[tuple[int, int], ...] | None, low: int, high: int) -> int:
    total = 0
    for first, last in reserved or ():
        start, stop = max(first, low), min(last, high)
        if start <= stop:
            total += stop - start + 1
    return total


def fin_timeout_misconception(all_views: list[NamespaceView], second: Snapshot) -> list[Finding]:
    """tcp_fin_timeout differs from its default of 60 s."""
    found = []
    for view in all_views:
        value = view.sysctl("tcp_fin_timeout")
        if value is None or value == DEFAULT_FIN_TIMEOUT:
            continue
        found.append(
            Finding(
                "fin-timeout-misconception",
                "info",
                view.label,
                f"net.ipv4.tcp_fin_timeout={int(value)} was tuned, but TIME-WAIT still lasts "
                f"{TIME_WAIT_SECONDS} s",
                {"tcp_fin_timeout": int(value), "timewait_seconds": TIME_WAIT_SECONDS},
                "tcp_fin_timeout bounds how long an orphaned socket waits in FIN-WAIT-2 for "
                "the peer's FIN; it does not shorten TIME-WAIT, which the kernel fixes at 60 s "
                "(TCP_TIMEWAIT_LEN). Put it back to 60 unless FIN-WAIT-2 sockets are the "
                "problem, and fight TIME-WAIT with connection reuse or tcp_tw_reuse.",
            )
        )
    return found


def server_closes_first(all_views: list[NamespaceView], second: Snapshot) -> list[Finding]:
    """A local port's inbound TIME-WAIT sockets number at least 50 and more than half of
    its inbound sockets: this side closes first."""
    found = []
    sizes = {c.name: c.object_size for c in slab_caches(second)}
    size = sizes.get("tw_sock_TCP", _TW_OBJECT_GUESS)
    for view in all_views:
        for lp in local_ports(view):
            if lp.timewait < SERVER_CLOSES_MIN or lp.timewait <= SERVER_CLOSES_SHARE * lp.sockets:
                continue
            found.append(
                Finding(
                    "server-closes-first",
                    "info",
                    view.label,
                    f"port {lp.port}: {lp.timewait:,} of its {lp.sockets:,} inbound sockets are "
                    "in TIME-WAIT: this side closes connections first",
                    {
                        "local_port": lp.port,
                        "timewait": lp.timewait,
                        "sockets": lp.sockets,
                        "memory_bytes_estimate": lp.timewait * size,
                    },
                    "This is harmless for port usage: inbound connections use the listening "
                    "port, not ephemeral ones, and tcp_tw_reuse does not apply to them. It only "
                    "matters for memory (a few hundred bytes each) and the established hash "
                    "size; if it does, let clients close first (HTTP keep-alive, the client "
                    "sending the last request).",
                )
            )
    return found


_TW_OBJECT_GUESS = 256  # bytes per tw_sock_TCP object when the slab was not read


def ehash_shared(all_views: list[NamespaceView], second: Snapshot) -> list[Finding]:
    """At least 10 polled namespaces have a negative tcp_ehash_entries: they share the
    host's established hash, so each of their sock_diag dumps walks the whole table."""
    shared = [v for v in all_views if (v.sysctl("tcp_ehash_entries") or 0) < 0]
    if len(shared) < EHASH_SHARED_MANY:
        return []
    evidence: dict[str, float | int | str] = {
        "shared_namespaces": len(shared),
        "namespaces": len(all_views),
    }
    for v in all_views:
        child = v.sysctl("tcp_child_ehash_entries")
        if v.label == "host" and child is not None:
            evidence["host_tcp_child_ehash_entries"] = int(child)
            entries = v.sysctl("tcp_ehash_entries")
            if entries is not None:
                evidence["host_tcp_ehash_entries"] = int(entries)
    return [
        Finding(
            "ehash-shared",
            "info",
            "",
            f"{len(shared)} of {len(all_views)} namespaces share the host's established hash: "
            "every dump in any of them walks the whole node's table",
            evidence,
            "Set net.ipv4.tcp_child_ehash_entries (Linux 6.1+, e.g. 65536) in the host "
            "namespace: namespaces created afterwards get their own hash table, at 8 bytes per "
            "entry each. Existing pods keep the shared one until they are recreated.",
        )
    ]


FINDINGS: dict[str, Callable[[list[NamespaceView], Snapshot], list[Finding]]] = {
    "connect-failing": connect_failing,
    "port-exhaustion": port_exhaustion,
    "close-wait-leak": close_wait_leak,
    "timewait-overflow": timewait_overflow,
    "tw-recycle-enabled": tw_recycle_enabled,
    "tw-reuse-off-for-clients": tw_reuse_off_for_clients,
    "timestamps-off": timestamps_off,
    "narrow-port-range": narrow_port_range,
    "fin-timeout-misconception": fin_timeout_misconception,
    "server-closes-first": server_closes_first,
    "ehash-shared": ehash_shared,
}


def all_findings(all_views: list[NamespaceView], second: Snapshot) -> list[Finding]:
    """Every finding of the namespaces' views (model.views, built once per report) and of
    the second poll's host sources, most severe first, then by id and namespace; except
    that connect-failing, the one fact among forecasts (connects did fail), leads."""
    found = [f for check in FINDINGS.values() for f in check(all_views, second)]
    found.sort(
        key=lambda f: (SEVERITIES.index(f.severity), f.id != "connect-failing", f.id, f.netns)
    )
    return found
