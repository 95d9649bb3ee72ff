"""Stream NETLINK_SOCK_DIAG TCP dumps into a consumer, batch by batch.

The kernel fills one dump skb (at most ~32 KiB, net/netlink/af_netlink.c netlink_dump)
per recvmsg(); we receive many of them back to back into one buffer and decode the batch
at once (exporter/sources/inet_diag.py), so memory stays bounded by the buffer whatever
the number of sockets.

Listeners are dumped first, on their own: with only TCPF_LISTEN requested the kernel walks
the listening hash and skips the established hash (net/ipv4/inet_diag.c,
inet_diag_dump_icsk), so this costs O(listeners). The consumer then knows every
bind()-owned listening port before the single pass over all other sockets.
"""

from __future__ import annotations

import errno
import random
import socket
import struct
from typing import Protocol

from exporter.sources.inet_diag import (
    ALL_STATES,
    NETLINK_SOCK_DIAG,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    TCP_LISTEN,
    Batch,
    DiagProtocolError,
    DumpInterrupted,
    build_request,
    decode_batch,
)

BATCH_BYTES = 1 << 20  # decode once this much is buffered
RECV_WINDOW = 64 << 10  # > the largest dump skb (32 KiB), so no reply is ever truncated
# The kernel queues one dump skb per recvmsg() (netlink_recvmsg refills while
# sk_rmem_alloc <= sk_rcvbuf / 2), so a large SO_RCVBUF buys nothing for dumps; 1 MiB leaves
# room for the skb being filled plus the one being read, with margin.
RCVBUF_BYTES = 1 << 20
FAMILIES = (socket.AF_INET, socket.AF_INET6)
_TAIL = struct.Struct("=IHHII")


class BatchConsumer(Protocol):
    def add(self, batch: Batch) -> None: ...


class DiagSocket:
    """One NETLINK_SOCK_DIAG socket, opened in the calling thread's network namespace."""

    def __init__(self, rcvbuf: int = RCVBUF_BYTES) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((0, 0))
            self.pid: int = self.sock.getsockname()[0]
        except OSError:
            self.sock.close()
            raise
        self.buffer = bytearray(BATCH_BYTES + RECV_WINDOW)
        self.view = memoryview(self.buffer)
        self._seq = random.randrange(1, 1 << 31)

    def close(self) -> None:
        self.view.release()
        self.sock.close()

    def __enter__(self) -> DiagSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dump(self, family: int, states: int, consumer: BatchConsumer) -> None:
        """Run one dump of `family` TCP sockets in `states` into `consumer`.

        Raises DumpInterrupted (NLM_F_DUMP_INTR seen), DiagProtocolError, or OSError.
        """
        self._seq = (self._seq % 0x7FFFFFFF) + 1
        seq = self._seq
        self.sock.send(build_request(family, states, seq))
        interrupted = False
        done = False
        pos = 0
        while not done:
            nbytes, _, msg_flags, _ = self.sock.recvmsg_into([self.view[pos : pos + RECV_WINDOW]])
            if msg_flags & socket.MSG_TRUNC:
                raise DiagProtocolError("netlink reply truncated by the receive buffer")
            if nbytes == 0:
                raise DiagProtocolError("netlink socket returned no data before NLMSG_DONE")
            start = pos
            pos += nbytes
            if pos < BATCH_BYTES and not self._ends_dump(start, pos, seq):
                continue
            batch, end = decode_batch(self.view, pos, seq, self.pid)
            if len(batch):
                consumer.add(batch)
            interrupted |= end.interrupted
            done = end.done
            pos = 0
        if interrupted:
            raise DumpInterrupted(f"sock_diag dump of family {family} was interrupted")

    def _ends_dump(self, start: int, end: int, seq: int) -> bool:
        """Whether the chunk just received may end the dump: NLMSG_DONE closes its skb,
        and an NLMSG_ERROR arrives alone. A false positive only costs an early decode."""
        if end - start < NLMSG_HDR.size:
            return True
        first_type = _TAIL.unpack_from(self.buffer, start)[1]
        if first_type == NLMSG_ERROR:
            return True
        if end - start < NLMSG_HDR.size + 4:
            return False
        length, kind, _, tail_seq, tail_pid = _TAIL.unpack_from(self.buffer, end - 20)
        return bool(
            kind == NLMSG_DONE and length == 20 and tail_seq == seq and tail_pid == self.pid
        )


def dump_all(
    consumer: BatchConsumer,
    families: tuple[int, ...] = FAMILIES,
    retries: int = 1,
) -> dict[int, str]:
    """Listeners first, then every other TCP socket, for each family, into `consumer`.

    The consumer must be fresh: a dump interrupted by NLM_F_DUMP_INTR is retried `retries`
    times from scratch with a new consumer state (the caller builds a new one and calls
    again when DumpInterrupted escapes). Returns the families the kernel does not support
    (errno text by family), e.g. AF_INET6 when IPv6 is disabled: those are absent, not 0.
    """
    unsupported: dict[int, str] = {}
    with DiagSocket() as diag:
        for states in (1 << TCP_LISTEN, ALL_STATES & ~(1 << TCP_LISTEN)):
            for family in families:
                if family in unsupported:
                    continue
                try:
                    diag.dump(family, states, consumer)
                except DiagProtocolError as exc:
                    if family == socket.AF_INET6 and _is_missing_family(exc):
                        unsupported[family] = str(exc)
                        continue
                    raise
    return unsupported


def _is_missing_family(exc: DiagProtocolError) -> bool:
    # inet_diag_lock_handler answers ENOENT when no handler serves the family (IPv6 off).
    return exc.errno == errno.ENOENT
