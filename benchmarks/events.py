"""The daemon's CPU under connection churn, with the socket-destroy events on and off, and
the events lost at each rate.

    python -m benchmarks.events --markdown docs/benchmarks.md
    python -m benchmarks.events --failures --markdown docs/benchmarks.md

Per rate and mode: a fresh namespace (tcp_max_tw_buckets 1000, so that TIME-WAIT does not
exhaust the ports at these rates), the daemon polling it alone every 5 s, then
`benchmarks/loadgen.c churn` making RATE loopback connections a second for --seconds
(client closes, then server: two destroyed sockets, two events each). CPU is the daemon's
utime + stime over the churn plus one second of drain, per second of churn. Counted and
lost events are read from /metrics after the next poll; counted + lost must equal two per
connection made. Writes its table between the EVENTS markers of the markdown file and keeps
the rest of the file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks.load import loadgen_binary
from benchmarks.markdown import write_section
from benchmarks.run import free_port
from tests.exposition import samples, series

EVENTS_BEGIN, EVENTS_END = "<!-- EVENTS_BEGIN -->", "<!-- EVENTS_END -->"
FAILURES_BEGIN, FAILURES_END = "<!-- FAILURES_BEGIN -->", "<!-- FAILURES_END -->"
CLOCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        parsed = samples(response.read().decode())
    out = {}
    for name in (
        "tcptw_outbound_connections_closed_total",
        "tcptw_inbound_connections_closed_total",
        "tcptw_socket_events_lost_total",
        "tcptw_connect_failures_total",
    ):
        out[name] = sum(series(parsed, name).values())
    out["polls"] = sum(series(parsed, "tcptw_last_poll_timestamp_seconds").values())
    return out


def wait_ready(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("daemon not ready")


def rcvbuf_obtained() -> int:
    from exporter.events.socket import EventSocket

    sock = EventSocket()
    try:
        return sock.rcvbuf
    finally:
        sock.close()


STOCK_RMEM_MAX = 212_992  # Linux's default net.core.rmem_max


def one_run(
    rate: int, seconds: float, events: bool, rcvbuf: int | None = None, failures: bool = False
) -> dict[str, float]:
    """failures: `loadgen fail` (connect()s failing with EADDRNOTAVAIL, one port in the
    range) instead of churn."""
    name = f"evbench-{os.getpid()}-{rate}-{int(events)}-{int(failures)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    daemon = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(
            ["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=1000"],
            check=True,
        )
        if failures:
            subprocess.run(
                ["ip", "netns", "exec", name, "sysctl", "-qw",
                 "net.ipv4.ip_local_port_range=40000 40000"],
                check=True,
            )  # fmt: skip
        port = free_port()
        daemon = subprocess.Popen(
            [
                sys.executable, "-m", "exporter", "serve", f"--netns={name}",
                f"--web.listen-address=127.0.0.1:{port}", "--poll.interval=5",
                "--log.format=json", "--log.level=warning",
                "--events" if events else "--no-events",
            ],
            stdout=subprocess.DEVNULL,
            env={**os.environ, **({"TCPTW_EVENTS_RCVBUF": str(rcvbuf)} if rcvbuf else {})},
        )  # fmt: skip
        wait_ready(port)
        time.sleep(1)
        before = metrics(port)
        cpu0 = cpu_seconds(daemon.pid)
        load = (
            ["fail", str(rate), str(seconds), "8080"]
            if failures
            else ["churn", str(rate), str(seconds), "8080", "16"]
        )
        out = subprocess.run(
            ["ip", "netns", "exec", name, str(loadgen_binary()), *load],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        made_text, took_text = out.stdout.split()
        made, took = int(made_text), float(took_text)
        time.sleep(1)
        cpu = cpu_seconds(daemon.pid) - cpu0
        polls = metrics(port)["polls"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and metrics(port)["polls"] == polls:
            time.sleep(0.2)  # the next poll publishes the counters
        after = metrics(port)
        names = [f"tcptw_{d}_connections_closed_total" for d in ("outbound", "inbound")]
        counted = sum(after[n] - before[n] for n in names)
        lost = after["tcptw_socket_events_lost_total"] - before["tcptw_socket_events_lost_total"]
        failed = after["tcptw_connect_failures_total"] - before["tcptw_connect_failures_total"]
        return {
            "rate": made / took,
            "made": made,
            "cpu_percent": 100 * cpu / (took + 1),
            "cpu_per_10k": 10_000 * cpu / made,
            "counted": failed if failures else counted,
            "closes": counted,
            "lost": lost,
        }
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(10)
        subprocess.run(["ip", "netns", "del", name], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates", default="10000,50000")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--note", default="", help="a sentence added under the table")
    parser.add_argument(
        "--failures", action="store_true", help="connect()s failing with EADDRNOTAVAIL instead"
    )
    args = parser.parse_args()
    if args.failures:
        failures_table(args)
        return
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    rcvbuf = rcvbuf_obtained()
    rows = []
    for rate in [int(r) for r in args.rates.split(",")]:
        for mode, events, asked in (
            ("off", False, None),
            ("on", True, None),
            (f"on, buffer as with the stock rmem_max ({2 * STOCK_RMEM_MAX:,} B)", True,
             STOCK_RMEM_MAX),
        ):  # fmt: skip
            result = one_run(rate, args.seconds, events, asked)
            print(rate, mode, result, flush=True)
            rows.append((rate, mode, events, result))
    lines = [
        EVENTS_BEGIN,
        "### Socket-destroy events under connection churn",
        "",
        f"`python -m benchmarks.events` ({args.seconds:g} s of churn per row, loopback, "
        "`benchmarks/loadgen.c churn`: each connection destroys two full sockets, so two "
        f"events). Receive buffer obtained: {rcvbuf:,} bytes (`SO_RCVBUF` asks for "
        f"{16 << 20:,}; the kernel caps it at net.core.rmem_max = {rmem_max:,} and "
        "doubles it; no `SO_RCVBUFFORCE`, which needs CAP_NET_ADMIN).",
        "",
        "| asked conn/s | made conn/s | events | daemon CPU, % of one core | CPU s per 10,000 conn "
        "| events counted | events lost |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for rate, mode, events, r in rows:
        counted = f"{int(r['counted']):,}" if events else "-"
        lost = f"{int(r['lost']):,}" if events else "-"
        lines.append(
            f"| {rate:,} | {r['rate']:,.0f} | {mode} | "
            f"{r['cpu_percent']:.2f} | {r['cpu_per_10k']:.4f} | {counted} | {lost} |"
        )
    lines += [
        "",
        "Counted + lost = two events per connection made, in every row (the Drops count is "
        "exact). With the stock net.core.rmem_max (212,992) the buffer holds about 330 "
        "events and the reader falls behind even at 10,000 conn/s: raise rmem_max on such "
        "nodes (`sysctl -w net.core.rmem_max=4194304`), or read tcptw_socket_events_lost_total.",
    ]
    if args.note:
        lines += ["", args.note]
    lines.append(EVENTS_END)
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        write_section(args.markdown, EVENTS_BEGIN, EVENTS_END, text)


def failures_table(args: argparse.Namespace) -> None:
    rates = [int(r) for r in (args.rates if args.rates != "10000,50000" else "10000").split(",")]
    rows = []
    for rate in rates:
        for mode, events in (("off", False), ("on", True)):
            result = one_run(rate, args.seconds, events, failures=True)
            print(rate, mode, result, flush=True)
            rows.append((rate, mode, events, result))
    lines = [
        FAILURES_BEGIN,
        "### Failed connects (EADDRNOTAVAIL) counted from the destroy events",
        "",
        f"`python -m benchmarks.events --failures` ({args.seconds:g} s per row, "
        "`benchmarks/loadgen.c fail`: a namespace with one port, held by one connection; each "
        "further `connect()` fails with EADDRNOTAVAIL and its socket is closed at once, one "
        "destroy event each, whose INET_DIAG_INFO is read for its path MTU).",
        "",
        "| asked failures/s | made failures/s | events | daemon CPU, % of one core | "
        "CPU s per 10,000 failures | failures counted | events lost | closes counted |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for rate, mode, events, r in rows:
        counted = f"{int(r['counted']):,}" if events else "-"
        lost = f"{int(r['lost']):,}" if events else "-"
        closes = f"{int(r['closes']):,}" if events else "-"
        lines.append(
            f"| {rate:,} | {r['rate']:,.0f} | {mode} | {r['cpu_percent']:.2f} | "
            f"{r['cpu_per_10k']:.4f} | {counted} | {lost} | {closes} |"
        )
    lines += [
        "",
        "Failures counted + lost = failures made; closes counted stay 0 (a failed connect is "
        "never a connection closed). Beside the churn table above: a failure is one event, "
        "a connection closed two.",
    ]
    if args.note:
        lines += ["", args.note]
    lines.append(FAILURES_END)
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        write_section(args.markdown, FAILURES_BEGIN, FAILURES_END, text)


if __name__ == "__main__":
    main()
