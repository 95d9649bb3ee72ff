"""HTTP load on the daemon, loopback only, inside a namespace this creates. As root:

    python -m benchmarks.http_load clients      # 500 scrapers, 60 s, 100,000 sockets polled
    python -m benchmarks.http_load slowloris    # 2,000 slow request heads, normal scrapes

clients: a namespace (benchmarks/load.py) holding `--established` ESTABLISHED sockets
(both ends in the namespace) and about `--timewait` TIME-WAIT sockets, kept at that level
for the whole run by a wave of benchmarks/loadgen.c every `--wave-every` s (a TIME-WAIT
socket lives 60 s, so each wave makes timewait * wave_every / 60 of them; the first
measurement starts after `--fill` = 60 s of waves). The daemon runs inside it
(`--netns=self --poll.interval=5`, 127.0.0.1). Scenarios, each with a fresh daemon:
`--clients` concurrent scrapers for `--seconds`, each in a loop GET /metrics with
Prometheus's Accept and Accept-Encoding headers over its own keep-alive connection (as
Prometheus does); the same with --web.max-requests equal to the client count; the same
with a new connection per request (each client bound to its own 127.0.x.y source, so
the clients' TIME-WAIT sockets do not exhaust one address's ports; they stay in the
namespace, which is why this runs last). A client that gets a 503 asks again at once.
Recorded: requests, statuses, errors, latency of 200s and 503s, the daemon's peak RSS
and CPU (utime + stime) over the window, the clients' own CPU (they share the 2 cores).

slowloris: a fresh namespace, the daemon with default web flags. `--slow` connections
each send a request head one byte every `--trickle` s and never finish it; when the
server closes one, it is opened again (so `--slow` are held all the time). Meanwhile a
probe process scrapes /metrics every `--probe-every` s, alternately over a new connection
and over one keep-alive connection. Recorded: the probes' latency, and for every slow
connection the server closed, how long after its connect.

Both write JSON to benchmarks/results/ and print a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from benchmarks.load import Loaded, loaded_namespace, loadgen_binary
from benchmarks.run import ROOT
from benchmarks.worker import process_cpu

RESULTS = Path(__file__).parent / "results"
PAIRS_PER_PROCESS = 8000
PORT = 9961  # inside the namespace: below its ip_local_port_range (10000-65000)
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
HEADERS = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.array(values) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


# -- inside the namespace: the load itself (run as `python -m benchmarks.http_load _...`) --


async def _clients(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    url = f"http://127.0.0.1:{args.port}/metrics"
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies: dict[int, list[float]] = {200: [], 503: []}
    body_sizes: Counter[int] = Counter()
    stop_at = 0.0

    async def client(i: int) -> None:
        connector = aiohttp.TCPConnector(
            limit=1,
            force_close=args.new_connection,
            local_addr=(f"127.0.{1 + i // 250}.{1 + i % 250}", 0) if args.new_connection
            else None,
        )  # fmt: skip
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        ) as session:
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                try:
                    async with session.get(url, headers=HEADERS) as response:
                        body = await response.read()
                    elapsed = time.perf_counter() - start
                    statuses[str(response.status)] += 1
                    latencies.setdefault(response.status, []).append(elapsed)
                    if response.status == 200:
                        body_sizes[len(body)] += 1
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1

    stop_at = time.monotonic() + args.seconds
    cpu0, wall0 = self_cpu(), time.monotonic()
    print("started", flush=True)
    await asyncio.gather(*(client(i) for i in range(args.clients)))
    wall, cpu = time.monotonic() - wall0, self_cpu() - cpu0
    return {
        "wall_s": wall,
        "client_cpu_s": cpu,
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "errors": dict(errors),
        "latency_200": percentiles(latencies[200]),
        "latency_503": percentiles(latencies[503]),
        "body_bytes_gzip": sorted(body_sizes)[:: max(1, len(body_sizes) - 1)],
    }


@dataclass
class SlowStats:
    opened: int = 0
    closed_by_server: list[float] = field(default_factory=list)  # seconds after connect
    close_times: list[float] = field(default_factory=list)  # since the start
    connect_errors: Counter[str] = field(default_factory=Counter)
    bytes_sent: int = 0


HEAD = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris" + b"x" * 4096


async def _slowloris(args: argparse.Namespace) -> dict[str, Any]:
    stats = SlowStats()
    stop_at = 0.0
    start = time.monotonic()
    held = 0
    held_min = args.slow

    async def one(i: int) -> None:
        nonlocal held, held_min
        # Spread the first connects over one trickle period, then reopen when closed.
        await asyncio.sleep(args.trickle * i / args.slow)
        while time.monotonic() < stop_at:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
            except OSError as exc:
                stats.connect_errors[type(exc).__name__] += 1
                await asyncio.sleep(1)
                continue
            stats.opened += 1
            held += 1
            connected = time.monotonic()
            eof = asyncio.ensure_future(reader.read(1))
            try:
                for k in range(len(HEAD)):
                    if time.monotonic() >= stop_at:
                        break
                    writer.write(HEAD[k : k + 1])
                    stats.bytes_sent += 1
                    done, _ = await asyncio.wait({eof}, timeout=args.trickle)
                    if done:
                        break
                if eof.done():
                    stats.closed_by_server.append(time.monotonic() - connected)
                    stats.close_times.append(time.monotonic() - start)
            except OSError:
                stats.closed_by_server.append(time.monotonic() - connected)
                stats.close_times.append(time.monotonic() - start)
            finally:
                held -= 1
                eof.cancel()
                if eof.done() and not eof.cancelled():
                    eof.exception()  # retrieved: a reset is an expected way to end
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if not args.reopen:
                return

    async def count_held() -> None:
        nonlocal held_min
        await asyncio.sleep(args.trickle + 1)  # all opened by then
        while time.monotonic() < stop_at:
            held_min = min(held_min, held)
            await asyncio.sleep(0.1)

    stop_at = time.monotonic() + args.seconds
    cpu0 = self_cpu()
    print("started", flush=True)
    await asyncio.gather(count_held(), *(one(i) for i in range(args.slow)))
    lifetimes = stats.closed_by_server
    return {
        "wall_s": time.monotonic() - start,
        "client_cpu_s": self_cpu() - cpu0,
        "opened": stats.opened,
        "closed_by_server": len(lifetimes),
        "held_min_after_ramp": held_min,
        "lifetime_s": {
            "min": min(lifetimes) if lifetimes else None,
            "p50": float(np.percentile(lifetimes, 50)) if lifetimes else None,
            "max": max(lifetimes) if lifetimes else None,
        },
        "first_close_s": min(stats.close_times) if stats.close_times else None,
        "bytes_sent": stats.bytes_sent,
        "connect_errors": dict(stats.connect_errors),
    }


def _probe(args: argparse.Namespace) -> dict[str, Any]:
    """Blocking scrapes every probe_every s: new connection, then keep-alive, in turn."""
    import http.client

    keep = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
    lat: dict[str, list[float]] = {"new": [], "keepalive": []}
    failures: Counter[str] = Counter()
    end = time.monotonic() + args.seconds
    k = 0
    print("started", flush=True)
    while time.monotonic() < end:
        kind = "new" if k % 2 == 0 else "keepalive"
        k += 1
        conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
        if kind == "keepalive":
            conn = keep
        start = time.perf_counter()
        try:
            conn.request("GET", "/metrics", headers=HEADERS)
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - start
            if response.status == 200:
                lat[kind].append(elapsed)
            else:
                failures[str(response.status)] += 1
        except (OSError, http.client.HTTPException) as exc:
            failures[type(exc).__name__] += 1
            if kind == "keepalive":
                keep.close()
                keep = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
        finally:
            if kind == "new":
                conn.close()
        time.sleep(max(0.0, args.probe_every - (time.perf_counter() - start)))
    both = lat["new"] + lat["keepalive"]
    return {
        "probes": len(both),
        "failures": dict(failures),
        "all": percentiles(both),
        "new_connection": percentiles(lat["new"]),
        "keepalive": percentiles(lat["keepalive"]),
        "over_100ms": sum(1 for t in both if t > 0.1),
    }


def inner_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["_clients", "_slowloris", "_probe"])
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--new-connection", action="store_true")
    parser.add_argument("--slow", type=int, default=2000)
    parser.add_argument("--trickle", type=float, default=1.0)
    parser.add_argument("--reopen", action="store_true")
    parser.add_argument("--probe-every", type=float, default=0.1)
    args = parser.parse_args(argv)
    raise_nofile()
    if args.mode == "_clients":
        result = asyncio.run(_clients(args))
    elif args.mode == "_slowloris":
        result = asyncio.run(_slowloris(args))
    else:
        result = _probe(args)
    print(json.dumps(result), flush=True)


# -- outside: namespaces, the daemon, sampling -------------------------------------------


class Sampler(threading.Thread):
    """The daemon's VmRSS and open descriptors every `period` s."""

    def __init__(self, pid: int, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.stop = threading.Event()
        self.rss_kib: list[int] = []
        self.fds: list[int] = []

    def run(self) -> None:
        while not self.stop.wait(self.period):
            with contextlib.suppress(OSError):
                self.rss_kib.append(status_kib(self.pid, "VmRSS"))
                self.fds.append(len(os.listdir(f"/proc/{self.pid}/fd")))


@contextlib.contextmanager
def daemon_in(loaded: Loaded, *flags: str) -> Iterator[subprocess.Popen[bytes]]:
    daemon = subprocess.Popen(
        loaded.exec(sys.executable, "-m", "exporter", "serve", "--netns=self",
                    f"--web.listen-address=127.0.0.1:{PORT}", "--log.level=error", *flags),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        probe = (
            "import time, urllib.request\n"
            "for _ in range(600):\n"
            "    try:\n"
            f"        b = urllib.request.urlopen('http://127.0.0.1:{PORT}/metrics').read()\n"
            "        if b'tcptw_sockets' in b: break\n"
            "    except OSError: pass\n"
            "    time.sleep(0.1)\n"
            "else: raise SystemExit('daemon not ready')\n"
        )
        subprocess.run(loaded.exec(sys.executable, "-c", probe), check=True, timeout=90)
        yield daemon  # `ip netns exec` execs the daemon: same pid
    finally:
        daemon.terminate()
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def run_inside(loaded: Loaded, daemon_pid: int, *argv: str) -> dict[str, Any]:
    """A worker mode of this module in the namespace; the daemon's CPU and RSS over it."""
    worker = subprocess.Popen(
        loaded.exec(sys.executable, "-m", "benchmarks.http_load", *argv),
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert worker.stdout is not None
    if worker.stdout.readline().strip() != "started":
        raise RuntimeError(f"worker {argv[0]} failed: exit {worker.wait()}")
    sampler = Sampler(daemon_pid)
    sampler.start()
    cpu0, wall0 = process_cpu(daemon_pid), time.monotonic()
    line = worker.stdout.readline()
    cpu, wall = process_cpu(daemon_pid) - cpu0, time.monotonic() - wall0
    sampler.stop.set()
    sampler.join()
    if worker.wait() != 0 or not line:
        raise RuntimeError(f"worker {argv[0]} failed: exit {worker.returncode}")
    result: dict[str, Any] = json.loads(line)
    result["daemon"] = {
        "cpu_s": cpu,
        "window_s": wall,
        "cpu_percent_of_one_core": 100 * cpu / wall,
        "rss_kib_max": max(sampler.rss_kib, default=0),
        "vm_hwm_kib": status_kib(daemon_pid, "VmHWM"),
        "fds_max": max(sampler.fds, default=0),
    }
    return result


def sockstat(loaded: Loaded) -> dict[str, int]:
    """TCP inuse and tw of the namespace (/proc/net/sockstat seen from inside)."""
    text = subprocess.run(
        loaded.exec("cat", "/proc/net/sockstat"), capture_output=True, text=True, check=True
    ).stdout
    line = next(line for line in text.splitlines() if line.startswith("TCP:")).split()[1:]
    values = dict(zip(line[::2], line[1::2], strict=True))
    return {"inuse": int(values["inuse"]), "tw": int(values["tw"])}


def body_sizes(loaded: Loaded) -> dict[str, int]:
    code = (
        "import urllib.request, json\n"
        f"u = 'http://127.0.0.1:{PORT}/metrics'\n"
        "plain = urllib.request.urlopen(urllib.request.Request(u)).read()\n"
        f"h = {HEADERS!r}\n"
        "gz = urllib.request.urlopen(urllib.request.Request(u, headers=h)).read()\n"
        "print(json.dumps({'text_plain': len(plain), 'prometheus_headers_gzip': len(gz),"
        " 'series': sum(1 for l in plain.splitlines() if l and not l.startswith(b'#'))}))\n"
    )
    out = subprocess.run(
        loaded.exec(sys.executable, "-c", code), capture_output=True, text=True, check=True
    )
    sizes: dict[str, int] = json.loads(out.stdout)
    return sizes


class Waves(threading.Thread):
    """A loadgen wave every `every` s making `count` TIME-WAIT sockets (half outbound,
    half inbound), on address blocks 127.10-29.0.x in turn (one is reused after 20 waves,
    when its TIME-WAIT sockets are gone)."""

    def __init__(self, loaded: Loaded, count: int, every: float) -> None:
        super().__init__(daemon=True)
        self.loaded, self.count, self.every = loaded, count, every
        self.stop = threading.Event()
        self.waves = 0
        self.cpu_s = 0.0
        self.failures = 0
        self.binary = str(loadgen_binary())

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            block = f"127.{10 + self.waves % 20}.0"
            proc = subprocess.Popen(
                self.loaded.exec(self.binary, str(self.count), "0", "1", "8", block, "1",
                                 "8", "8080", "2"),
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert proc.stdout is not None
            if proc.stdout.readline().strip() == "ready":
                with contextlib.suppress(OSError):
                    self.cpu_s += process_cpu(proc.pid)
            else:
                self.failures += 1
            proc.kill()
            proc.wait()
            self.waves += 1
            next_at += self.every
            self.stop.wait(max(0.0, next_at - time.monotonic()))


def clients_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    scenarios = [
        ("keep-alive", [], [], args.seconds),
        (
            f"keep-alive, --web.max-requests={args.clients}",
            [f"--web.max-requests={args.clients}"],
            [],
            args.max_requests_seconds,
        ),
        ("new connection per request", [], ["--new-connection"], args.seconds),
    ]
    results: dict[str, Any] = {
        "load": {
            "clients": args.clients, "established": args.established,
            "timewait": args.timewait, "wave_every_s": args.wave_every,
            "poll_interval": args.interval,
        },
        "scenarios": {},
    }  # fmt: skip
    per_wave = round(args.timewait * args.wave_every / 60)
    held: list[subprocess.Popen[str]] = []
    with loaded_namespace(0, established=0) as loaded:
        raise_nofile()
        waves = Waves(loaded, per_wave, args.wave_every)
        try:
            # ESTABLISHED pairs, PAIRS_PER_PROCESS per loadgen (RLIMIT_NOFILE: a process
            # may not be allowed more than 20,000 descriptors).
            pairs, block = args.established // 2, 40
            while pairs > 0:
                n = min(pairs, PAIRS_PER_PROCESS)
                held.append(subprocess.Popen(
                    loaded.exec(waves.binary, str(n), str(n), "1", "8", f"127.{block}.0",
                                "1", "8", "8080", "2"),
                    stdout=subprocess.PIPE, text=True,
                ))  # fmt: skip
                pairs, block = pairs - n, block + 1
            for proc in held:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"load generator failed (exit {proc.wait()})")
            waves.start()
            print(f"{loaded.name}: waves of {per_wave} TIME-WAIT every {args.wave_every} s; "
                  f"waiting {args.fill} s for the steady state", flush=True)  # fmt: skip
            time.sleep(args.fill)
            for name, flags, worker_flags, seconds in scenarios:
                if seconds <= 0:
                    continue
                before = sockstat(loaded)
                with daemon_in(loaded, f"--poll.interval={args.interval}", *flags) as daemon:
                    sizes = body_sizes(loaded)
                    result = run_inside(
                        loaded, daemon.pid, "_clients", f"--seconds={seconds}",
                        f"--clients={args.clients}", *worker_flags,
                    )  # fmt: skip
                result["sockstat_before"], result["sockstat_after"] = before, sockstat(loaded)
                result["body"] = sizes
                result["daemon_flags"] = [f"--poll.interval={args.interval}", *flags]
                results["scenarios"][name] = result
                print(clients_summary(name, result), flush=True)
        finally:
            waves.stop.set()
            if waves.is_alive():
                waves.join(30)
            for proc in held:
                proc.kill()
                proc.wait()
        results["waves"] = {"count": waves.waves, "cpu_s": waves.cpu_s,
                            "failures": waves.failures, "per_wave": per_wave}  # fmt: skip
    return results


def clients_summary(name: str, r: dict[str, Any]) -> str:
    d, l200, l503 = r["daemon"], r["latency_200"], r["latency_503"]

    def fmt(lat: dict[str, float | None]) -> str:
        if lat["p50_ms"] is None:
            return "-"
        return f"p50 {lat['p50_ms']:.1f} / p99 {lat['p99_ms']:.1f} / max {lat['max_ms']:.0f} ms"

    return (
        f"[{name}] {r['requests']} requests in {r['wall_s']:.1f} s "
        f"({r['requests'] / r['wall_s']:.0f}/s): {r['statuses']}; errors {r['errors'] or 0}\n"
        f"  200: {fmt(l200)}; 503: {fmt(l503)}\n"
        f"  daemon CPU {d['cpu_s']:.1f} s ({d['cpu_percent_of_one_core']:.0f} % of a core), "
        f"RSS max {d['rss_kib_max'] / 1024:.0f} MiB (HWM {d['vm_hwm_kib'] / 1024:.0f} MiB), "
        f"fds max {d['fds_max']}; clients' CPU {r['client_cpu_s']:.1f} s\n"
        f"  sockets before {r['sockstat_before']}, after {r['sockstat_after']}; body {r['body']}"
    )


def slowloris_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    with loaded_namespace(args.sockets, established=0) as loaded:
        raise_nofile()
        with daemon_in(loaded, f"--web.read-timeout={args.read_timeout}") as daemon:
            baseline = run_inside(
                loaded, daemon.pid, "_probe", f"--seconds={args.baseline_seconds}",
                f"--probe-every={args.probe_every}",
            )  # fmt: skip
            slow = subprocess.Popen(
                loaded.exec(sys.executable, "-m", "benchmarks.http_load", "_slowloris",
                            f"--seconds={args.seconds}", f"--slow={args.slow}",
                            f"--trickle={args.trickle}", *(["--reopen"] if args.reopen else [])),
                cwd=ROOT, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert slow.stdout is not None
            if slow.stdout.readline().strip() != "started":
                raise RuntimeError("slowloris worker failed")
            time.sleep(args.trickle + 1)  # every slow connection opened
            probe = run_inside(
                loaded, daemon.pid, "_probe", f"--seconds={args.seconds - args.trickle - 3}",
                f"--probe-every={args.probe_every}",
            )  # fmt: skip
            slow_result = json.loads(slow.stdout.readline())
            slow.wait()
    return {
        "load": {
            "slow": args.slow, "trickle_s": args.trickle, "reopen": args.reopen,
            "seconds": args.seconds, "read_timeout": args.read_timeout,
            "probe_every_s": args.probe_every, "sockets_in_namespace": args.sockets,
        },
        "baseline_probe": baseline,
        "probe_during": probe,
        "slow": slow_result,
    }  # fmt: skip


def slowloris_summary(r: dict[str, Any]) -> str:
    def fmt(p: dict[str, Any]) -> str:
        return f"p50 {p['p50_ms']:.1f} / p99 {p['p99_ms']:.1f} / max {p['max_ms']:.1f} ms"

    p, b, s, d = r["probe_during"], r["baseline_probe"], r["slow"], r["probe_during"]["daemon"]
    life = s["lifetime_s"]
    return (
        f"baseline: {b['probes']} probes, {fmt(b['all'])}\n"
        f"with {r['load']['slow']} slow connections held: {p['probes']} probes, "
        f"{fmt(p['all'])} (new connection {fmt(p['new_connection'])}; keep-alive "
        f"{fmt(p['keepalive'])}); over 100 ms: {p['over_100ms']}; failures {p['failures']}\n"
        f"slow connections: {s['opened']} opened, {s['closed_by_server']} closed by the "
        f"server after {life['min']:.2f}-{life['max']:.2f} s (median {life['p50']:.2f}); "
        f"held at least {s['held_min_after_ramp']} at every 0.1 s check; connect errors "
        f"{s['connect_errors']}; slowloris CPU {s['client_cpu_s']:.1f} s\n"
        f"daemon: CPU {d['cpu_s']:.1f} s in {d['window_s']:.0f} s, RSS max "
        f"{d['rss_kib_max'] / 1024:.0f} MiB, fds max {d['fds_max']}"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        inner_main(sys.argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="benchmark", required=True)
    clients = sub.add_parser("clients", help="concurrent scrapers while 100k sockets are polled")
    clients.add_argument("--clients", type=int, default=500)
    clients.add_argument("--seconds", type=float, default=60)
    clients.add_argument("--max-requests-seconds", type=float, default=20,
                         help="the --web.max-requests=CLIENTS run (0: skip)")  # fmt: skip
    clients.add_argument("--established", type=int, default=50_000, help="sockets, even")
    clients.add_argument("--timewait", type=int, default=50_000, help="kept by the waves")
    clients.add_argument("--wave-every", type=float, default=5)
    clients.add_argument("--fill", type=float, default=60, help="s of waves before measuring")
    clients.add_argument("--interval", type=float, default=5, help="--poll.interval")
    slow = sub.add_parser("slowloris", help="slow request heads and normal scrapes")
    slow.add_argument("--slow", type=int, default=2000)
    slow.add_argument("--trickle", type=float, default=1.0, help="s between bytes")
    slow.add_argument("--seconds", type=float, default=40)
    slow.add_argument("--no-reopen", dest="reopen", action="store_false")
    slow.add_argument("--read-timeout", type=float, default=10, help="--web.read-timeout")
    slow.add_argument("--probe-every", type=float, default=0.1)
    slow.add_argument("--baseline-seconds", type=float, default=10)
    slow.add_argument("--sockets", type=int, default=10_000, help="TIME-WAIT in the namespace")
    for p in (clients, slow):
        p.add_argument("--json", type=Path, help="default: benchmarks/results/<benchmark>.json")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark builds a network namespace")

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # run the finally blocks: the namespace is deleted

    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.benchmark == "clients":
        result = clients_benchmark(args)
    else:
        result = slowloris_benchmark(args)
        print(slowloris_summary(result), flush=True)
    path = args.json or RESULTS / f"http-{args.benchmark}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
