"""The report for a terminal: aligned tables no wider than 100 columns, colour only when
the output is a terminal (and NO_COLOR is not set)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from exporter.report.engine import NamespaceReport, Report
from exporter.report.holders import Holder, Inspection
from exporter.report.model import TIME_WAIT_SECONDS, Finding, rate_text

WIDTH = 100
BAR = 20
SHOWN_BUCKETS = 5
SHOWN_PORTS = 5
COLOURS = {"critical": "1;31", "warning": "33", "info": "36", "ok": "32", "head": "1"}
LABELS = {"critical": "CRIT", "warning": "WARN", "info": "INFO"}


class Style:
    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def __call__(self, kind: str, text: str) -> str:
        if not self.colour or kind not in COLOURS:
            return text
        return f"\033[{COLOURS[kind]}m{text}\033[0m"


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else rate_text(value)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} GiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds <= 0:
        return "now"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def bar(ratio: float, width: int = BAR) -> str:
    filled = max(0, min(width, round(ratio * width)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def table(rows: Sequence[Sequence[str]], right: Sequence[bool], indent: str = "  ") -> list[str]:
    """Columns padded to their widest cell; `right` aligns a column to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(w) if right[i] else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append((indent + "  ".join(cells)).rstrip()[:WIDTH])
    return lines


def _wrap(text: str, indent: str) -> list[str]:
    lines, line = [], indent
    for word in text.split():
        if len(line) + len(word) + 1 > WIDTH and line.strip():
            lines.append(line.rstrip())
            line = indent
        line += word + " "
    if line.strip():
        lines.append(line.rstrip())
    return lines


def _finding(f: Finding, style: Style) -> list[str]:
    where = f.netns or "node"
    head = f"  {style(f.severity, LABELS[f.severity])}  {style('head', f.id)}  [{where}]"
    evidence = " ".join(f"{k}={v}" for k, v in f.evidence.items())
    return [
        head[: WIDTH + 40],  # escape codes take no columns
        *_wrap(f.summary, "        "),
        *_wrap("evidence: " + evidence, "        "),
        *_wrap("remedy: " + f.remedy, "        "),
    ]


def _namespace(ns: NamespaceReport, style: Style) -> list[str]:
    lines = [style("head", f"Namespace {ns.netns}")]
    for error in ns.errors:
        lines += _wrap(f"unreadable: {error}", "  ")
    if ns.states:
        lines += _wrap(
            "sockets (sock_diag, per state): "
            + ", ".join(f"{s} {_n(c)}" for s, c in sorted(ns.states.items())),
            "  ",
        )
    if ns.direction is not None:
        d = ns.direction
        lines.append(
            f"  direction: outbound {_n(d.outbound)} (TIME-WAIT {_n(d.outbound_timewait)}), "
            f"inbound {_n(d.inbound)} (TIME-WAIT {_n(d.inbound_timewait)}), listen {_n(d.listen)}"
        )
    if ns.port_range is not None:
        p = ns.port_range
        usable = p.capacity if p.capacity is not None else p.available
        lines += _wrap(
            f"ports: range {p.min}-{p.max}, {_n(p.reserved)} reserved, {_n(usable)} usable per "
            f"destination: each closed connection holds its port {TIME_WAIT_SECONDS} s, so at "
            f"most {rate_text(p.limit_per_second)} new connections/s toward any one destination",
            "  ",
        )
    if ns.timewait is not None:
        lines += _wrap(_timewait(ns), "  ")
    if ns.rates:
        lines += _wrap(
            "kernel counters per second, whole namespace: "
            + ", ".join(f"{c} {_rate(r)}" for c, r in ns.rates.items()),
            "  ",
        )
    if ns.outbound:
        rows = [["destination", "local", "used/cap", "", "TIME-WAIT", "limit/s", "full in"]]
        for b in ns.outbound[:SHOWN_BUCKETS]:
            rows.append([
                _cut(b.destination, 26), _cut(b.local_addr, 15), f"{_n(b.used)}/{_n(b.capacity)}",
                bar(b.ratio, 10), _n(b.timewait),
                _rate(b.limit) if b.limit is not None else "reuse", _duration(b.exhaustion_seconds),
            ])  # fmt: skip
        lines.append("  outbound buckets (largest used/capacity first):")
        lines += table(rows, [False, False, True, False, True, True, True], "    ")
        for b in ns.outbound[:SHOWN_BUCKETS]:
            lines += _wrap(b.sentence(), "    ")
        if ns.rate_method_reason:
            why = ns.rate_method_reason
            lines += _wrap(f"(conn/s now estimated from TIME-WAIT: {why})", "    ")
        hidden = len(ns.outbound) - SHOWN_BUCKETS
        if hidden > 0:
            lines.append(f"    ... {hidden} more (--format json lists them)")
        lines += _wrap(RATES, "    ")
    for inspection in ns.inspections:
        lines += _inspection(inspection)
    lines += _wrap(_failures(ns), "  ")
    if ns.inbound:
        rows = [["local port", "peer", "sockets", "TIME-WAIT"]]
        for lp in ns.inbound[:SHOWN_PORTS]:
            rows.append([f":{lp.port}", "(all peers)", _n(lp.sockets), _n(lp.timewait)])
            for peer in lp.peers[:3]:
                rows.append(["", peer.remote_addr, _n(peer.sockets), _n(peer.timewait)])
        lines.append("  inbound, per local port and top peers:")
        lines += table(rows, [False, False, True, True], "    ")
    return lines


