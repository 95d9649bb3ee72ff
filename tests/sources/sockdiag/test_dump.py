"""The dump's receive path against a fake netlink socket that replays recorded bytes: the
normal dump (small, read on the calling thread; large, through the pipeline), an
interrupted dump (NLM_F_DUMP_INTR) and its retry on a fresh socket, ENOBUFS, truncated and
malformed messages, a kernel error, a kernel without IPv6, and that no receiver thread
outlives a dump on any of these paths."""

from __future__ import annotations

import errno
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyroute2.netlink.diag import inet_diag_msg

from exporter.config import Config
from exporter.sources.declare import Handle, NetnsPoll, Opener
from exporter.sources.sockdiag.buckets import BucketOptions
from exporter.sources.sockdiag.capacity import PortPolicy
from exporter.sources.sockdiag.codec import (
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    SOCK_DIAG_BY_FAMILY,
    TCP_LISTEN,
    TCP_STATES,
    TCPDIAG_GETSOCK,
    DiagProtocolError,
    DumpInterrupted,
)
from exporter.sources.sockdiag.dump import SYNC_BYTES, DiagSocket, dump_all, new_buffers
from exporter.sources.sockdiag.source import DIAG, read_sockdiag
from exporter.sources.sockdiag.tally import SocketTally

DUMPS = Path(__file__).resolve().parents[2] / "fixtures" / "sockdiag"
PID = 4242
SKB = 32 << 10  # the kernel's largest dump skb


def recorded(name: str) -> list[bytes]:
    """The records of a recorded SOCK_DIAG_BY_FAMILY dump, NLMSG_DONE left out."""
    data = (DUMPS / f"{name}.bin").read_bytes()
    records, off = [], 0
    while off < len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if kind == SOCK_DIAG_BY_FAMILY:
            records.append(data[off : off + length] + b"\0" * (-length % 4))
        off += (length + 3) & ~3
    return records


LISTENERS = recorded("ipv4-listen") + recorded("ipv6-listen")
OTHERS = recorded("ipv4-other") + recorded("ipv6-other")


def states_of(records: list[bytes]) -> Counter[tuple[int, int]]:
    """(family, state) counts as pyroute2 decodes the same records: the reference."""
    counts: Counter[tuple[int, int]] = Counter()
    for raw in records:
        msg = inet_diag_msg(raw)
        msg.decode()
        counts[(msg["idiag_family"], msg["idiag_state"])] += 1
    return counts


def header(length: int, kind: int, flags: int, seq: int) -> bytes:
    return NLMSG_HDR.pack(length, kind, flags, seq, PID)


def reply(records: list[bytes], seq: int, flags: int = NLM_F_MULTI) -> list[bytes]:
    """The skbs the kernel sends for a compat request: records re-headed with the request's
    type, seq and port id, at most 32 KiB each, then NLMSG_DONE in an skb of its own."""
    skbs, chunk = [], b""
    for raw in records:
        length = struct.unpack_from("=I", raw)[0]
        message = header(length, TCPDIAG_GETSOCK, flags, seq) + raw[16:]
        if len(chunk) + len(message) > SKB:
            skbs.append(chunk)
            chunk = b""
        chunk += message
    if chunk:
        skbs.append(chunk)
    skbs.append(header(20, NLMSG_DONE, NLM_F_MULTI, seq) + struct.pack("=i", 0))
    return skbs


Script = Callable[[int, int], list[bytes | BaseException]]  # (request number, seq) → replies


@dataclass
class FakeNetlink:
    """Stands in for the NETLINK_SOCK_DIAG socket: answers each request from `script`."""

    script: Script
    pending: list[bytes | BaseException] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    closed: bool = False

    def setsockopt(self, *args: object) -> None:
        pass

    def bind(self, address: object) -> None:
        pass

    def getsockname(self) -> tuple[int, int]:
        return (PID, 0)

    def send(self, request: bytes) -> int:
        length, kind, _, seq, _ = NLMSG_HDR.unpack_from(request)
        assert kind == TCPDIAG_GETSOCK and length == len(request)
        self.pending = self.script(len(self.requests), seq)
        self.requests.append(request)
        return len(request)

    def recvmsg_into(self, buffers: list[memoryview]) -> tuple[int, list[object], int, int]:
        if not self.pending:  # the real socket would wait SO_RCVTIMEO, then time out
            raise TimeoutError(errno.EAGAIN, "Resource temporarily unavailable")
        item = self.pending.pop(0)
        if isinstance(item, BaseException):
            raise item
        (window,) = buffers
        n = min(len(item), len(window))
        window[:n] = item[:n]
        return n, [], socket.MSG_TRUNC if n < len(item) else 0, 0

    def close(self) -> None:
        self.closed = True


