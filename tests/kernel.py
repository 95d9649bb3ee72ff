"""Real network namespaces and real sockets for kernel tests (root and `ip netns` needed).

Everything here talks to loopback inside namespaces the tests create, with bounded loops.
"""

from __future__ import annotations

import errno
import io
import itertools
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

from exporter.engine.poller import wanted
from exporter.engine.registry import SOURCES
from exporter.netns.context import NetnsContext
from exporter.netns.enter import entered, namespace_inode
from exporter.sources.sockdiag.buckets import BucketOptions
from exporter.sources.sockdiag.capacity import PortPolicy
from exporter.sources.sockdiag.dump import DiagSocket, new_buffers
from exporter.sources.sockdiag.source import DIAG
from exporter.sources.sockdiag.tally import SocketStats, collect_socket_stats

_names = itertools.count()

# How much slower than this machine the tests run: scripts/test-kernels sets it inside
# software-emulated guests (Python there is 20-40x slower), and every deadline here and in
# tests/serving.py is multiplied by it. Tests wait on conditions; this only bounds them.
SLOWDOWN = float(os.environ.get("TIMEWAIT_TEST_SLOWDOWN", "1"))
# "1": Netns.exporter runs the CLI in this process, inside the namespace, instead of a cold
# `python -m exporter` (whose imports take 10 s and more on an emulated guest).
IN_PROCESS = os.environ.get("TIMEWAIT_TEST_IN_PROCESS") == "1"


def scaled(seconds: float) -> float:
    """A deadline stretched by SLOWDOWN."""
    return seconds * SLOWDOWN


SS_STATES = {
    "ESTAB": "established",
    "SYN-SENT": "syn_sent",
    "SYN-RECV": "syn_recv",
    "FIN-WAIT-1": "fin_wait1",
    "FIN-WAIT-2": "fin_wait2",
    "TIME-WAIT": "time_wait",
    "UNCONN": "close",
    "CLOSE-WAIT": "close_wait",
    "LAST-ACK": "last_ack",
    "LISTEN": "listen",
    "CLOSING": "closing",
}


