"""Soak: the daemon polling every namespace on the node while namespaces and sockets churn.
As root:

    python -m benchmarks.soak                      # 10 minutes, the defaults below

The daemon runs in the host namespace (`--netns=all --poll.interval=1`, listening on
127.0.0.1). For `--seconds`, a churn driver keeps `--alive` namespaces named
`<prefix>-<pid>-<n>` (`--prefix`, twsoak by default; lo up, tcp_rfc1337=1,
tcp_tw_reuse=0, a listener on 127.0.0.1:8080): every `--replace-every` seconds it
deletes the `--replace` oldest and creates as many new ones; every second it picks
`--busy` of them and in each makes `--timewait` TIME-WAIT connections and opens or
closes ESTABLISHED pairs (at most `--held` pairs per namespace).
A scraper fetches /metrics every second over one keep-alive connection. Every
`--sample-every` seconds the daemon's RSS (VmRSS, RssAnon), open descriptors
(/proc/PID/fd) and CPU time are sampled. Reported: the RSS slope (least squares over the
samples after `--warmup`, KiB/min, and over the second half of that window alone: an
allocator settling flattens, a leak does not), the fd count first/last/min/max after the
warm-up, namespaces created and deleted, scrape statuses and latency.

`--root DIR` runs the daemon from another tree (`python -m exporter` with DIR as its
working directory), to compare a patched copy under the same load; `--prefix`, `--json`
and `--log` keep concurrent runs apart. Each daemon polls every namespace on the node,
the other runs' included.

Bounded: the run's length, the namespaces alive, the sockets per namespace (TIME-WAIT
sockets expire after 60 s; a deleted namespace takes its sockets with it). Every
namespace this creates is deleted on exit, Ctrl-C and exceptions included.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from benchmarks.run import ROOT, free_port
from benchmarks.worker import process_cpu
from exporter.netns.enter import entered

RESULTS = Path(__file__).parent / "results"
PREFIX = "twsoak"


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Namespace:
    name: str
    listener: socket.socket
    held: collections.deque[tuple[socket.socket, socket.socket]] = field(
        default_factory=collections.deque
    )

    def close(self) -> None:
        for client, server in self.held:
            client.close()
            server.close()
        self.held.clear()
        self.listener.close()


class Churn:
    """Namespaces created and deleted, sockets opened and closed in them; all bounded."""

    def __init__(self, alive: int, held: int, timewait: int, prefix: str = PREFIX) -> None:
        self.tag = f"{prefix}-{os.getpid()}"
        self.alive: collections.deque[Namespace] = collections.deque()
        self.max_alive, self.max_held, self.timewait = alive, held, timewait
        self.created = self.deleted = self.timewait_made = self.pairs_opened = 0
        self.pairs_closed = 0
        self._next = 0
        self._rng = random.Random(9)

    def create(self) -> None:
        name = f"{self.tag}-{self._next}"
        self._next += 1
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        try:
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
            with entered(f"/run/netns/{name}"):
                for key, value in (("tcp_rfc1337", "1"), ("tcp_tw_reuse", "0")):
                    Path(f"/proc/sys/net/ipv4/{key}").write_text(value)
                listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 8080))
            listener.listen(256)
        except BaseException:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            raise
        self.alive.append(Namespace(name, listener))
        self.created += 1

    def delete_oldest(self) -> None:
        ns = self.alive.popleft()
        ns.close()  # the driver's sockets would keep the namespace alive after `del`
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
        self.deleted += 1

    def _pair(self, ns: Namespace) -> tuple[socket.socket, socket.socket]:
        with entered(f"/run/netns/{ns.name}"):
            client = socket.socket()
        client.settimeout(5)
        client.connect(("127.0.0.1", 8080))
        server, _ = ns.listener.accept()
        return client, server

    def traffic(self, busy: int) -> None:
        """In `busy` namespaces: TIME-WAIT connections, and ESTABLISHED pairs opened or
        closed (at most max_held per namespace)."""
        for ns in self._rng.sample(list(self.alive), min(busy, len(self.alive))):
            for _ in range(self.timewait):
                client, server = self._pair(ns)
                client.close()  # the client closes first: outbound TIME-WAIT
                select.select([server], [], [], 5)
                server.recv(16)
                server.close()
                self.timewait_made += 1
            if len(ns.held) < self.max_held and self._rng.random() < 0.6:
                ns.held.append(self._pair(ns))
                self.pairs_opened += 1
            elif ns.held:
                client, server = ns.held.popleft()
                client.close()
                server.close()
                self.pairs_closed += 1

    def close(self) -> None:
        while self.alive:
            self.delete_oldest()


class Scraper(threading.Thread):
    """GET /metrics every `period` s over one keep-alive connection (reopened on error)."""

    def __init__(self, port: int, period: float) -> None:
        super().__init__(daemon=True)
        self.port, self.period = port, period
        self.stop = threading.Event()
        self.statuses: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []
        self.body_bytes: list[int] = []
        self.namespaces: list[int] = []  # tcptw_netns_info series in each 200 answer
        self.reconnects = 0

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.wait(self.period):
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            start = time.perf_counter()
            try:
                conn.request("GET", "/metrics")
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.statuses[type(exc).__name__] += 1
                conn.close()
                conn, self.reconnects = None, self.reconnects + 1
                continue
            self.latencies.append(time.perf_counter() - start)
            self.statuses[str(response.status)] += 1
            if response.status == 200:
                self.body_bytes.append(len(body))
                self.namespaces.append(body.count(b"\ntcptw_netns_info{"))
        if conn is not None:
            conn.close()


def wait_ready(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/metrics")
            if b"tcptw_netns_info" in conn.getresponse().read():
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"daemon on port {port} not ready in {timeout} s")


def slope_kib_per_min(samples: list[dict[str, float]], warmup: float) -> float:
    points = [(s["t"], s["rss_kib"]) for s in samples if s["t"] >= warmup]
    if len(points) < 2:
        return float("nan")
    t, rss = np.array(points).T
    return float(np.polyfit(t / 60, rss, 1)[0])


def soak(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    log_path = args.log
    log_path.parent.mkdir(parents=True, exist_ok=True)
    churn = Churn(args.alive, args.held, args.timewait, args.prefix)
    daemon: subprocess.Popen[bytes] | None = None
    scraper: Scraper | None = None
    samples: list[dict[str, float]] = []
    others_before = [n for n in os.listdir("/run/netns")] if Path("/run/netns").exists() else []
    try:
        for _ in range(args.alive):
            churn.create()
        with log_path.open("wb") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "exporter", "serve", "--netns=all",
                 f"--poll.interval={args.interval}", f"--web.listen-address=127.0.0.1:{port}",
                 "--log.level=warning", "--log.format=json"],
                cwd=args.root, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        wait_ready(port)
        pid = daemon.pid
        scraper = Scraper(port, 1.0)
        scraper.start()
        start = time.monotonic()
        cpu0 = process_cpu(pid)
        next_sample = next_replace = start
        while (now := time.monotonic()) < start + args.seconds:
            if daemon.poll() is not None:
                raise RuntimeError(f"daemon exited with {daemon.returncode}")
            if now >= next_sample:
                samples.append({
                    "t": now - start,
                    "rss_kib": status_kib(pid, "VmRSS"),
                    "hwm_kib": status_kib(pid, "VmHWM"),
                    "rss_anon_kib": status_kib(pid, "RssAnon"),
                    "fds": open_fds(pid),
                    "threads": status_kib(pid, "Threads"),
                    "cpu_s": process_cpu(pid) - cpu0,
                    "alive": len(churn.alive),
                })  # fmt: skip
                next_sample += args.sample_every
            if now >= next_replace:
                for _ in range(args.replace):
                    churn.delete_oldest()
                    churn.create()
                next_replace += args.replace_every
            churn.traffic(args.busy)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
        wall = time.monotonic() - start
        cpu = process_cpu(pid) - cpu0
    finally:
        if scraper is not None:
            scraper.stop.set()
            scraper.join(15)
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        churn.close()
    assert scraper is not None
    log_lines = log_path.read_text().splitlines()
    after = [s for s in samples if s["t"] >= args.warmup]
    fds = [int(s["fds"]) for s in after]
    lat = np.array(scraper.latencies) * 1000
    return {
        "load": {
            "seconds": args.seconds, "poll_interval": args.interval, "alive": args.alive,
            "replace": args.replace, "replace_every": args.replace_every,
            "busy_per_second": args.busy, "timewait_per_busy": args.timewait,
            "held_max_per_namespace": args.held, "warmup": args.warmup,
            "other_named_namespaces_at_start": len(others_before),
            "daemon_root": str(args.root),
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        },
        "wall_s": wall,
        "daemon_cpu_s": cpu,
        "namespaces_created": churn.created,
        "namespaces_deleted": churn.deleted,
        "timewait_connections": churn.timewait_made,
        "pairs_opened": churn.pairs_opened,
        "pairs_closed": churn.pairs_closed,
        "rss_slope_kib_per_min": slope_kib_per_min(samples, args.warmup),
        # The second half of the measured window alone: settling ends, a leak goes on.
        "rss_slope_kib_per_min_last_half": slope_kib_per_min(
            samples, (args.warmup + args.seconds) / 2
        ),
        "rss_kib_by_minute": [s["rss_kib"] for s in samples if s["t"] % 60 < args.sample_every],
        "rss_kib_first_after_warmup": after[0]["rss_kib"] if after else None,
        "rss_kib_last": samples[-1]["rss_kib"] if samples else None,
        "rss_kib_max": max(s["rss_kib"] for s in samples) if samples else None,
        "hwm_kib": samples[-1]["hwm_kib"] if samples else None,
        "fds": {"first": fds[0], "last": fds[-1], "min": min(fds), "max": max(fds)} if fds
        else {},
        "threads_max": max(int(s["threads"]) for s in samples) if samples else None,
        "scrapes": dict(scraper.statuses),
        "scrape_p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "scrape_p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "scrape_max_ms": float(lat.max()) if len(lat) else None,
        "body_bytes_min_max": [min(scraper.body_bytes), max(scraper.body_bytes)]
        if scraper.body_bytes else None,
        "namespaces_exposed_min_max": [min(scraper.namespaces), max(scraper.namespaces)]
        if scraper.namespaces else None,
        "daemon_log_lines": len(log_lines),
        "daemon_log_sample": log_lines[:5],
        "samples": samples,
    }  # fmt: skip


def summary(r: dict[str, Any]) -> str:
    fds = r["fds"]
    return "\n".join([
        f"soak {r['wall_s']:.0f} s: {r['namespaces_created']} namespaces created, "
        f"{r['namespaces_deleted']} deleted; {r['timewait_connections']} TIME-WAIT "
        f"connections, {r['pairs_opened']} pairs opened, {r['pairs_closed']} closed",
        f"daemon CPU {r['daemon_cpu_s']:.1f} s ({100 * r['daemon_cpu_s'] / r['wall_s']:.0f} % "
        f"of one core); RSS slope after warm-up {r['rss_slope_kib_per_min']:+.1f} KiB/min, "
        f"RSS {r['rss_kib_first_after_warmup']} -> {r['rss_kib_last']} KiB "
        f"(max {r['rss_kib_max']}, HWM {r['hwm_kib']}); slope over the last half "
        f"{r['rss_slope_kib_per_min_last_half']:+.1f} KiB/min",
        f"fds after warm-up: first {fds.get('first')}, last {fds.get('last')}, "
        f"min {fds.get('min')}, max {fds.get('max')}; threads max {r['threads_max']}",
        f"scrapes {r['scrapes']}, p50 {r['scrape_p50_ms']:.1f} ms, p99 "
        f"{r['scrape_p99_ms']:.1f} ms, max {r['scrape_max_ms']:.1f} ms; namespaces exposed "
        f"{r['namespaces_exposed_min_max']}; daemon log lines (warning+) "
        f"{r['daemon_log_lines']}",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--warmup", type=float, default=120, help="excluded from the slope")
    parser.add_argument("--interval", type=float, default=1.0, help="--poll.interval")
    parser.add_argument("--alive", type=int, default=20, help="churned namespaces kept")
    parser.add_argument("--replace", type=int, default=2)
    parser.add_argument("--replace-every", type=float, default=3.0)
    parser.add_argument("--busy", type=int, default=5, help="namespaces given traffic /s")
    parser.add_argument("--timewait", type=int, default=10, help="per busy namespace /s")
    parser.add_argument("--held", type=int, default=10, help="ESTABLISHED pairs, max per ns")
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=RESULTS / "soak.json")
    parser.add_argument(
        "--log", type=Path, default=RESULTS / "soak-daemon.log", help="the daemon's stderr"
    )
    parser.add_argument("--prefix", default=PREFIX, help="namespace names: PREFIX-<pid>-<n>")
    parser.add_argument(
        "--root",
        type=Path,
        default=ROOT,
        help="the tree the daemon runs from (python -m exporter there)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the soak creates network namespaces")

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # run the finally blocks: namespaces deleted

    signal.signal(signal.SIGTERM, terminated)
    # A background job of a non-interactive shell starts with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    result = soak(args)
    print(summary(result), flush=True)
    args.json.parent.mkdir(exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
