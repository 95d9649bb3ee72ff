"""Pure encode/decode of NETLINK_SOCK_DIAG inet_diag messages (no I/O).

Layouts follow include/uapi/linux/inet_diag.h and include/uapi/linux/netlink.h:

    struct nlmsghdr      { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }       16 bytes
    struct inet_diag_msg { u8 family, state, timer, retrans;
                           struct inet_diag_sockid { be16 sport, dport; be32 src[4], dst[4];
                                                     u32 if; u32 cookie[2]; };
                           u32 expires, rqueue, wqueue, uid, inode; }            72 bytes

A dump reply is a run of such records, each followed by netlink attributes we do not
read (as root a TIME-WAIT record is 96 bytes: the kernel adds INET_DIAG_MARK). The hot
path never builds a Python object per socket: `decode_batch` finds every record of a
receive buffer with a handful of numpy operations and returns column arrays.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

NETLINK_SOCK_DIAG = 4
TCPDIAG_GETSOCK = 18  # the original inet_diag request (include/uapi/linux/inet_diag.h)
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_DUMP_INTR = 0x10  # the dump was interrupted by a table change: inconsistent
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH

NLMSG_HDR = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid (48 bytes).
INET_DIAG_REQ_V2 = struct.Struct("=BBBxI48s")
# inet_diag_req (the compat request): family, src_len, dst_len, ext, inet_diag_sockid,
# states, dbs.
INET_DIAG_REQ = struct.Struct("=BBBB48sII")
ERRNO = struct.Struct("=i")

# Kernel TCP states (include/net/tcp_states.h), named as `ss` names them, snake_case.
TCP_STATES: dict[int, str] = {
    1: "established",
    2: "syn_sent",
    3: "syn_recv",
    4: "fin_wait1",
    5: "fin_wait2",
    6: "time_wait",
    7: "close",
    8: "close_wait",
    9: "last_ack",
    10: "listen",
    11: "closing",
}
TCP_LISTEN = 10
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
ALL_STATES = sum(1 << s for s in TCP_STATES)  # 0xffe, TCPF_* bits
# What a dump can return: a socket that reaches TCP_CLOSE leaves the hash tables at once
# (tcp_set_state → unhash, net/ipv4/tcp.c), and the tables are all a dump walks.
REPORTED_STATES = {state: name for state, name in TCP_STATES.items() if state != TCP_CLOSE}
FAMILIES: dict[int, str] = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}

# Offsets inside one record (nlmsghdr + inet_diag_msg).
OFF_FAMILY = 16  # family, state, timer, retrans, then sport, dport at 20
OFF_DST = 40  # src at 24, dst at 40, 16 bytes each
MIN_RECORD = NLMSG_HDR.size + 72


class DiagProtocolError(Exception):
    """The kernel answered an error, or something a sock_diag dump should not contain."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class DumpInterrupted(Exception):
    """NLM_F_DUMP_INTR: the socket tables changed during the dump (retry once)."""


def build_request(family: int, states: int, seq: int, bytecode: bytes = b"") -> bytes:
    """One SOCK_DIAG_BY_FAMILY dump request for TCP sockets of `family` in `states`
    (TCPF_* bitmask). No extensions are requested (idiag_ext = 0), so records stay small.
    `bytecode`, when given, is an INET_DIAG_REQ_BYTECODE filter program (see
    `port_filter_bytecode`)."""
    body = INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 0, states, b"\0" * 48)
    return _request(SOCK_DIAG_BY_FAMILY, body, seq, bytecode)


def build_compat_request(states: int, seq: int, bytecode: bytes = b"") -> bytes:
    """One TCPDIAG_GETSOCK dump request: TCP sockets of *both* families in `states`.

    The kernel serves it with req.sdiag_family = AF_UNSPEC (inet_diag_dump_compat in
    net/ipv4/inet_diag.c), so one walk of the established hash returns IPv4 and IPv6
    sockets alike. SOCK_DIAG_BY_FAMILY needs one request, hence one walk of the whole
    table, per family; with the host's shared hash that walk costs the same whatever the
    namespace holds, so this halves the cost of every namespace's dump. Replies carry
    nlmsg_type TCPDIAG_GETSOCK and the same inet_diag_msg records."""
    body = INET_DIAG_REQ.pack(0, 0, 0, 0, b"\0" * 48, states, 0)
    return _request(TCPDIAG_GETSOCK, body, seq, bytecode)


