"""atheris (libFuzzer) targets for the netlink decoder and every /proc and /sys parser.

    python fuzz/targets.py NAME [libFuzzer arguments...]    # what fuzz/run.py starts
    python fuzz/targets.py NAME --write-seeds DIR           # its seeds, from tests/fixtures

Each target takes one input and returns normally when the code under test either produced
a result or rejected the input with its own parse error (SourceError, DiagProtocolError,
DumpInterrupted). Any other exception, a broken oracle (AssertionError), a hang past
-timeout or memory past -rss_limit_mb is a finding: libFuzzer writes the input to
<artifact_prefix>crash-<sha1> (or timeout-, oom-) and exits non-zero.

Text parsers see every input twice: through decode_text as the readers do (ASCII, or
SourceError), and decoded leniently (UTF-8, undecodable bytes as lone surrogates), since a
parser takes any str.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import atheris  # type: ignore[import-untyped]  # types-atheris is partial: no FuzzedDataProvider

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Only the exporter's own modules are instrumented (not numpy, not the standard library).
with atheris.instrument_imports(include=["exporter"]):
    from exporter.netns import discovery, pods
    from exporter.sources import SourceError, decode_text, netstat, slab, snmp, sockstat
    from exporter.sources import sysctl as sysctl_source
    from exporter.sources.sockdiag import codec as inet_diag
    from exporter.sources.sockdiag.buckets import BucketOptions
    from exporter.sources.sockdiag.capacity import PortPolicy
    from exporter.sources.sockdiag.codec import DiagProtocolError, DumpInterrupted
    from exporter.sources.sockdiag.dump import _ends_dump
    from exporter.sources.sockdiag.tally import SocketTally

from tests import oracles  # noqa: E402
from tests.bytecode import audit, run_program  # noqa: E402

PARSE_ERRORS = (SourceError,)
NETLINK_ERRORS = (DiagProtocolError, DumpInterrupted)


def texts(data: bytes) -> Iterator[str]:
    """The production decoding (when it succeeds), then the lenient one."""
    with contextlib.suppress(SourceError):
        yield decode_text(data, "input")
    yield data.decode("utf-8", "surrogateescape")


def _header_ids(data: bytes) -> tuple[int, int, int]:
    """(type, seq, pid) of the first header, so that the fast path sees a chain."""
    if len(data) < inet_diag.NLMSG_HDR.size:
        return inet_diag.SOCK_DIAG_BY_FAMILY, 7, 99
    _, kind, _, seq, pid = inet_diag.NLMSG_HDR.unpack_from(data)
    return kind, seq, pid


def decode(data: bytes, record_type: int | None = None) -> inet_diag.Batch | None:
    kind, seq, pid = _header_ids(data)
    try:
        batch, _ = inet_diag.decode_batch(
            memoryview(data), len(data), seq, pid, kind if record_type is None else record_type
        )
    except NETLINK_ERRORS:
        return None
    return batch


def fuzz_netlink(data: bytes) -> None:
    """find_records, decode_batch and the receiver's end-of-dump test on raw bytes."""
    kind, seq, pid = _header_ids(data)
    view = memoryview(data)
    try:
        slow: list[int] | None = inet_diag._walk_offsets(view, len(data))
    except DiagProtocolError:
        slow = None
    try:
        fast = inet_diag.find_records(view, len(data), seq, pid).tolist()
    except DiagProtocolError:
        fast = None
    assert fast == slow, f"fast path {fast} != walk {slow}"
    for record_type in {kind, inet_diag.SOCK_DIAG_BY_FAMILY, inet_diag.TCPDIAG_GETSOCK}:
        batch = decode(data, record_type)
        if batch is not None:
            n = len(batch)
            assert batch.src.shape == batch.dst.shape == (n, 4)
            assert batch.family.shape == batch.sport.shape == batch.dport.shape == (n,)
    for start in (0, len(data) // 2):
        assert isinstance(_ends_dump(bytearray(data), start, len(data), seq, pid), bool)


def fuzz_tally(data: bytes) -> None:
    """Whatever decodes feeds the dump's consumer (state counts, buckets, port capacity).
    The first 8 bytes choose the port range and bucket options; the rest is netlink."""
    if len(data) < 8:
        return
    low, high, v4_prefix, v6_prefix, flags, top = struct.unpack_from("=HHBBBB", data)
    low, high = sorted((max(low, 1), max(high, 1)))
    batch = decode(data[8:])
    if batch is None:
        return
    inbound = frozenset(int(p) for p in batch.sport[:4] if p) if flags & 1 else None
    options = BucketOptions(
        top=top % 8,
        min_sockets=1 + (flags >> 1 & 3),
        ipv4_prefix=v4_prefix % 33,
        ipv6_prefix=v6_prefix % 129,
        inbound_ports=inbound or None,
    )
    tally = SocketTally(PortPolicy((low, high), (), 0, 1), options)
    if tally._buckets is not None and flags & 8:
        tally._buckets.index_limit = 1  # the wide-key path
    half = len(batch) // 2
    parts = [batch, _rows(batch, slice(0, half)), _rows(batch, slice(half, None))]
    for part in parts:
        tally.add(part)
    stats = tally.result(())
    assert stats.states == oracles.state_counts(parts)


def _rows(batch: inet_diag.Batch, rows: slice) -> inet_diag.Batch:
    return inet_diag.Batch(
        batch.family[rows],
        batch.state[rows],
        batch.sport[rows],
        batch.dport[rows],
        batch.src[rows],
        batch.dst[rows],
    )


def fuzz_bytecode(data: bytes) -> None:
    """port_filter_bytecode over its domain (1 <= low <= high <= 65535, ports 1-65535):
    the kernel's audit accepts the program and it accepts exactly the wanted ports."""
    fdp = atheris.FuzzedDataProvider(data)
    low, high = sorted((fdp.ConsumeIntInRange(1, 65535), fdp.ConsumeIntInRange(1, 65535)))
    count = fdp.ConsumeIntInRange(0, 5000)
    ports = tuple(fdp.ConsumeIntInRange(1, 65535) for _ in range(count))
    program = inet_diag.port_filter_bytecode(low, high, ports)
    if not program:  # too large for one attribute: the caller filters
        assert len(set(ports)) > inet_diag.MAX_PROGRAM // 20
        return
    assert len(program) <= inet_diag.MAX_PROGRAM
    assert audit(program), "inet_diag_bc_audit would reject the program"
    wanted = set(ports)
    probes = {0, 1, low - 1, low, high, high + 1, 65535}
    probes |= {p + d for p in list(wanted)[:64] for d in (-1, 0, 1)}
    for port in probes:
        if 0 <= port <= 65535:
            expected = low <= port <= high or port in wanted
            assert run_program(program, port) == expected, f"port {port}"
    request = inet_diag.build_compat_request(inet_diag.ALL_STATES, 1, program)
    assert struct.unpack_from("=I", request)[0] == len(request)


def fuzz_netstat(data: bytes) -> None:
    for text in texts(data):
        try:
            counters = netstat.parse_netstat(text)
        except PARSE_ERRORS:
            continue
        words = oracles.two_line_group(text, "TcpExt")
        assert counters == {name: int(value) for name, value in words.items()}
        assert all(0 <= v < 10**20 for v in counters.values())
        for name in counters:
            netstat.snake_case(name)


def fuzz_snmp(data: bytes) -> None:
    for text in texts(data):
        try:
            values = snmp.parse_snmp_tcp(text)
        except PARSE_ERRORS:
            continue
        row = oracles.two_line_group(text, "Tcp")
        assert values == {name: int(row[name]) for name in snmp.FIELDS if name in row}


def fuzz_sockstat(data: bytes) -> None:
    for text in texts(data):
        try:
            fields = sockstat.parse_sockstat(text)
        except PARSE_ERRORS:
            continue
        assert "inuse" in fields and "tw" in fields


def fuzz_slab(data: bytes) -> None:
    """/proc/slabinfo, and the input's first five lines as the sysfs files of a cache."""
    for text in texts(data):
        with contextlib.suppress(*PARSE_ERRORS):
            assert slab.parse_slabinfo(text, 4096) == oracles.slabinfo_caches(text, 4096)
        lines = [*text.split("\n", len(slab.SYSFS_FILES) - 1), *[""] * len(slab.SYSFS_FILES)]
        files = dict(zip(slab.SYSFS_FILES, lines, strict=False))
        try:
            cache = slab.sysfs_cache("tw_sock_TCP", files, 4096)
        except PARSE_ERRORS:
            continue
        assert cache == oracles.sysfs_cache("tw_sock_TCP", files, 4096)


def fuzz_sysctl(data: bytes) -> None:
    for text in texts(data):
        for parse in (
            lambda t: sysctl_source.parse_int("tcp_tw_reuse", t),
            sysctl_source.parse_port_range,
            sysctl_source.parse_port_list,
        ):
            with contextlib.suppress(*PARSE_ERRORS):
                parse(text)
        try:
            ranges = sysctl_source.parse_port_list(text)
        except PARSE_ERRORS:
            continue
        flat = [port for pair in ranges for port in pair]
        assert flat == sorted(flat) and all(0 <= p <= 65535 for p in flat)
        assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(ranges))


