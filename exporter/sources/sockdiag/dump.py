"""Stream NETLINK_SOCK_DIAG TCP dumps into a consumer, batch by batch.

The kernel fills one dump skb (at most ~32 KiB, net/netlink/af_netlink.c netlink_dump)
per recvmsg(); we receive many of them back to back into one buffer and decode the batch
at once (exporter/sources/sockdiag/codec.py), so memory stays bounded by the buffer whatever
the number of sockets.

Both families come from one TCPDIAG_GETSOCK request (see build_compat_request): with the
host's shared established hash every request walks the whole node's table, so one request
instead of one per family halves the cost of each namespace's dump.

Listeners are dumped first, on their own: with only TCPF_LISTEN requested the kernel walks
the listening hash and skips the established hash (net/ipv4/inet_diag.c,
inet_diag_dump_icsk), so this costs O(listeners). The consumer then knows every
bind()-owned listening port before the single pass over all other sockets.
"""

from __future__ import annotations

import errno
import queue
import random
import socket
import struct
import threading
from typing import Protocol

from exporter.sources.sockdiag.codec import (
    ALL_STATES,
    NETLINK_SOCK_DIAG,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    TCP_LISTEN,
    TCPDIAG_GETSOCK,
    Batch,
    DiagProtocolError,
    DumpInterrupted,
    build_compat_request,
    decode_batch,
)

BATCH_BYTES = 1 << 20  # decode once this much is buffered
BUFFERS = 3  # one being filled, one being decoded, one spare
SYNC_BYTES = 128 << 10  # read before a dump is handed to the pipeline (DiagSocket.receive)
RECV_WINDOW = 64 << 10  # > the largest dump skb (32 KiB), so no reply is ever truncated
# During a dump the kernel fills at most one more skb per recvmsg(), and only while
# sk_rmem_alloc <= sk_rcvbuf / 2 (netlink_recvmsg), so a large SO_RCVBUF buys nothing; 1 MiB
# is set explicitly so the host's rmem_default does not matter, with room for the skb being
# filled plus the one being read.
RCVBUF_BYTES = 1 << 20
RECV_TIMEOUT = 10  # seconds
LISTENING = 1 << TCP_LISTEN
NOT_LISTENING = ALL_STATES & ~LISTENING

# Receive buffers belong to the thread that runs a dump, not to a socket: a node has one
# diag socket per namespace but only a few poll workers.
Buffers = list[bytearray]


def new_buffers() -> Buffers:
    return [bytearray(BATCH_BYTES + RECV_WINDOW) for _ in range(BUFFERS)]


class BatchConsumer(Protocol):
    def add(self, batch: Batch) -> None: ...


