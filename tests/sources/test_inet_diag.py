"""Decoder tests on recorded dumps, cross-checked against pyroute2's decoder."""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
from pyroute2.netlink.diag import inet_diag_msg

from exporter.sources.inet_diag import (
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    SOCK_DIAG_BY_FAMILY,
    DiagProtocolError,
    build_request,
    decode_batch,
    find_records,
    port_filter_bytecode,
)

DUMPS = Path(__file__).parent.parent / "fixtures" / "sockdiag"
NAMES = ["ipv4-listen", "ipv4-other", "ipv6-listen", "ipv6-other"]


def load(name: str) -> tuple[bytearray, int, int]:
    meta = json.loads((DUMPS / f"{name}.json").read_text())
    return bytearray((DUMPS / f"{name}.bin").read_bytes()), meta["seq"], meta["pid"]


def reference(data: bytes) -> list[tuple[int, int, str, int, str, int]]:
    """pyroute2's decoding of the same bytes: (family, state, src, sport, dst, dport)."""
    rows = []
    off = 0
    while off < len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if kind == SOCK_DIAG_BY_FAMILY:
            msg = inet_diag_msg(data[off : off + length])
            msg.decode()
            rows.append(
                (
                    msg["idiag_family"],
                    msg["idiag_state"],
                    msg["idiag_src"],
                    msg["idiag_sport"],
                    msg["idiag_dst"],
                    msg["idiag_dport"],
                )
            )
        off += (length + 3) & ~3
    return rows


def ours(
    data: bytearray, seq: int, pid: int
) -> tuple[list[tuple[int, int, str, int, str, int]], bool]:
    batch, end = decode_batch(memoryview(data), len(data), seq, pid)
    rows = []
    for i in range(len(batch)):
        family = int(batch.family[i])
        size = 4 if family == socket.AF_INET else 16
        src = str(ipaddress.ip_address(batch.src[i].astype("<u4").tobytes()[:size]))
        dst = str(ipaddress.ip_address(batch.dst[i].astype("<u4").tobytes()[:size]))
        rows.append(
            (family, int(batch.state[i]), src, int(batch.sport[i]), dst, int(batch.dport[i]))
        )
    return rows, end.done


@pytest.mark.parametrize("name", NAMES)
def test_decoder_matches_pyroute2(name: str) -> None:
    data, seq, pid = load(name)
    rows, done = ours(data, seq, pid)
    expected = reference(bytes(data))
    assert done
    assert rows == [
        (f, s, str(ipaddress.ip_address(src)), sp, str(ipaddress.ip_address(dst)), dp)
        for f, s, src, sp, dst, dp in expected
    ]
    assert len(rows) > 0


def test_recorded_dump_counts_match_ss_output() -> None:
    """The recording's own `ss -tan` listing agrees with what we decode from it."""
    decoded = sum(len(ours(*load(name))[0]) for name in NAMES)
    ss_lines = (DUMPS / "ss-tan.txt").read_text().splitlines()[1:]
    assert decoded == len(ss_lines) == 23


def test_fast_path_and_walk_agree_when_payload_mimics_a_header() -> None:
    """A record whose payload contains our (seq, pid) pattern breaks the fast path's
    chain check; the fallback walk must give the same records."""
    data, seq, pid = load("ipv4-other")
    first_len = struct.unpack_from("=I", data, 0)[0]
    # idiag_inode of the first record (last u32 of inet_diag_msg) and the u32 before it
    # (idiag_uid) become seq, pid: a fake header candidate inside the payload.
    struct.pack_into("=II", data, 16 + 64, seq, pid)
    offsets = find_records(memoryview(data), len(data), seq, pid)
    assert offsets[0] == 0 and offsets[1] == first_len
    rows, done = ours(data, seq, pid)
    assert done and len(rows) == len(reference(bytes(data)))


def test_several_dumps_concatenated_decode_as_one_batch() -> None:
    data, seq, pid = load("ipv4-other")
    body = data[:-20]  # drop NLMSG_DONE
    twice = bytearray(body + body + data[-20:])
    rows, done = ours(twice, seq, pid)
    assert done and len(rows) == 2 * len(reference(bytes(data)))


def header(length: int, kind: int, flags: int, seq: int, pid: int) -> bytes:
    return NLMSG_HDR.pack(length, kind, flags, seq, pid)


def test_nlmsg_error_is_reported_with_errno() -> None:
    request = build_request(socket.AF_INET, 0xFFE, 7)
    body = struct.pack("=i", -errno.EPERM) + request[:16]
    data = bytearray(header(16 + len(body), NLMSG_ERROR, 0, 7, 99) + body)
    with pytest.raises(DiagProtocolError, match="NLMSG_ERROR 1") as info:
        decode_batch(memoryview(data), len(data), 7, 99)
    assert info.value.errno == errno.EPERM


