"""/metrics latency and the daemon's CPU at the default poll interval, on pod-shaped
namespaces. As root:

    python -m benchmarks.latency --pods 250 --seconds 60 --markdown docs/benchmarks.md

For each hash kind (the host's shared established hash; hashes of their own, made with
tcp_child_ehash_entries set while the namespaces are created), the namespaces of
benchmarks.node (each a listener, 3 connections, 5 TIME-WAIT sockets), then a daemon
(`exporter serve`, default flags but `--netns` naming the host and those namespaces) per
poll interval in `--intervals`, scraped over real HTTP every 20 ms for `--seconds`
after its first polls. At the default 15 s most scrapes fall between polls, as
Prometheus's do; at 1 s a poll is nearly always running. Then 4 intervals with no request
at all: the daemon's CPU over them divided by 4 is its CPU per poll (the scrapes at 50
per second cost CPU of their own, shown beside it as % of a core). The report replaces
the text between LATENCY_BEGIN and LATENCY_END.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchmarks.markdown import write_section
from benchmarks.node import Load, loadavg, mib, node, scrape_daemon
from benchmarks.run import LATENCY_BEGIN, LATENCY_END
from exporter.netns.context import raise_fd_limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=250)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--intervals", default="15,1")
    parser.add_argument("--child-ehash", type=int, default=65536)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark builds network namespaces")
    raise_fd_limit()
    intervals = [float(i) for i in args.intervals.split(",")]
    rows = []
    for kind, ehash in (("shared", 0), ("own", args.child_ehash)):
        with node(Load(f"{args.pods} pods", args.pods, child_ehash=ehash)) as (names, _):
            for interval in intervals:
                before = loadavg()
                d = scrape_daemon(names, args.seconds, interval=interval, quiet=4 * interval)
                cpu_per_poll = d["quiet_cpu_s"] / 4
                row = (
                    f"| {kind} | {interval:g} s | {d['scrapes']:.0f} | {d['p50_ms']:.1f} ms | "
                    f"{d['p99_ms']:.1f} ms | {d['max_ms']:.1f} ms | {d['series']:,.0f} | "
                    f"{d['cpu_percent']:.1f} % | {cpu_per_poll * 1000:.0f} ms | "
                    f"{mib(d['rss'])} ({mib(d['hwm'])}) | {before:.2f}-{loadavg():.2f} |"
                )
                print(row, flush=True)
                rows.append(row)
    lines = [
        LATENCY_BEGIN,
        f"## Scrapes and daemon CPU at {args.pods} pods",
        "",
        f"    python -m benchmarks.latency --pods {args.pods} --seconds {args.seconds:g} "
        f"--intervals {args.intervals}" + (f" --markdown {args.markdown}" if args.markdown else ""),
        "",
        " ".join((__doc__ or "").split("\n\n")[2].split()),
        "",
        "| hash | --poll.interval | scrapes | p50 | p99 | max | series | daemon CPU while "
        "scraped, % of a core | CPU per poll, no scrapes | RSS (peak) | machine load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        *rows,
        "",
        LATENCY_END,
    ]
    print("\n".join(lines))
    if args.markdown:
        write_section(args.markdown, LATENCY_BEGIN, LATENCY_END, "\n".join(lines))


if __name__ == "__main__":
    main()