def fuzz_mountinfo(data: bytes) -> None:
    for text in texts(data):
        for inode, mount in discovery.parse_mountinfo(text):
            assert 0 <= inode < 10**20 and isinstance(mount, str)  # at most 20 digits
        discovery.parse_ns_link(text)


def fuzz_pods(data: bytes) -> None:
    for text in texts(data):
        uid = pods.pod_uid_from_cgroup(text)
        assert uid is None or len(uid) in (32, 36)
        pods.parse_pod_log_dir(text)


@dataclass(frozen=True)
class Target:
    fuzz: Callable[[bytes], None]
    seeds: Callable[[], Iterator[tuple[str, bytes]]]  # (name, input) to start the corpus


FIXTURES = ROOT / "tests" / "fixtures"


def _files(*patterns: str) -> Callable[[], Iterator[tuple[str, bytes]]]:
    def seeds() -> Iterator[tuple[str, bytes]]:
        for pattern in patterns:
            for path in sorted(FIXTURES.glob(pattern)):
                if path.is_file():
                    yield "-".join(path.relative_to(FIXTURES).parts), path.read_bytes()

    return seeds


def _tally_seeds() -> Iterator[tuple[str, bytes]]:
    for name, dump in _files("sockdiag/*.bin")():
        yield name, struct.pack("=HHBBBB", 32768, 60999, 32, 128, 0, 5) + dump
        yield f"wide-{name}", struct.pack("=HHBBBB", 1, 65535, 24, 64, 9, 3) + dump


