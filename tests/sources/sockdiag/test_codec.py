"""Decoder tests on recorded dumps, cross-checked against pyroute2's decoder."""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.diag import inet_diag_msg

from exporter.sources.sockdiag.codec import (
    MAX_PROGRAM,
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    SOCK_DIAG_BY_FAMILY,
    TCPDIAG_GETSOCK,
    DiagProtocolError,
    DumpInterrupted,
    _walk_offsets,
    build_compat_request,
    build_request,
    decode_batch,
    find_records,
    port_filter_bytecode,
)
from exporter.sources.sockdiag.dump import _ends_dump
from tests.bytecode import audit, run_program
from tests.fuzzing import FUZZ, mutated

DUMPS = Path(__file__).resolve().parents[2] / "fixtures" / "sockdiag"
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
    """Random bytes: a header too short, or a random nlmsg_len that does not fit the
    buffer (a chance of about 400 in 2**32 per input), so every one is rejected."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        data = bytearray(
            rng.integers(0, 256, size=int(rng.integers(1, 400)), dtype=np.uint8).tobytes()
        )
        with pytest.raises(DiagProtocolError, match=r"truncated netlink header|bad nlmsg_len"):
            decode_batch(memoryview(data), len(data), 7, 99)


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


# -- property tests (hypothesis); fuzz/targets.py runs the same code under atheris --------

U32 = st.integers(0, 2**32 - 1)
ALLOWED = (DiagProtocolError, DumpInterrupted)


Fields = tuple[int, int, int, int, bytes, bytes]  # family, state, sport, dport, src, dst


@st.composite
def diag_records(draw: st.DrawFn) -> tuple[bytes, Fields]:
    """The payload of one inet_diag_msg record (attributes after it), and its fields."""
    family = draw(st.sampled_from([socket.AF_INET, socket.AF_INET6]) | st.integers(0, 255))
    state = draw(st.integers(1, 11) | st.integers(0, 255))
    sport, dport = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
    src, dst = draw(st.binary(min_size=16, max_size=16)), draw(st.binary(min_size=16, max_size=16))
    body = struct.pack("=BBBB", family, state, draw(st.integers(0, 4)), 0)
    body += struct.pack(">HH", sport, dport) + src + dst
    body += struct.pack(
        "=I8sIIIII", 0, draw(st.binary(min_size=8, max_size=8)), *(draw(U32) for _ in range(5))
    )
    body += draw(st.binary(max_size=24))  # attributes (INET_DIAG_MARK, ...); maybe unaligned
    return body, (family, state, sport, dport, src, dst)


@st.composite
def diag_dumps(draw: st.DrawFn) -> tuple[bytes, int, int, int, list[Fields], bool]:
    """A dump reply stream: records of the request's type, then NLMSG_DONE."""
    seq, pid = draw(U32), draw(U32)
    kind = draw(st.sampled_from([SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK]))
    data, interrupted = b"", False
    fields: list[Fields] = []
    for body, record in draw(st.lists(diag_records(), max_size=12)):
        flags = NLM_F_MULTI | (NLM_F_DUMP_INTR if draw(st.integers(0, 9)) == 0 else 0)
        interrupted |= bool(flags & NLM_F_DUMP_INTR)
        message = header(16 + len(body), kind, flags, seq, pid) + body
        data += message + b"\0" * (-len(message) % 4)
        fields.append(record)
    done_flags = NLM_F_MULTI | (NLM_F_DUMP_INTR if draw(st.booleans()) else 0)
    interrupted |= bool(done_flags & NLM_F_DUMP_INTR)
    data += header(20, NLMSG_DONE, done_flags, seq, pid) + struct.pack("=i", 0)
    return data, seq, pid, kind, fields, interrupted


@FUZZ
@given(diag_dumps())
def test_generated_dump_decodes_to_exactly_its_fields(
    dump: tuple[bytes, int, int, int, list[Fields], bool],
) -> None:
    data, seq, pid, kind, fields, interrupted = dump
    batch, end = decode_batch(memoryview(data), len(data), seq, pid, kind)
    assert end.done and end.interrupted == interrupted
    decoded = [
        (
            int(batch.family[i]),
            int(batch.state[i]),
            int(batch.sport[i]),
            int(batch.dport[i]),
            batch.src[i].astype("<u4").tobytes(),
            batch.dst[i].astype("<u4").tobytes(),
        )
        for i in range(len(batch))
    ]
    assert decoded == fields
    if kind == SOCK_DIAG_BY_FAMILY and all(
        f[0] in (socket.AF_INET, socket.AF_INET6) for f in fields
    ):
        expected = [
            (f, s, sp, dp, ipaddress.ip_address(a[: 4 if f == socket.AF_INET else 16]))
            for f, s, sp, dp, a, _ in fields
        ]
        assert [
            (f, s, sp, dp, ipaddress.ip_address(src)) for f, s, src, sp, _, dp in reference(data)
        ] == expected  # pyroute2 agrees