def fake_diag(script: Script) -> DiagSocket:
    return DiagSocket(sock=FakeNetlink(script))  # type: ignore[arg-type]


def normal(records_for: Callable[[int], list[bytes]]) -> Script:
    return lambda n, seq: list(reply(records_for(n), seq))


def listeners_then(others: list[bytes]) -> Callable[[int], list[bytes]]:
    return lambda n: LISTENERS if n % 2 == 0 else others


def no_receiver_left() -> bool:
    return not [t for t in threading.enumerate() if t.name == "sockdiag-recv" and t.is_alive()]


def tally_of(diag: DiagSocket) -> SocketTally:
    tally = SocketTally(PortPolicy((40000, 40999), (), 0, 1), BucketOptions())
    dump_all(diag, tally, new_buffers())
    return tally


@pytest.mark.parametrize("copies", [1, 600])  # one skb or two; 1.2 MB through the pipeline
def test_replayed_dump_counts_what_pyroute2_decodes(copies: int) -> None:
    others = OTHERS * copies
    assert (sum(map(len, others)) > SYNC_BYTES) == (copies > 1)
    stats = tally_of(fake_diag(normal(listeners_then(others)))).result(())
    expected = states_of(LISTENERS) + states_of(others)
    names: dict[int, str] = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
    ours = {(f, s): n for (f, s), n in stats.states.items() if n}
    assert ours == {(names[f], TCP_STATES[s]): n for (f, s), n in expected.items()}
    assert expected[(socket.AF_INET, TCP_LISTEN)] > 0 and expected[(socket.AF_INET6, 6)] > 0
    assert no_receiver_left()


@pytest.mark.parametrize("copies", [1, 600])
def test_interrupted_dump_raises_and_every_thread_ends(copies: int) -> None:
    def script(n: int, seq: int) -> list[bytes | BaseException]:
        if n == 0:
            return list(reply(LISTENERS, seq))
        return list(reply(OTHERS * copies, seq, NLM_F_MULTI | NLM_F_DUMP_INTR))

    with pytest.raises(DumpInterrupted):
        tally_of(fake_diag(script))
    assert no_receiver_left()