RATES = (
    "(one rate per destination: conn/s now is the connections closed toward it per second, "
    "counted from the socket-destroy events over the window, else estimated as its TIME-WAIT "
    f"sockets / {TIME_WAIT_SECONDS} s, the average of the last minute; limit is (usable "
    f"ports - its sockets not in TIME-WAIT) / {TIME_WAIT_SECONDS} s, at most the ports "
    "line's figure, which assumes no socket held. The kernel's TW counter above is "
    "namespace-wide: every socket entering TIME-WAIT or orphaned FIN-WAIT-2, in both "
    "directions, toward every destination)"
)


def _timewait(ns: NamespaceReport) -> str:
    """sockstat tw (what tcp_max_tw_buckets limits) beside sock_diag's TIME-WAIT state."""
    tw = ns.timewait or 0
    limit = ""
    if ns.tcp_max_tw_buckets:
        share = tw / ns.tcp_max_tw_buckets
        limit = f" of tcp_max_tw_buckets {_n(ns.tcp_max_tw_buckets)} ({100 * share:.1f} %)"
    if ns.orphan_fin_wait2 is None:
        return f"TIME-WAIT (sockstat tw): {_n(tw)}{limit}"
    if not ns.orphan_fin_wait2:
        return (
            f"timewait sockets (sockstat tw): {_n(tw)}{limit}, all in TIME-WAIT (sockstat tw "
            "also counts orphaned FIN-WAIT-2 sockets: none now)"
        )
    return (
        f"timewait sockets (sockstat tw): {_n(tw)}{limit}: TIME-WAIT "
        f"{_n(ns.states.get('time_wait', 0))} (the sock_diag state) plus orphaned FIN-WAIT-2 "
        f"{_n(ns.orphan_fin_wait2)} (closed here, waiting for the peer's FIN)"
    )


def _holder(h: Holder) -> str:
    pod = f" pod {h.pod}" if h.pod else ""
    close_wait = f", {_n(h.close_wait)} in CLOSE-WAIT" if h.close_wait else ""
    return f"pid {h.pid} {h.comm or '?'}{pod}: {_n(h.sockets)} sockets{close_wait}"


def _inspection(i: Inspection) -> list[str]:
    head = f"toward {i.destination} from {i.local_addr}:"
    if not i.states and i.error:
        return _wrap(f"{head} not inspected: {i.error}", "  ")
    states = ", ".join(f"{s} {_n(c)}" for s, c in i.states.items()) or "no socket left"
    lines = _wrap(f"{head} sockets now: {states}", "  ")
    if i.holders:
        lines += _wrap("held by: " + "; ".join(_holder(h) for h in i.holders), "    ")
    if i.unattributed:
        why = f" ({i.error})" if i.error else ""
        lines += _wrap(f"{_n(i.unattributed)} held by no process found{why}", "    ")
    if not i.holders and not i.unattributed:
        lines += _wrap(
            "held by no process: TIME-WAIT and orphaned FIN-WAIT-2 sockets belong to the "
            "kernel until their timer ends",
            "    ",
        )
    return lines


def _failures(ns: NamespaceReport) -> str:
    f = ns.connect_failures
    if f is None:
        return f"connect() failures (EADDRNOTAVAIL): not counted ({ns.connect_failures_reason})"
    if not f.total:
        return "connect() failures (EADDRNOTAVAIL) in the window: none"
    toward = ", ".join(f"{_n(n)} toward {remote}" for remote, n in f.failed.items())
    if f.uncounted:
        toward += (", " if toward else "") + f"{_n(f.uncounted)} toward untracked destinations"
    return f"connect() failures (EADDRNOTAVAIL) in the window: {_n(f.total)}: {toward}"