def _request(kind: int, body: bytes, seq: int, bytecode: bytes) -> bytes:
    if bytecode:
        attr_len = 4 + len(bytecode)
        body += struct.pack("=HH", attr_len, 1) + bytecode  # INET_DIAG_REQ_BYTECODE = 1
        body += b"\0" * (-attr_len % 4)
    length = NLMSG_HDR.size + len(body)
    return NLMSG_HDR.pack(length, kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


# Filter program ops (include/uapi/linux/inet_diag.h, struct inet_diag_bc_op).
BC_OP = struct.Struct("=BBH")  # code, yes (u8 jump when true), no (u16 jump when false)
INET_DIAG_BC_JMP = 1
INET_DIAG_BC_S_GE = 2
INET_DIAG_BC_S_LE = 3


# The program travels in one netlink attribute, whose u16 nla_len counts its 4-byte header;
# its jump offsets are u16 as well.
MAX_PROGRAM = 0xFFFF - 4


def port_filter_bytecode(low: int, high: int, ports: tuple[int, ...]) -> bytes:
    """A program accepting sockets whose local port is in [low, high] or in `ports`, or b""
    (no filter: the caller filters) when it would not fit in MAX_PROGRAM bytes.

    Laid out as `ss` compiles an OR chain (misc/ss.c, ssfilter_bytecompile): each test
    falls through on success into a JMP to the end (accept), and jumps to the next test
    on failure; the last test's failure jumps to end + 4 (reject). "yes" always steps to
    the next op, as inet_diag_bc_audit (net/ipv4/inet_diag.c) walks that chain. A port
    test is S_GE then S_LE (S_EQ needs 4.16+), each op followed by a word holding the port;
    consecutive ports share one test.
    """
    tests = [(low, high)]
    for port in sorted(set(ports)):
        if low <= port <= high:
            continue
        if len(tests) > 1 and port == tests[-1][1] + 1:
            tests[-1] = (tests[-1][0], port)
        else:
            tests.append((port, port))
    block = 8 + 8 + 4  # S_GE + port, S_LE + port, JMP
    total = block * len(tests) - 4  # the last test needs no JMP: falling through accepts
    if total > MAX_PROGRAM:
        return b""
    program = b""
    for index, (first, last) in enumerate(tests):
        here = index * block
        is_last = index == len(tests) - 1
        fail = total + 4 - here if is_last else block  # reject, or the next test
        program += BC_OP.pack(INET_DIAG_BC_S_GE, 8, fail) + BC_OP.pack(0, 0, first)
        program += BC_OP.pack(INET_DIAG_BC_S_LE, 8, fail - 8) + BC_OP.pack(0, 0, last)
        if not is_last:
            program += BC_OP.pack(INET_DIAG_BC_JMP, 4, total - (here + 16))
    return program


@dataclass(frozen=True, slots=True)
class Batch:
    """Column view of every socket record in one receive buffer (all arrays length n).

    Addresses are the kernel's four 32-bit words per address (network byte order in
    memory, as in inet_diag_sockid.idiag_src/dst); an IPv4 address is word 0.
    """

    family: npt.NDArray[np.uint8]
    state: npt.NDArray[np.uint8]
    sport: npt.NDArray[np.uint16]  # host order
    dport: npt.NDArray[np.uint16]
    src: npt.NDArray[np.uint32]  # shape (n, 4)
    dst: npt.NDArray[np.uint32]

    def __len__(self) -> int:
        return int(self.state.shape[0])


@dataclass(frozen=True, slots=True)
class BatchEnd:
    """What followed the records: whether NLMSG_DONE was seen and the dump's flags."""

    done: bool
    interrupted: bool


def _walk_offsets(buf: memoryview, length: int) -> list[int]:
    """Slow, obviously-correct walk of nlmsghdr lengths (the fallback path)."""
    offsets: list[int] = []
    off = 0
    while off < length:
        if length - off < NLMSG_HDR.size:
            raise DiagProtocolError(f"truncated netlink header at offset {off} of {length}")
        msg_len = NLMSG_HDR.unpack_from(buf, off)[0]
        if msg_len < NLMSG_HDR.size or off + msg_len > length:
            raise DiagProtocolError(f"bad nlmsg_len {msg_len} at offset {off} of {length}")
        offsets.append(off)
        off += (msg_len + 3) & ~3  # NLMSG_ALIGN
    return offsets


def find_records(buf: memoryview, length: int, seq: int, pid: int) -> npt.NDArray[np.int64]:
    """Offsets of every netlink message in buf[:length].

    Fast path: every reply header carries our request's seq and port id, so candidate
    starts are the 4-byte-aligned words matching both. The candidates are then proven to
    be the real chain (each start + aligned length == next start, last one ends the
    buffer); a payload that happened to contain the pattern would break the chain, and we
    fall back to walking lengths one by one.
    """
    if length % 4 == 0 and length >= NLMSG_HDR.size:
        words = np.frombuffer(buf, dtype=np.uint32, count=length // 4)
        hits = np.flatnonzero(words[2:-1] == seq)
        hits = hits[words[hits + 3] == pid]
        if hits.size and hits[0] == 0:
            starts: npt.NDArray[np.int64] = hits.astype(np.int64) * 4
            lens = words[hits].astype(np.int64)
            ends = starts + ((lens + 3) & ~3)
            if (
                ends[-1] == length
                and bool(np.all(ends[:-1] == starts[1:]))
                and bool(np.all(lens >= NLMSG_HDR.size))
            ):
                return starts
    return np.asarray(_walk_offsets(buf, length), dtype=np.int64)


def decode_batch(
    buf: memoryview, length: int, seq: int, pid: int, record_type: int = SOCK_DIAG_BY_FAMILY
) -> tuple[Batch, BatchEnd]:
    """Decode one or more whole receive buffers of a dump reply whose records have
    nlmsg_type `record_type` (that of the request).

    Raises DiagProtocolError on NLMSG_ERROR, a DONE carrying an error, a record too
    short for inet_diag_msg, or a message type a sock_diag dump never sends.
    """
    offsets = find_records(buf, length, seq, pid)
    # nlmsghdr words 0 and 1, host order: nlmsg_len, then nlmsg_type | nlmsg_flags << 16.
    host_words = np.frombuffer(buf, dtype=np.uint32, count=length // 4)
    header = host_words[(offsets >> 2)[:, None] + np.arange(2)]
    types = header[:, 1] & 0xFFFF
    flags = header[:, 1] >> 16
    done = False
    data = offsets
    if types.size and not bool(np.all(types == record_type)):
        other = np.flatnonzero(types != record_type)
        first = int(other[0])
        kind = int(types[first])
        off = int(offsets[first])
        if kind == NLMSG_DONE:
            # NLMSG_DONE carries an int: 0, or -errno when the dump failed part-way.
            msg_len = NLMSG_HDR.unpack_from(buf, off)[0]
            if msg_len >= NLMSG_HDR.size + 4:
                err = ERRNO.unpack_from(buf, off + NLMSG_HDR.size)[0]
                if err < 0:
                    raise DiagProtocolError(
                        f"dump ended with error {-err}: {_strerror(-err)}", -err
                    )
            if first != types.size - 1:
                raise DiagProtocolError("messages after NLMSG_DONE")
            done = True
        elif kind == NLMSG_ERROR:
            if NLMSG_HDR.unpack_from(buf, off)[0] < NLMSG_HDR.size + 4:
                raise DiagProtocolError("NLMSG_ERROR too short to hold an error code")
            err = ERRNO.unpack_from(buf, off + NLMSG_HDR.size)[0]
            raise DiagProtocolError(f"kernel returned NLMSG_ERROR {-err}: {_strerror(-err)}", -err)
        else:
            raise DiagProtocolError(f"unexpected netlink message type {kind} in sock_diag dump")
        data = offsets[:first]
        # The kernel flags NLMSG_DONE itself when the dump was inconsistent
        # (nl_dump_check_consistent in netlink_dump): it may be the only one flagged.
        flags = flags[: first + 1]
    if data.size and int(header[: data.size, 0].min()) < MIN_RECORD:
        raise DiagProtocolError(f"inet_diag record shorter than {MIN_RECORD} bytes")
    interrupted = bool(np.any(flags & NLM_F_DUMP_INTR))
    return decode_at(buf, length, data), BatchEnd(done=done, interrupted=interrupted)


def decode_at(buf: memoryview, length: int, data: npt.NDArray[np.int64]) -> Batch:
    """The inet_diag_msg records starting at offsets `data` of buf[:length], checked to
    be whole records by the caller. Also decodes the socket-destroy events
    (exporter/events/table.py), which arrive one record per message."""
    # Gather the 10 words at record offsets 16..56 (family, state, timer, retrans, sport,
    # dport, src[4], dst[4]); records start 4-byte aligned (NLMSG_ALIGN).
    words = np.frombuffer(buf, dtype="<u4", count=length // 4)
    fields = words[(data >> 2)[:, None] + np.arange(OFF_FAMILY // 4, OFF_DST // 4 + 4)]
    head = fields[:, 0]
    ports = fields[:, 1].byteswap()  # sport, dport: big-endian u16 pair
    batch = Batch(
        family=(head & 0xFF).astype(np.uint8),
        state=((head >> 8) & 0xFF).astype(np.uint8),
        sport=(ports >> 16).astype(np.uint16),
        dport=(ports & 0xFFFF).astype(np.uint16),
        src=fields[:, 2:6],
        dst=fields[:, 6:10],
    )
    return batch


def _strerror(errno_value: int) -> str:
    try:
        return os.strerror(errno_value)
    except (ValueError, OverflowError):  # -INT_MIN does not fit a C int
        return "unknown error"
