"""Fresh namespaces filled with N sockets by benchmarks/loadgen.c (compiled on first use)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
BUILD = HERE / ".build"
SOURCES = 8  # 127.0.0.1-8
DESTINATIONS = 8  # 127.<process>.0.1-8
PORTS = 2  # 8080-8081
PROCESSES = 2  # one per core: both ends of every connection live in the namespace


def loadgen_binary() -> Path:
    binary = BUILD / "loadgen"
    source = HERE / "loadgen.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        BUILD.mkdir(exist_ok=True)
        if shutil.which("gcc") is None:
            raise RuntimeError("the benchmark load generator needs gcc (Debian package gcc)")
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return binary


@dataclass
class Loaded:
    name: str
    sockets: int  # what the generators were asked for: connections + ESTABLISHED peers
    seconds: float  # time to generate
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def exec(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


def sysctl(name: str, key: str, value: str) -> None:
    subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", f"{key}={value}"], check=True)


LOADS = ("buckets", "distinct-out", "distinct-in")


@contextmanager
def loaded_namespace(
    connections: int, established: int | None = None, load: str = "buckets"
) -> Iterator[Loaded]:
    """A namespace holding about `connections` TIME-WAIT sockets. Everything dies with the
    namespace.

    buckets: half outbound, half inbound, over 2 x 8 x 8 x 2 = 256 buckets, plus
        `established` ESTABLISHED pairs and 32 listeners;
    distinct-out: every one outbound, each toward its own destination address;
    distinct-in: every one inbound, each from its own client address.
    """
    name = f"twbench-{os.getpid()}-{load}-{connections}"
    if established is None:
        established = min(connections // 100, 5000) if load == "buckets" else 0
    binary = loadgen_binary()
    subprocess.run(["ip", "netns", "add", name], check=True)
    loaded = Loaded(name, 0, 0.0)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        sysctl(name, "net.ipv4.ip_local_port_range", "10000 65000")
        sysctl(name, "net.ipv4.tcp_max_tw_buckets", str(4 * max(connections, 1 << 20)))
        sysctl(name, "net.ipv4.tcp_tw_reuse", "0")  # keep every TIME-WAIT socket
        sysctl(name, "net.ipv4.tcp_rfc1337", "1")
        start = time.monotonic()
        share, extra = divmod(connections, PROCESSES)
        for k in range(PROCESSES):
            count = str(share + (extra if k == 0 else 0))
            if load == "buckets":
                argv = loaded.exec(
                    str(binary),
                    count,
                    str(established // PROCESSES),
                    "1",
                    str(SOURCES),
                    f"127.{k + 1}.0",
                    "1",
                    str(DESTINATIONS),
                    "8080",
                    str(PORTS),
                )
            else:  # each process its own address block (127.1.x.x on, 127.101.x.x on)
                direction = load.split("-")[1]
                octet = str(1 + 100 * k)
                argv = loaded.exec(str(binary), "distinct", direction, count, octet, str(8080 + k))
            loaded.processes.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
        for proc in loaded.processes:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"load generator failed (exit {proc.wait()})")
        loaded.seconds = time.monotonic() - start
        loaded.sockets = connections + established // PROCESSES * PROCESSES
        yield loaded
    finally:
        for proc in loaded.processes:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "netns", "del", name], check=False)