@pytest.mark.parametrize("copies", [1, 600])
def test_enobufs_is_an_interrupted_dump(copies: int) -> None:
    def script(n: int, seq: int) -> list[bytes | BaseException]:
        skbs: list[bytes | BaseException] = list(
            reply(LISTENERS if n == 0 else OTHERS * copies, seq)
        )
        if n == 1:
            skbs.insert(len(skbs) // 2, OSError(errno.ENOBUFS, "No buffer space available"))
        return skbs

    with pytest.raises(DumpInterrupted, match="overrun"):
        tally_of(fake_diag(script))
    assert no_receiver_left()


def test_a_message_cut_short_is_a_protocol_error() -> None:
    def script(n: int, seq: int) -> list[bytes | BaseException]:
        skbs = reply(OTHERS, seq)
        return [skbs[0][:-30], *skbs[1:]]  # the last record's bytes end early

    with pytest.raises(DiagProtocolError):
        tally_of(fake_diag(script))
    assert no_receiver_left()


def test_a_reply_larger_than_the_window_is_refused() -> None:
    with pytest.raises(DiagProtocolError, match="truncated"):
        tally_of(fake_diag(lambda n, seq: [b"\0" * (128 << 10)]))
    assert no_receiver_left()


@pytest.mark.parametrize("copies", [1, 600])
def test_an_unexpected_message_type_is_a_protocol_error(copies: int) -> None:
    def script(n: int, seq: int) -> list[bytes | BaseException]:
        skbs: list[bytes | BaseException] = list(reply(OTHERS * copies, seq))
        skbs.insert(1, header(20, 0x55, NLM_F_MULTI, seq) + b"\0\0\0\0")
        return skbs

    with pytest.raises(DiagProtocolError, match="unexpected netlink message type 85"):
        tally_of(fake_diag(script))
    assert no_receiver_left()


def test_a_kernel_error_is_reported_with_its_errno() -> None:
    def script(n: int, seq: int) -> list[bytes | BaseException]:
        return [header(36, NLMSG_ERROR, 0, seq) + struct.pack("=i", -errno.EPERM) + bytes(16)]

    with pytest.raises(DiagProtocolError) as error:
        tally_of(fake_diag(script))
    assert error.value.errno == errno.EPERM
    assert no_receiver_left()


@dataclass
class FakeContext:
    """A namespace's descriptors: sockets from `scripts`, one per (re)opening."""

    scripts: list[Script]
    files: dict[str, str]
    opened: int = 0
    diag: DiagSocket | None = None

    def __post_init__(self) -> None:
        self.reopen(DIAG)

    def reopen(self, opener: Opener) -> None:
        assert opener is DIAG
        self.diag = fake_diag(self.scripts[self.opened])
        self.opened += 1

    def handle(self, opener: Opener) -> Handle:
        assert opener is DIAG and self.diag is not None
        return self.diag

    def missing(self, opener: Opener) -> str:
        return ""

    def has_net(self, name: str) -> bool:
        return name in self.files

    def read_net(self, name: str) -> str:
        return self.files[name]

    def read_sysctl(self, name: str) -> str | None:
        return {"ip_local_port_range": "40000\t40999\n"}.get(name)

    def has_sysctls(self) -> bool:
        return True


SOCKSTAT = "TCP: inuse 3 orphan 0 tw 5 alloc 4 mem 1\n"


def poll_of(context: FakeContext) -> NetnsPoll:
    return NetnsPoll("t", context, Config(), {})


def test_an_interrupted_dump_is_redone_once_on_a_fresh_socket() -> None:
    def interrupted(n: int, seq: int) -> list[bytes | BaseException]:
        flags = NLM_F_MULTI | (NLM_F_DUMP_INTR if n == 1 else 0)
        return list(reply(LISTENERS if n == 0 else OTHERS, seq, flags))

    context = FakeContext(
        [interrupted, normal(listeners_then(OTHERS))],
        {"sockstat": SOCKSTAT, "sockstat6": ""},
    )
    stats = read_sockdiag(poll_of(context))
    assert context.opened == 2  # the retry ran on a new socket
    assert sum(stats.states.values()) == len(LISTENERS) + len(OTHERS)
    twice = FakeContext([interrupted, interrupted, interrupted], {"sockstat": SOCKSTAT})
    with pytest.raises(DumpInterrupted):
        read_sockdiag(poll_of(twice))
    assert twice.opened == 3  # retried once, then a fresh socket for the next poll
    assert no_receiver_left()


def test_a_kernel_without_ipv6_has_no_ipv6_series() -> None:
    """No sockstat6 (the kernel has no IPv6): the family is absent, not 0."""
    v4 = recorded("ipv4-other")
    context = FakeContext(
        [normal(lambda n: recorded("ipv4-listen") if n == 0 else v4)], {"sockstat": SOCKSTAT}
    )
    stats = read_sockdiag(poll_of(context))
    assert stats.missing_families == ("ipv6",)
    assert {family for family, _ in stats.states} == {"ipv4"}
    assert sum(stats.states.values()) == len(recorded("ipv4-listen")) + len(v4)


def test_no_tcp_socket_skips_the_dump() -> None:
    def refuse(n: int, seq: int) -> list[bytes | BaseException]:
        raise AssertionError("no dump expected")

    context = FakeContext([refuse], {"sockstat": "TCP: inuse 0 orphan 0 tw 0 alloc 0 mem 0\n"})
    stats = read_sockdiag(poll_of(context))
    assert not stats.dumped and set(stats.states.values()) == {0}


def test_a_kernel_that_never_answers_times_out_as_a_protocol_error(kernel: None) -> None:
    """A real sock_diag socket waiting for replies to a request it never sent (as if the
    kernel hung): recvmsg() ends at SO_RCVTIMEO and the dump fails with a clear error
    instead of blocking the poll."""
    import time

    diag = DiagSocket(recv_timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(DiagProtocolError, match=r"no sock_diag reply within 0.3 s"):
            diag.receive(12345, SocketTally(), new_buffers())
        assert 0.25 <= time.monotonic() - started < 2
    finally:
        diag.close()