class DiagSocket:
    """One NETLINK_SOCK_DIAG socket, opened in the calling thread's network namespace. It
    keeps answering for that namespace from any thread afterwards (the socket holds a
    reference to it: sk_alloc, net/core/sock.c).

    A dump is pipelined over two threads: a receiver thread calls recvmsg() (the kernel
    fills the next skb inside that call, with the GIL released) into one buffer while the
    calling thread decodes the previous one.
    """

    def __init__(
        self,
        rcvbuf: int = RCVBUF_BYTES,
        sock: socket.socket | None = None,
        recv_timeout: float = RECV_TIMEOUT,
    ) -> None:
        # `sock` replaces the netlink socket (tests replay recorded bytes through it).
        self.sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        self.recv_timeout = recv_timeout
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            # A dump never pauses this long between skbs: a recvmsg() still waiting after
            # it fails with EAGAIN, and the source fails instead of the poll hanging.
            seconds = int(recv_timeout)
            micros = int((recv_timeout - seconds) * 1e6)
            self.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", seconds, micros)
            )
            self.sock.bind((0, 0))
            self.pid: int = self.sock.getsockname()[0]
        except OSError:
            self.sock.close()
            raise
        self._seq = random.randrange(1, 1 << 31)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> DiagSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dump(
        self, states: int, consumer: BatchConsumer, buffers: Buffers, bytecode: bytes = b""
    ) -> None:
        """Run one dump of TCP sockets of both families in `states` into `consumer`.

        Raises DumpInterrupted (NLM_F_DUMP_INTR seen, or ENOBUFS), DiagProtocolError, or
        OSError.
        """
        self.receive(self.request(states, bytecode), consumer, buffers)

    def request(self, states: int, bytecode: bytes = b"") -> int:
        """Send a dump request; returns its sequence number. The kernel fills the first
        reply skb inside this call (netlink_dump_start), walking the hash tables until
        it has something to send or reaches their end."""
        self._seq = (self._seq % 0x7FFFFFFF) + 1
        self.sock.send(build_compat_request(states, self._seq, bytecode))
        return self._seq

    def receive(self, seq: int, consumer: BatchConsumer, buffers: Buffers) -> None:
        """Receive and decode the replies to request `seq` (see `dump`).

        The first SYNC_BYTES are read on this thread: a namespace with few sockets
        answers in a skb or two (the kernel sends NLMSG_DONE in the skb after the last
        records) and is done without a second thread. Longer dumps go on in the pipeline,
        from where these reads left off."""
        first = buffers[0]
        filled = 0
        while filled < SYNC_BYTES:
            start = filled
            try:
                with memoryview(first) as view:
                    filled += self._recv_chunk(view, filled)
            except OSError as exc:
                raise _receive_error(exc, self.recv_timeout) from exc
            if not _ends_dump(first, start, filled, seq, self.pid):
                continue
            with memoryview(first) as view:
                batch, end = decode_batch(view, filled, seq, self.pid, TCPDIAG_GETSOCK)
            if end.done:
                if len(batch):
                    consumer.add(batch)
                if end.interrupted:
                    raise DumpInterrupted("sock_diag dump was interrupted")
                return
        self._pipeline(seq, consumer, buffers, filled)

    def _pipeline(self, seq: int, consumer: BatchConsumer, buffers: Buffers, filled: int) -> None:
        """The rest of a dump over two threads. buffers[0] holds the `filled` bytes read
        so far, whole skbs: it is decoded first while the receiver fills the others."""
        free: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
        ready: queue.SimpleQueue[tuple[bytearray, int, bool] | BaseException] = queue.SimpleQueue()
        verdicts: queue.SimpleQueue[bool] = queue.SimpleQueue()
        for buffer in buffers[1:]:
            free.put(buffer)
        ready.put((buffers[0], filled, False))
        receiver = threading.Thread(
            target=self._receive,
            args=(seq, free, ready, verdicts),
            daemon=True,
            name="sockdiag-recv",
        )
        receiver.start()
        interrupted = False
        try:
            while True:
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                buffer, length, maybe_end = item
                with memoryview(buffer) as view:
                    batch, end = decode_batch(view, length, seq, self.pid, TCPDIAG_GETSOCK)
                if maybe_end:
                    verdicts.put(end.done)
                if len(batch):
                    consumer.add(batch)
                interrupted |= end.interrupted
                free.put(buffer)
                if end.done:
                    break
        finally:
            free.put(None)  # stop the receiver if it is waiting for a buffer
            verdicts.put(True)
            # On an error the receiver may sit in recvmsg() until SO_RCVTIMEO; the caller
            # then drops this socket (its stream is out of step) and opens a new one.
            receiver.join(self.recv_timeout + 1)
        if interrupted:
            raise DumpInterrupted("sock_diag dump was interrupted")

    def _recv_chunk(self, view: memoryview, pos: int) -> int:
        """One recvmsg() into view[pos:]: one whole skb, never truncated."""
        window = view[pos : pos + RECV_WINDOW]
        try:
            nbytes, _, msg_flags, _ = self.sock.recvmsg_into([window])
        finally:
            window.release()
        if msg_flags & socket.MSG_TRUNC:
            raise DiagProtocolError("netlink reply truncated by the buffer")
        if nbytes == 0:
            raise DiagProtocolError("netlink socket returned no data")
        return int(nbytes)

    def _receive(
        self,
        seq: int,
        free: queue.SimpleQueue[bytearray | None],
        ready: queue.SimpleQueue[tuple[bytearray, int, bool] | BaseException],
        verdicts: queue.SimpleQueue[bool],
    ) -> None:
        """Fill free buffers with whole skbs until the decoder confirms the dump is over."""
        try:
            while True:
                buffer = free.get()
                if buffer is None:
                    return
                pos = 0
                maybe_end = False
                with memoryview(buffer) as view:
                    while pos < BATCH_BYTES and not maybe_end:
                        start = pos
                        pos += self._recv_chunk(view, pos)
                        maybe_end = _ends_dump(buffer, start, pos, seq, self.pid)
                ready.put((buffer, pos, maybe_end))
                if maybe_end and verdicts.get():
                    return
        except OSError as exc:
            ready.put(_receive_error(exc, self.recv_timeout))
        except BaseException as exc:
            ready.put(exc)


def _receive_error(exc: OSError, timeout: float) -> Exception:
    if exc.errno == errno.ENOBUFS:  # the kernel dropped replies: redo the dump
        return DumpInterrupted(f"sock_diag receive buffer overrun: {exc}")
    if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):  # SO_RCVTIMEO passed
        return DiagProtocolError(f"no sock_diag reply within {timeout:g} s (recv timed out)")
    return exc


def _ends_dump(buffer: bytearray, start: int, end: int, seq: int, pid: int) -> bool:
    """Whether the chunk buffer[start:end] just received may end the dump: NLMSG_DONE
    closes its skb, and an NLMSG_ERROR arrives alone. The decoder confirms; a false
    positive only costs a round trip between the two threads."""
    if end - start < NLMSG_HDR.size:
        return True
    if NLMSG_HDR.unpack_from(buffer, start)[1] == NLMSG_ERROR:
        return True
    if end - start < NLMSG_HDR.size + 4:
        return False
    length, kind, _, tail_seq, tail_pid = NLMSG_HDR.unpack_from(buffer, end - 20)
    return bool(kind == NLMSG_DONE and length == 20 and tail_seq == seq and tail_pid == pid)


def dump_all(
    diag: DiagSocket, consumer: BatchConsumer, buffers: Buffers, bytecode: bytes = b""
) -> None:
    """Listeners of both families first, then every other TCP socket, into `consumer`.

    The kernel filters with the state bitmask, and with `bytecode` (an
    INET_DIAG_REQ_BYTECODE program) for the non-listening sockets. DumpInterrupted escapes
    when the kernel flags the dump as inconsistent: the caller retries with a fresh
    consumer.
    """
    diag.dump(LISTENING, consumer, buffers)
    diag.dump(NOT_LISTENING, consumer, buffers, bytecode)
