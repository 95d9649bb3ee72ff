"""The destroy-event listener of one namespace, and batched receiving.

sock_diag broadcasts every TCP socket's destruction to the multicast groups
SKNLGRP_INET_TCP_DESTROY and SKNLGRP_INET6_TCP_DESTROY (include/uapi/linux/sock_diag.h;
sock_diag_broadcast_destroy in net/core/sock_diag.c, the feed `ss -E` reads) of the
socket's own namespace, as one inet_diag_msg record per message (seq 0, port id 0). Any
user may join them (NL_CFG_F_NONROOT_RECV).

Lost events: a full receive buffer makes the kernel drop messages (netlink_overrun:
sk_drops + 1 per message, and ENOBUFS once on the next recv). The exact count is the
socket's Drops column in the namespace's /proc/net/netlink (matched by inode).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
from pathlib import Path

import numpy as np

from exporter.netns.context import pread_all
from exporter.sources.sockdiag.codec import NETLINK_SOCK_DIAG

SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET6_TCP_DESTROY = 3
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
GROUPS = (SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET6_TCP_DESTROY)

# Asked for; the kernel caps SO_RCVBUF at net.core.rmem_max and doubles it (sk_rcvbuf).
# SO_RCVBUFFORCE would need CAP_NET_ADMIN, which the deployment does not grant.
EVENTS_RCVBUF = 16 << 20
RCVBUF_ENV = "TCPTW_EVENTS_RCVBUF"  # test hook: a tiny buffer, to provoke losses
SLOT = 2048  # bytes per message slot (an event is 380 bytes on 6.x: record + tcp_info)
SLOTS = 256  # messages per recvmmsg()
# Kernel memory one queued event costs: estimated (a 380-byte message in a 1 KiB slab
# object plus struct sk_buff), not measured.
TRUESIZE = 1280
MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20


class EventSocket:
    """A NETLINK_SOCK_DIAG socket joined to both TCP destroy groups, in the calling
    thread's namespace, non-blocking."""

    def __init__(self, rcvbuf: int | None = None) -> None:
        if rcvbuf is None:
            rcvbuf = int(os.environ.get(RCVBUF_ENV) or EVENTS_RCVBUF)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((0, 0))
            for group in GROUPS:
                self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            self.sock.setblocking(False)
            self.rcvbuf: int = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            self.inode: int = os.fstat(self.sock.fileno()).st_ino
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def parse_drops(text: str, inode: int) -> int | None:
    """The Drops column of /proc/net/netlink for the socket with this inode."""
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 10 and fields[-1] == str(inode):
            return int(fields[-2])
    return None


# -- recvmmsg(2) ---------------------------------------------------------------------------


class EventListener:
    """The handle opened in each namespace: the listener and that namespace's
    /proc/net/netlink (None without it: lost events then count one per ENOBUFS)."""

    def __init__(self, procfs: Path) -> None:
        self.socket = EventSocket()
        try:
            self.netlink_fd: int | None = os.open(
                procfs / "thread-self" / "net" / "netlink", os.O_RDONLY | os.O_CLOEXEC
            )
        except OSError:
            self.netlink_fd = None

    def drops(self) -> int | None:
        """The kernel's count of events dropped for this listener; None: unknown."""
        if self.netlink_fd is None:
            return None
        try:
            text = pread_all(self.netlink_fd, "/proc/thread-self/net/netlink")
        except Exception:
            return None
        return parse_drops(text, self.socket.inode)

    def close(self) -> None:
        self.socket.close()
        if self.netlink_fd is not None:
            os.close(self.netlink_fd)
            self.netlink_fd = None


# -- recvmmsg(2) ---------------------------------------------------------------------------


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


def _libc_recvmmsg() -> object | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


class Receiver:
    """SLOTS messages per system call into fixed slots of one buffer (recvmmsg through
    ctypes, which releases the GIL; recv_into one by one where libc lacks it)."""

    def __init__(self) -> None:
        self.buffer = (ctypes.c_char * (SLOT * SLOTS))()
        self.view = memoryview(self.buffer).cast("B")
        self._iov = (_IOVec * SLOTS)()
        self._msgs = (_MMsgHdr * SLOTS)()
        base = ctypes.addressof(self.buffer)
        for i in range(SLOTS):
            self._iov[i].base = base + i * SLOT
            self._iov[i].len = SLOT
            self._msgs[i].hdr.iov = ctypes.addressof(self._iov) + i * ctypes.sizeof(_IOVec)
            self._msgs[i].hdr.iovlen = 1
        stride = ctypes.sizeof(_MMsgHdr)
        raw = memoryview(self._msgs).cast("B")
        self._lens = np.ndarray(
            (SLOTS,), np.uint32, buffer=raw, offset=_MMsgHdr.len.offset, strides=(stride,)
        )
        self._flags = np.ndarray(
            (SLOTS,), np.int32, buffer=raw, offset=_MsgHdr.flags.offset, strides=(stride,)
        )
        self._recvmmsg = _libc_recvmmsg()
        self.lengths = np.zeros(SLOTS, dtype=np.uint32)

    def receive(self, sock: socket.socket) -> int:
        """Messages received (0..SLOTS) into the slots; self.lengths holds their sizes.
        Raises BlockingIOError when none is queued, OSError(ENOBUFS) after an overrun."""
        if self._recvmmsg is None:
            return self._receive_one_by_one(sock)
        n = self._recvmmsg(sock.fileno(), ctypes.addressof(self._msgs), SLOTS, MSG_DONTWAIT, None)  # type: ignore[operator]
        if n < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise BlockingIOError(code, os.strerror(code))
            raise OSError(code, os.strerror(code))
        lengths = self._lens[:n].copy()
        lengths[(self._flags[:n] & MSG_TRUNC) != 0] = 0  # a truncated message is skipped
        self.lengths[:n] = lengths
        return int(n)

    def _receive_one_by_one(self, sock: socket.socket) -> int:
        n = 0
        while n < SLOTS:
            try:
                size = sock.recv_into(self.view[n * SLOT : (n + 1) * SLOT], SLOT, MSG_TRUNC)
            except BlockingIOError:
                if n == 0:
                    raise
                break
            self.lengths[n] = size if size <= SLOT else 0
            n += 1
        return n


OFFSETS = np.arange(SLOTS, dtype=np.int64) * SLOT