def kernel_tests_unavailable() -> str | None:
    """Why kernel tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "kernel tests need root (they create network namespaces)"
    if shutil.which("ip") is None or shutil.which("ss") is None:
        return "kernel tests need iproute2 (ip, ss)"
    probe = f"tw-probe-{os.getpid()}"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if added.returncode != 0:
        return f"ip netns add failed: {added.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Netns:
    """A named namespace under /run/netns with lo up; sockets opened inside stay inside."""

    name: str
    held: list[socket.socket] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    @contextmanager
    def inside(self) -> Iterator[None]:
        with entered(self.path):
            yield

    @property
    def inode(self) -> int:
        inode = namespace_inode(self.path)
        assert inode is not None, self.path
        return inode

    @contextmanager
    def context(self) -> Iterator[NetnsContext]:
        """The exporter's descriptors for this namespace, opened inside it."""
        context = NetnsContext.open(Path("/proc"), self.path, self.inode, wanted(SOURCES))
        try:
            yield context
        finally:
            context.close()

    def socket_stats(
        self, policy: PortPolicy | None = None, options: BucketOptions | None = None
    ) -> SocketStats:
        """One sock_diag pass over this namespace, as the sockdiag source makes it."""
        with self.context() as context:
            diag = context.handle(DIAG)
            assert isinstance(diag, DiagSocket)
            return collect_socket_stats(diag, new_buffers(), policy, options)

    def sysctl(self, name: str, value: str) -> None:
        with self.inside(), open(f"/proc/sys/{name.replace('.', '/')}", "w") as handle:
            handle.write(value)

    def read(self, relative: str) -> str:
        """A /proc file as seen from inside the namespace (e.g. "net/netstat")."""
        with self.inside(), open(f"/proc/thread-self/{relative}") as handle:
            return handle.read()

    def run(
        self, *argv: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=scaled(timeout),
        )

    def exporter(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The exporter run inside this namespace, on this namespace alone (--netns=self);
        in this process when TIMEWAIT_TEST_IN_PROCESS=1 (threads it starts inherit the
        namespace of the thread that starts them)."""
        argv = [*args, "--netns=self"]
        if not IN_PROCESS:
            return self.run(sys.executable, "-m", "exporter", *argv, check=check)
        from exporter.cli import main

        out, err = io.BytesIO(), io.StringIO()
        stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
        with self.inside(), redirect_stdout(stdout), redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse errors
                code = exc.code if isinstance(exc.code, int) else 1
            stdout.flush()
        result = subprocess.CompletedProcess(
            ["exporter", *argv], code, out.getvalue().decode(), err.getvalue()
        )
        if check:
            result.check_returncode()
        return result

    def ss_states(self, *flags: str) -> Counter[tuple[str, str]]:
        """(family, state) → count from `ss -tan` (-4 and -6 separately)."""
        return ss_states(["ip", "netns", "exec", self.name], *flags)

    def new_socket(self, family: int = socket.AF_INET) -> socket.socket:
        with self.inside():
            sock = socket.socket(family, socket.SOCK_STREAM)
        self.held.append(sock)
        return sock

    def listen(
        self,
        addr: str,
        port: int,
        backlog: int = 512,
        family: int = socket.AF_INET,
        v6only: bool | None = None,
    ) -> socket.socket:
        sock = self.new_socket(family)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind((addr, port))
        sock.listen(backlog)
        return sock

    def close_all(self) -> None:
        for sock in self.held:
            sock.close()
        self.held.clear()


def ss_states(prefix: list[str], *flags: str) -> Counter[tuple[str, str]]:
    """(family, state) → count from `ss -tan` run after `prefix` (which enters the
    namespace: `ip netns exec NAME` or `nsenter --net=/proc/PID/ns/net`)."""
    counts: Counter[tuple[str, str]] = Counter()
    for family, flag in (("ipv4", "-4"), ("ipv6", "-6")):
        out = subprocess.run(
            [*prefix, "ss", "-tanH", flag, *flags],
            capture_output=True,
            text=True,
            check=True,
            timeout=scaled(60),
        ).stdout
        for line in out.splitlines():
            counts[(family, SS_STATES[line.split()[0]])] += 1
    return counts


def nsenter(pid: int) -> list[str]:
    return ["nsenter", f"--net=/proc/{pid}/ns/net"]


def sockets_script(port_range: str, timewait: int, established: int) -> str:
    """Python run inside an unnamed namespace: its own port range, a listener on
    127.0.0.1:8080, `timewait` outbound TIME-WAIT sockets and `established` pairs."""
    return f"""
import select, socket
open('/proc/sys/net/ipv4/ip_local_port_range', 'w').write({port_range!r})
listener = socket.socket()
listener.bind(('127.0.0.1', 8080))
listener.listen(64)
held = [listener]
for i in range({timewait} + {established}):
    client = socket.create_connection(('127.0.0.1', 8080))
    server, _ = listener.accept()
    if i < {timewait}:
        client.close()
        select.select([server], [], [], 5)
        server.recv(16)
        server.close()
    else:
        held += [client, server]
"""


@contextmanager
def new_netns(prefix: str = "twt") -> Iterator[Netns]:
    name = f"{prefix}-{os.getpid()}-{next(_names)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    netns = Netns(name)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        # Keep loopback TIME-WAIT sockets alive for the whole test: RFC 1337 stops RSTs
        # from killing them, and no reuse lets connect() take them over.
        netns.sysctl("net.ipv4.tcp_rfc1337", "1")
        netns.sysctl("net.ipv4.tcp_tw_reuse", "0")
        yield netns
    finally:
        netns.close_all()
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def connect(
    netns: Netns,
    local: str,
    remote: tuple[str, int],
    family: int = socket.AF_INET,
    local_port: int = 0,
) -> socket.socket:
    sock = netns.new_socket(family)
    if local or local_port:
        sock.bind((local, local_port))
    sock.connect(remote)
    return sock


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until it holds; fail after `timeout` seconds times SLOWDOWN."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def closed_pairs(
    netns: Netns,
    listener: socket.socket,
    count: int,
    client_first: bool,
    local: str = "",
    family: int = socket.AF_INET,
) -> None:
    """`count` connections to `listener`, closed by the client first (TIME-WAIT on the
    client's ephemeral port) or by the server first (TIME-WAIT on the accepted socket);
    the other side closes once it has read the FIN, so nothing else is left."""
    remote = listener.getsockname()[:2]
    for _ in range(count):
        client = connect(netns, local, remote, family)
        server, _ = listener.accept()
        first, second = (client, server) if client_first else (server, client)
        first.close()
        _read_eof(second)
        second.close()
        netns.held.remove(client)


def time_wait_pairs(
    netns: Netns, listener: socket.socket, count: int, local: str = "", family: int = socket.AF_INET
) -> None:
    """Outbound TIME-WAIT: the client closes first."""
    closed_pairs(netns, listener, count, True, local, family)


def server_closes_first(
    netns: Netns, listener: socket.socket, count: int, local: str = "", family: int = socket.AF_INET
) -> None:
    """Inbound TIME-WAIT: the accepted socket closes first."""
    closed_pairs(netns, listener, count, False, local, family)


def _read_eof(sock: socket.socket) -> None:
    ready, _, _ = select.select([sock], [], [], scaled(5.0))
    if not ready:
        raise AssertionError("peer did not close within 5 s")
    sock.recv(16)


def syn_sent(netns: Netns, remote: tuple[str, int]) -> socket.socket:
    """A non-blocking connect whose SYN is dropped: stays in SYN-SENT."""
    sock = netns.new_socket()
    sock.setblocking(False)
    err = sock.connect_ex(remote)
    if err not in (errno.EINPROGRESS, 0):
        raise OSError(err, os.strerror(err))
    return sock


def populate_all_states(netns: Netns) -> None:
    """LISTEN, ESTABLISHED, TIME-WAIT (both sides), CLOSE-WAIT, FIN-WAIT-2, SYN-SENT over
    IPv4, IPv6 and IPv4-mapped IPv6, all on loopback inside `netns`."""
    listener = netns.listen("127.0.0.1", 8080)
    time_wait_pairs(netns, listener, 5)  # 5 outbound TIME-WAIT
    server_closes_first(netns, listener, 3)  # 3 inbound TIME-WAIT on 127.0.0.1:8080
    connect(netns, "", ("127.0.0.1", 8080))  # ESTABLISHED pair
    netns.held.append(listener.accept()[0])
    half = connect(netns, "", ("127.0.0.1", 8080))  # FIN-WAIT-2 / CLOSE-WAIT
    netns.held.append(listener.accept()[0])
    half.close()
    netns.held.remove(half)
    full = netns.listen("127.0.0.3", 9000, backlog=0)  # accept queue holds one
    connect(netns, "", ("127.0.0.3", 9000))
    syn_sent(netns, ("127.0.0.3", 9000))  # its SYN is dropped: queue full
    del full
    v6 = netns.listen("::1", 8443, family=socket.AF_INET6)
    time_wait_pairs(netns, v6, 2, family=socket.AF_INET6)
    mapped = netns.listen("::", 8081, family=socket.AF_INET6, v6only=False)
    connect(netns, "", ("127.0.0.1", 8081))
    netns.held.append(mapped.accept()[0])


@contextmanager
def unnamed_namespace(script: str = "") -> Iterator[subprocess.Popen[str]]:
    """A namespace kept alive only by a process (`unshare -n`), with lo up, tcp_rfc1337=1
    and tcp_tw_reuse=0. `script` (Python) runs inside before "ready" is printed; the
    process then waits for stdin to close, so its sockets live as long as the context."""
    program = (
        "import subprocess, sys\n"
        "subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)\n"
        "for key in ('tcp_rfc1337', 'tcp_tw_reuse'):\n"
        "    open(f'/proc/sys/net/ipv4/{key}', 'w').write('1' if key == 'tcp_rfc1337' else '0')\n"
        f"{script}\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    process = subprocess.Popen(
        ["unshare", "-n", sys.executable, "-c", program],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"unshare -n process failed (exit {process.wait()})")
        yield process
    finally:
        process.kill()
        process.wait()