def _bytecode_seeds() -> Iterator[tuple[str, bytes]]:
    yield "empty", b""
    yield "range-and-ports", bytes(range(64))


def _slab_seeds() -> Iterator[tuple[str, bytes]]:
    yield from _files("trees/*/proc/slabinfo", "corrupt/slabinfo-*")()
    for cache in sorted(FIXTURES.glob("trees/*/sys/kernel/slab/*")):
        if (cache / "slabs").is_file():
            lines = [(cache / key).read_bytes().strip() for key in slab.SYSFS_FILES]
            yield f"sysfs-{cache.parent.parent.parent.parent.name}-{cache.name}", b"\n".join(lines)


def _netlink_extra() -> Iterator[tuple[str, bytes]]:
    yield from _files("sockdiag/*.bin")()
    error = struct.pack("=IHHIIi", 20, inet_diag.NLMSG_ERROR, 0, 7, 99, -1)
    yield "nlmsg-error", error + bytes(16)
    yield "done-error", struct.pack("=IHHIIi", 20, inet_diag.NLMSG_DONE, 2, 7, 99, -4)


TARGETS: dict[str, Target] = {
    "netlink": Target(fuzz_netlink, _netlink_extra),
    "tally": Target(fuzz_tally, _tally_seeds),
    "bytecode": Target(fuzz_bytecode, _bytecode_seeds),
    "netstat": Target(fuzz_netstat, _files("trees/*/proc/net/netstat", "corrupt/netstat-*")),
    "snmp": Target(fuzz_snmp, _files("trees/*/proc/net/snmp")),
    "sockstat": Target(fuzz_sockstat, _files("trees/*/proc/net/sockstat*", "corrupt/sockstat-*")),
    "slab": Target(fuzz_slab, _slab_seeds),
    "sysctl": Target(
        fuzz_sysctl,
        _files(
            "trees/*/proc/sys/net/ipv4/*",
            "corrupt/ip_local_*",
            "corrupt/tcp_max_tw_buckets-*",
        ),
    ),
    "mountinfo": Target(fuzz_mountinfo, _files("discovery/mountinfo")),
    "pods": Target(fuzz_pods, _files("discovery/cgroup-*")),
}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [libFuzzer arguments]")
    target = TARGETS[argv[1]]
    if argv[2:3] == ["--write-seeds"]:
        out = Path(argv[3])
        for name, data in target.seeds():
            (out / name).write_bytes(data)
        return
    atheris.Setup([argv[0], *argv[2:]], target.fuzz)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