def offsets_both_ways(data: bytes, seq: int, pid: int) -> tuple[object, object]:
    outcomes = []
    for find in (
        lambda: find_records(memoryview(data), len(data), seq, pid).tolist(),
        lambda: _walk_offsets(memoryview(data), len(data)),
    ):
        try:
            outcomes.append(find())
        except DiagProtocolError:
            outcomes.append("error")
    return outcomes[0], outcomes[1]


RECORDED = [load(name)[0] for name in NAMES]


@FUZZ
@given(
    mutated(st.sampled_from([bytes(d) for d in RECORDED]) | diag_dumps().map(lambda d: d[0]))
    | st.binary(max_size=512)
)
def test_mutated_dump_decodes_or_raises_protocol_error(data: bytes) -> None:
    seq, pid = struct.unpack_from("=II", data, 8) if len(data) >= 16 else (7, 99)
    fast, walk = offsets_both_ways(data, seq, pid)
    assert fast == walk  # the fast path finds exactly the messages the walk finds
    for kind in (SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK):
        try:
            batch, _ = decode_batch(memoryview(data), len(data), seq, pid, kind)
        except ALLOWED:
            continue
        assert batch.src.shape == batch.dst.shape == (len(batch), 4)
    for start in (0, len(data) // 2):
        assert _ends_dump(bytearray(data), start, len(data), seq, pid) in (True, False)


@pytest.mark.parametrize("length", [0xFFFFFFFF, 0x80000000, 17, 15])
def test_huge_or_odd_nlmsg_len_is_an_error_without_allocating(length: int) -> None:
    data = bytearray(header(length, SOCK_DIAG_BY_FAMILY, NLM_F_MULTI, 7, 99) + bytes(80))
    tracemalloc.start()
    try:
        with pytest.raises(DiagProtocolError, match="nlmsg_len"):
            decode_batch(memoryview(data), len(data), 7, 99)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_interrupted_flag_on_done_alone_is_surfaced() -> None:
    """Found by the generated-dump property: the kernel may flag only NLMSG_DONE
    (nl_dump_check_consistent(cb, nlh) in netlink_dump), and that flag was dropped."""
    data, seq, pid = load("ipv4-other")
    struct.pack_into("=H", data, len(data) - 20 + 6, NLM_F_MULTI | NLM_F_DUMP_INTR)
    _, end = decode_batch(memoryview(data), len(data), seq, pid)
    assert end.done and end.interrupted


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 65535),
    st.integers(1, 65535),
    st.lists(st.integers(1, 65535), max_size=300) | st.sets(st.integers(1, 9000), min_size=3200),
)
def test_port_filter_accepts_exactly_the_wanted_ports(
    low: int, high: int, ports: list[int]
) -> None:
    """Checked with the kernel's own audit and interpreter (tests/bytecode.py)."""
    low, high = sorted((low, high))
    program = port_filter_bytecode(low, high, tuple(ports))
    if not program:  # too long for one netlink attribute: no filter, the caller filters
        assert len(set(ports)) > MAX_PROGRAM // 20
        return
    assert len(program) <= MAX_PROGRAM and audit(program)
    wanted = set(ports)
    probes = {1, low - 1, low, high, high + 1, 65535} | {p + d for p in wanted for d in (-1, 0, 1)}
    for port in sorted(p for p in probes if 0 <= p <= 65535)[:200]:
        assert run_program(program, port) == (low <= port <= high or port in wanted), port
    build_compat_request(0xFFE, 1, program)  # fits the request's u16 attribute length


def test_port_filter_with_too_many_ports_for_one_attribute() -> None:
    """Found by fuzzing: 3300 separate ports made BC_OP.pack raise struct.error (a jump
    offset past u16); consecutive ports now share a test, and a program that still does not
    fit is b"" (no filter)."""
    assert audit(port_filter_bytecode(40000, 60999, tuple(range(1, 4000))))
    assert port_filter_bytecode(40000, 60999, tuple(range(1, 8000, 2))) == b""


@pytest.mark.parametrize(
    "data",
    [
        # fuzz/targets.py netlink: NLMSG_ERROR carrying INT_MIN
        "1400000002000000000207003f00000000000080",
        # fuzz/targets.py tally (the netlink part): NLMSG_DONE carrying INT_MIN
        "1400000003000200070000006300000000000080",
    ],
)
def test_error_code_int_min_is_a_protocol_error(data: str) -> None:
    """Found by atheris: -(-2**31) does not fit os.strerror's C int, and OverflowError
    escaped from _strerror, which caught ValueError only."""
    raw = bytearray.fromhex(data)
    seq, pid = struct.unpack_from("=II", raw, 8)
    with pytest.raises(DiagProtocolError, match="unknown error") as info:
        decode_batch(memoryview(raw), len(raw), seq, pid)
    assert info.value.errno == 2**31