def test_done_carrying_an_error_is_reported() -> None:
    data = bytearray(header(20, NLMSG_DONE, 2, 7, 99) + struct.pack("=i", -errno.EINTR))
    with pytest.raises(DiagProtocolError, match="dump ended with error 4") as info:
        decode_batch(memoryview(data), len(data), 7, 99)
    assert info.value.errno == errno.EINTR


def test_dump_intr_flag_is_surfaced() -> None:
    data, seq, pid = load("ipv4-other")
    flags = struct.unpack_from("=H", data, 6)[0]
    struct.pack_into("=H", data, 6, flags | NLM_F_DUMP_INTR)
    _, end = decode_batch(memoryview(data), len(data), seq, pid)
    assert end.interrupted and end.done


def test_unexpected_message_type_is_an_error() -> None:
    data, seq, pid = load("ipv4-other")
    struct.pack_into("=H", data, 4, 16)  # RTM_NEWLINK in a sock_diag dump
    with pytest.raises(DiagProtocolError, match="unexpected netlink message type 16"):
        decode_batch(memoryview(data), len(data), seq, pid)


def test_messages_after_done_are_an_error() -> None:
    data, seq, pid = load("ipv4-listen")
    doubled = bytearray(data + data)
    with pytest.raises(DiagProtocolError, match="after NLMSG_DONE"):
        decode_batch(memoryview(doubled), len(doubled), seq, pid)


@pytest.mark.parametrize("cut", [3, 17, 50, 95])
def test_truncated_reply_is_an_error(cut: int) -> None:
    data, seq, pid = load("ipv4-other")
    with pytest.raises(DiagProtocolError):
        decode_batch(memoryview(data), cut, seq, pid)


def test_record_too_short_for_inet_diag_msg() -> None:
    data = bytearray(header(40, SOCK_DIAG_BY_FAMILY, 2, 7, 99) + bytes(24))
    data += header(20, NLMSG_DONE, 2, 7, 99) + bytes(4)
    with pytest.raises(DiagProtocolError, match="shorter"):
        decode_batch(memoryview(data), len(data), 7, 99)


def test_binary_garbage_is_an_error_not_a_crash() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        data = bytearray(
            rng.integers(0, 256, size=int(rng.integers(1, 400)), dtype=np.uint8).tobytes()
        )
        try:
            batch, _ = decode_batch(memoryview(data), len(data), 7, 99)
        except DiagProtocolError:
            continue
        assert len(batch) >= 0


def test_request_layout() -> None:
    """inet_diag_req_v2 (include/uapi/linux/inet_diag.h) is 56 bytes; with the header 72."""
    request = build_request(socket.AF_INET6, 0x40, 123)
    assert len(request) == 72
    length, kind, flags, seq, pid = NLMSG_HDR.unpack_from(request)
    assert (length, kind, seq, pid) == (72, SOCK_DIAG_BY_FAMILY, 123, 0)
    assert flags == 0x301  # NLM_F_REQUEST | NLM_F_DUMP
    family, protocol, ext, states = struct.unpack_from("=BBBxI", request, 16)
    assert (family, protocol, ext, states) == (socket.AF_INET6, socket.IPPROTO_TCP, 0, 0x40)


def test_short_nlmsg_error_is_an_error_not_a_crash() -> None:
    data = bytearray(header(16, NLMSG_ERROR, 0, 7, 99))
    with pytest.raises(DiagProtocolError, match="too short"):
        decode_batch(memoryview(data), len(data), 7, 99)


def test_port_filter_program_layout() -> None:
    """(sport >= 40000 and sport <= 40999) or sport = 80 or sport = 443, as ss compiles it:
    every "yes" steps to the next op; failures jump to the next test or to end + 4."""
    program = port_filter_bytecode(40000, 40999, (443, 80, 40500))
    ops = [struct.unpack_from("=BBH", program, i) for i in range(0, len(program), 4)]
    assert len(program) == 56  # 40500 lies in the range: not tested twice
    assert ops == [
        (2, 8, 20), (0, 0, 40000), (3, 8, 12), (0, 0, 40999), (1, 4, 40),
        (2, 8, 20), (0, 0, 80), (3, 8, 12), (0, 0, 80), (1, 4, 20),
        (2, 8, 20), (0, 0, 443), (3, 8, 12), (0, 0, 443),
    ]  # fmt: skip