def _overview(namespaces: Sequence[NamespaceReport], flagged: set[str]) -> list[str]:
    rows = [["netns", "sockets", "TIME-WAIT", "tw/max", "outbound", "inbound", "max used", ""]]
    for ns in namespaces:
        tw = ns.timewait or 0
        share = f"{100 * tw / ns.tcp_max_tw_buckets:.1f} %" if ns.tcp_max_tw_buckets else "-"
        if ns.states or ns.orphan_fin_wait2 is not None:
            tw = ns.states.get("time_wait", 0)  # the state; sockstat tw is in tw/max
        d = ns.direction
        ratio = ns.max_ratio
        rows.append([
            _cut(ns.netns, 34) + (" *" if ns.netns in flagged else ""),
            _n(sum(ns.states.values())), _n(tw), share,
            _n(d.outbound) if d else "-", _n(d.inbound) if d else "-",
            f"{100 * ratio:.0f} %" if ratio is not None else "-",
            bar(ratio, 10) if ratio is not None else "",
        ])  # fmt: skip
    lines = table(rows, [False, True, True, True, True, True, True, False])
    if flagged:
        lines.append("  * has findings: details below")
    lines += _wrap(
        "TIME-WAIT: sockets in that state (sock_diag); tw/max: sockstat tw, which also counts "
        "orphaned FIN-WAIT-2 sockets, over tcp_max_tw_buckets (the limit applies to both)",
        "  ",
    )
    return lines


FAIL_ON_REASONS = {
    "max_ratio": "a bucket's used/capacity reached it",
    "connect_failures": "connect() failed with EADDRNOTAVAIL",
}


def _fail_on(report: Report) -> str:
    """The verdict, its reasons, and the namespaces whose failures it could not see."""
    if report.exit_code == 3:
        why = "; ".join(FAIL_ON_REASONS[r] for r in report.fail_on_reasons)
        text = f"--fail-on {report.fail_on:g}: reached (exit 3): {why}"
    else:
        text = f"--fail-on {report.fail_on:g}: not reached (exit {report.exit_code})"
    blind = [ns for ns in report.namespaces if ns.connect_failures is None]
    if blind:
        reasons = sorted({ns.connect_failures_reason for ns in blind})
        text += (
            f"; connect() failures not counted in {len(blind)} of {len(report.namespaces)} "
            f"namespaces ({'; '.join(reasons)})"
        )
    return text


def render(report: Report, colour: bool = False) -> str:
    style = Style(colour)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report.generated_at))
    busy = [ns for ns in report.namespaces if ns.has_sockets or ns.errors]
    idle = [ns.netns for ns in report.namespaces if ns not in busy]
    flagged = {f.netns for f in report.findings if f.netns}
    detailed = [ns for ns in busy if ns.netns in flagged or ns.netns == "host"]
    if not detailed:
        detailed = sorted(busy, key=lambda ns: -(ns.max_ratio or 0.0))[:3]
    lines = [
        style("head", "timewait-exporter report")
        + f"  {stamp}, {len(report.namespaces)} namespaces, window {report.window_seconds:.1f} s",
        "",
        style("head", "Findings"),
    ]
    if report.findings:
        for f in report.findings:
            lines += _finding(f, style)
    else:
        lines.append("  " + style("ok", "OK") + "  nothing wrong found")
    if busy:
        lines += ["", style("head", "Namespaces with TCP sockets"), *_overview(busy, flagged)]
    if idle:
        lines += _wrap(f"{len(idle)} without any: {', '.join(idle)}", "  ")
    for ns in detailed:
        lines += ["", *_namespace(ns, style)]
    lines += ["", style("head", "Node")]
    if report.slab:
        rows = [["slab cache", "objects", "object size", "memory", "a million would take"]]
        for s in report.slab:
            name = s.cache + (" (merged)" if s.merged else "")
            rows.append([name, _n(s.active_objects), _bytes(s.object_size),
                         _bytes(s.memory_bytes), _bytes(s.million_bytes)])  # fmt: skip
        lines += table(rows, [False, True, True, True, True])
    else:
        lines.append("  slab caches not read")
    if report.fail_on is not None:
        lines += _wrap(_fail_on(report), "  ")
    return "\n".join(lines) + "\n"
