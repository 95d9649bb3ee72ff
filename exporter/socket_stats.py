"""Aggregate sock_diag batches into per-namespace socket statistics (one pass, no per-socket
Python objects). Output is immutable and small: its size depends on states and buckets,
never on the number of sockets."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from exporter.buckets import BucketOptions, BucketTally
from exporter.capacity import PortPolicy, PortUsage, summarize
from exporter.sources.inet_diag import (
    FAMILIES,
    TCP_STATES,
    Batch,
    DumpInterrupted,
    port_filter_bytecode,
)
from exporter.sources.sockdiag import dump_all

_FAMILY_INDEX = {socket.AF_INET: 0, socket.AF_INET6: 1}
_FAMILY_BY_INDEX = {0: socket.AF_INET, 1: socket.AF_INET6}


@dataclass(frozen=True, slots=True)
class SocketStats:
    # (family name, state name) → sockets; every state of every dumped family is present.
    states: dict[tuple[str, str], int]
    # Families the kernel refused to dump (IPv6 disabled): absent, not 0.
    missing_families: tuple[str, ...]
    # Buckets and port capacity; None when the port range could not be read.
    ports: PortUsage | None = None
    # Which non-listening sockets the kernel was asked for ("" = all of them).
    scope: str = ""


class SocketTally:
    """The consumer fed by the dump: counts per (family, state), and quadruplet buckets
    when the namespace's port policy is known."""

    def __init__(
        self, policy: PortPolicy | None = None, options: BucketOptions | None = None
    ) -> None:
        self._counts: npt.NDArray[np.int64] = np.zeros(32, dtype=np.int64)
        self._policy = policy
        self._options = options or BucketOptions()
        self._buckets = BucketTally(policy.port_range, self._options) if policy else None

    def add(self, batch: Batch) -> None:
        family_index = (batch.family == socket.AF_INET6).astype(np.int64)
        index = family_index * 16 + batch.state
        self._counts += np.bincount(index, minlength=32)[:32]
        if self._buckets is not None:
            self._buckets.add(batch)

    def result(self, missing: dict[int, str], scope: str = "") -> SocketStats:
        states: dict[tuple[str, str], int] = {}
        for index, family in _FAMILY_BY_INDEX.items():
            if family in missing:
                continue
            for state, name in TCP_STATES.items():
                states[(FAMILIES[family], name)] = int(self._counts[index * 16 + state])
        ports = None
        if self._buckets is not None and self._policy is not None:
            ports = summarize(self._buckets, self._policy, self._options)
        return SocketStats(
            states=states,
            missing_families=tuple(FAMILIES[f] for f in sorted(missing)),
            ports=ports,
            scope=scope,
        )


def collect_socket_stats(
    policy: PortPolicy | None = None, options: BucketOptions | None = None, retries: int = 1
) -> SocketStats:
    """Dump this thread's namespace; a dump the kernel flags as interrupted
    (NLM_F_DUMP_INTR) is redone from scratch once, then reported as an error.

    With --buckets.inbound-ports the kernel is asked only for non-listening sockets whose
    local port is in the ephemeral range or in those ports (as `ss` filters): what the
    buckets need, at a fraction of the cost on a busy server.
    """
    bytecode, scope = b"", ""
    if policy is not None and options is not None and options.inbound_ports:
        low, high = policy.port_range
        ports = tuple(sorted(options.inbound_ports))
        bytecode = port_filter_bytecode(low, high, ports)
        scope = f"local port {low}-{high} or {','.join(map(str, ports))}"
    for attempt in range(retries + 1):
        tally = SocketTally(policy, options)
        try:
            missing = dump_all(tally, bytecode=bytecode)
        except DumpInterrupted:
            if attempt == retries:
                raise
            continue
        return tally.result(missing, scope)
    raise AssertionError("unreachable")
