"""How sockets become bucket keys: one home for the address layout that the dump's
buckets (buckets.py) and the destroy events (exporter/events/) share.

IPv4-mapped IPv6 sockets (::ffff:a.b.c.d) are IPv4: they share its port space. A byte key
is KEY bytes: local address (16; an IPv4 one in the first 4), remote address (16, masked
by the prefix options), port (2, big-endian: the remote one outbound, the local one
inbound), and one flag byte (TIME-WAIT for the dump's IPv6 buckets, IPv6 for the events).
"""

from __future__ import annotations

import ipaddress
import socket

import numpy as np
import numpy.typing as npt

from exporter.sources.sockdiag.codec import Batch

KEY = 35
_MAPPED_WORD = np.frombuffer(b"\0\0\xff\xff", dtype="<u4")[0]  # ::ffff:0:0/96, word 2


def select(batch: Batch, mask: npt.NDArray[np.bool_]) -> Batch:
    return Batch(
        family=batch.family[mask],
        state=batch.state[mask],
        sport=batch.sport[mask],
        dport=batch.dport[mask],
        src=batch.src[mask],
        dst=batch.dst[mask],
    )


def canonical(
    batch: Batch, listeners_only: bool = False
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
    """(is IPv4, local IPv4 word, remote IPv4 word): the address word of AF_INET sockets
    (word 0) and of IPv4-mapped AF_INET6 ones (::ffff:a.b.c.d, word 3) alike, so both land
    in the same buckets. The words of other IPv6 rows are meaningless."""
    v4_family = batch.family == socket.AF_INET
    src, dst = batch.src, batch.dst
    if bool(v4_family.all()):
        return v4_family, src[:, 0], dst[:, 0]
    mapped = is_mapped(src)
    if not listeners_only:
        mapped &= is_mapped(dst)
    v4 = v4_family | mapped
    return v4, np.where(v4_family, src[:, 0], src[:, 3]), np.where(v4_family, dst[:, 0], dst[:, 3])


def is_mapped(words: npt.NDArray[np.uint32]) -> npt.NDArray[np.bool_]:
    mapped: npt.NDArray[np.bool_] = (
        (words[:, 0] == 0) & (words[:, 1] == 0) & (words[:, 2] == _MAPPED_WORD)
    )
    return mapped


def prefix_mask(prefix: int, width: int) -> npt.NDArray[np.uint8]:
    """The first `prefix` bits of `width` bytes set."""
    bits = np.zeros(width * 8, dtype=np.uint8)
    bits[:prefix] = 1
    packed: npt.NDArray[np.uint8] = np.packbits(bits)
    return packed


def key_rows(n: int) -> npt.NDArray[np.uint8]:
    return np.zeros((n, KEY), dtype=np.uint8)


def put_v4(
    rows: npt.NDArray[np.uint8],
    where: npt.NDArray[np.bool_],
    local: npt.NDArray[np.uint32],
    remote: npt.NDArray[np.uint32],
    mask: npt.NDArray[np.uint8],
) -> None:
    """Host-order IPv4 words (canonical's) into the address bytes of `where` rows."""
    rows[where, 0:4] = local.astype("<u4").view(np.uint8).reshape(-1, 4)
    rows[where, 16:20] = remote.astype("<u4").view(np.uint8).reshape(-1, 4) & mask


def put_v6(
    rows: npt.NDArray[np.uint8],
    where: npt.NDArray[np.bool_] | slice,
    local: npt.NDArray[np.uint32],
    remote: npt.NDArray[np.uint32],
    mask: npt.NDArray[np.uint8],
) -> None:
    """The kernel's four 32-bit words per IPv6 address into the address bytes."""
    rows[where, 0:16] = local.astype("<u4").view(np.uint8).reshape(-1, 16)
    rows[where, 16:32] = remote.astype("<u4").view(np.uint8).reshape(-1, 16) & mask


def put_port(rows: npt.NDArray[np.uint8], port: npt.NDArray[np.uint16]) -> None:
    rows[:, 32] = port >> 8
    rows[:, 33] = port & 0xFF


def as_keys(rows: npt.NDArray[np.uint8]) -> npt.NDArray[np.void]:
    keys: npt.NDArray[np.void] = rows.view(f"V{KEY}").ravel()
    return keys


def event_keys(
    batch: Batch,
    v4: npt.NDArray[np.bool_],
    local4: npt.NDArray[np.uint32] | None,
    remote4: npt.NDArray[np.uint32],
    port: npt.NDArray[np.uint16],
    mask4: npt.NDArray[np.uint8],
    mask6: npt.NDArray[np.uint8],
) -> npt.NDArray[np.uint8]:
    """The rows of the events' keys (flag byte 1 for IPv6), one per record of `batch`:
    IPv4 rows from canonical's words, IPv6 rows from the records' addresses, remote
    addresses masked. local4 None: local addresses left 0 (per destination only)."""
    rows = key_rows(len(batch))
    six = ~v4
    if v4.any():
        local = local4[v4] if local4 is not None else np.zeros(int(v4.sum()), dtype=np.uint32)
        put_v4(rows, v4, local, remote4[v4], mask4)
    if six.any():
        src = batch.src[six] if local4 is not None else np.zeros_like(batch.dst[six])
        put_v6(rows, six, src, batch.dst[six], mask6)
        rows[six, 34] = 1
    put_port(rows, port)
    return rows


def key_labels(
    key: bytes, outbound: bool, ipv4_prefix: int, ipv6_prefix: int
) -> tuple[str, str, str]:
    """(local_addr, remote_addr or local_port, remote_port or remote_addr) of an events
    key (flag byte: 1 for IPv6)."""
    v6 = key[34] == 1
    width = 16 if v6 else 4
    local = ipaddress.ip_address(key[:width])
    remote = ipaddress.ip_address(key[16 : 16 + width])
    prefix = ipv6_prefix if v6 else ipv4_prefix
    remote_text = f"{remote}/{prefix}" if prefix < width * 8 else str(remote)
    port = str(int.from_bytes(key[32:34], "big"))
    if outbound:
        return str(local), remote_text, port
    return str(local), port, remote_text
