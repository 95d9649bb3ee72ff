"""connect() calls that failed with EADDRNOTAVAIL, told apart in the destroy events.

tcp_v4_connect (net/ipv4/tcp_ipv4.c) sets the destination address, then picks a local
port (inet_hash_connect); when no port is free toward that destination it fails with
EADDRNOTAVAIL at its `failure:` label: TCP_CLOSE, inet_dport = 0, the destination address
kept. tcp_v6_connect does the same (net/ipv6/tcp_ipv6.c), and hands IPv4-mapped
destinations to tcp_v4_connect. The socket's destroy event, when the application closes
it, is then a record with:

- state TCP_CLOSE and destination port 0;
- a destination address (a connect() that failed before it, on a route lookup, leaves it
  0.0.0.0 or ::);
- tcp_info's tcpi_pmtu 0 (include/uapi/linux/tcp.h, offset 60 of struct tcp_info, from
  the INET_DIAG_INFO attribute): icsk_pmtu_cookie is set by tcp_sync_mss from
  tcp_connect_init (net/ipv4/tcp_output.c), only once a port was found and the SYN is
  being built. Every socket that sent a SYN has it: a refused connect (destination port 0
  too, after the RST) shows 65535 on loopback, an SO_LINGER 0 abort likewise.

Those three hold for unbound and bound sockets, IPv4, IPv6 and IPv4-mapped alike (shown
by `ss -E` and by tests/events/test_failures.py). The one other failure between the
port and the SYN is a route lookup for the chosen port failing (ip_route_newports, policy
routing by port): it would count here too. tcp_disconnect resets segs_out and friends,
so they tell nothing; pmtu is what the kernel never sets before the port.

No other `error` is counted: a refused connect, a reset before establishment and a
SYN timeout leave records that differ only by retransmission counts, which packet loss
blurs; the events cannot prove which one happened.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

from exporter.sources.sockdiag.codec import Batch

TCP_CLOSE = 7  # include/net/tcp_states.h
INET_DIAG_INFO = 2  # include/uapi/linux/inet_diag.h, enum of attribute types
RECORD_END = 16 + 72  # nlmsghdr + inet_diag_msg: the attributes start here
TCPI_PMTU = 60  # offset of tcpi_pmtu in struct tcp_info
_NLA = struct.Struct("=HH")
EADDRNOTAVAIL = "eaddrnotavail"


def candidates(batch: Batch) -> npt.NDArray[np.bool_]:
    """Closed sockets with a destination address and no destination port."""
    has_remote = np.count_nonzero(batch.dst, axis=1) > 0
    closed: npt.NDArray[np.bool_] = (batch.state == TCP_CLOSE) & (batch.dport == 0) & has_remote
    return closed


def pmtu(buf: memoryview, start: int, length: int) -> int | None:
    """tcpi_pmtu of the message at buf[start:start + length]; None without tcp_info."""
    at = start + RECORD_END
    end = start + length
    while at + _NLA.size <= end:
        size, kind = _NLA.unpack_from(buf, at)
        if size < _NLA.size or at + size > end:
            return None
        if kind & 0x3FFF == INET_DIAG_INFO:  # NLA_TYPE_MASK
            if size < _NLA.size + TCPI_PMTU + 4:
                return None
            value: int = struct.unpack_from("=I", buf, at + _NLA.size + TCPI_PMTU)[0]
            return value
        at += (size + 3) & ~3
    return None


def failed_before_syn(
    buf: memoryview, starts: npt.NDArray[np.int64], lengths: npt.NDArray[np.uint32]
) -> npt.NDArray[np.bool_]:
    """Per candidate message: did its connect() fail before a SYN (pmtu 0)? Walks the
    attributes of these few messages only."""
    out = np.zeros(starts.shape[0], dtype=bool)
    for i, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
        out[i] = pmtu(buf, start, length) == 0
    return out
