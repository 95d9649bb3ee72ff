"""Aggregate sock_diag batches into per-namespace socket statistics (one pass, no per-socket
Python objects). Output is immutable and small: its size depends on states and buckets,
never on the number of sockets."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from exporter.sources.sockdiag.buckets import BucketOptions, BucketTally, Classifier
from exporter.sources.sockdiag.capacity import PortPolicy, PortUsage, summarize
from exporter.sources.sockdiag.codec import (
    FAMILIES,
    REPORTED_STATES,
    Batch,
    DumpInterrupted,
    port_filter_bytecode,
)
from exporter.sources.sockdiag.dump import Buffers, DiagSocket, dump_all

_FAMILY_INDEX = {socket.AF_INET: 0, socket.AF_INET6: 1}
_FAMILY_BY_INDEX = {0: socket.AF_INET, 1: socket.AF_INET6}


@dataclass(frozen=True, slots=True)
class SocketStats:
    # (family name, state name) → sockets; every state a dump can return (REPORTED_STATES)
    # of every family the kernel has is present, zeros included.
    states: dict[tuple[str, str], int]
    # Families the kernel cannot have (no IPv6 in it): absent, not 0.
    missing_families: tuple[str, ...]
    # Buckets and port capacity; None when the port range could not be read.
    ports: PortUsage | None = None
    # Which non-listening sockets the kernel was asked for ("" = all of them).
    scope: str = ""
    # False when sockstat showed no TCP socket at all and the dump was skipped.
    dumped: bool = True
    # The inbound/outbound rule of this dump (listeners, port range), for the
    # socket-destroy events; None without the port range.
    classifier: Classifier | None = None


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
        # idiag_state is a u8: a value past the last TCP state (include/net/tcp_states.h)
        # lands in slot 15, which no state uses and nothing reports.
        index = family_index * 16 + np.minimum(batch.state, 15)
        self._counts += np.bincount(index, minlength=32)[:32]
        if self._buckets is not None:
            self._buckets.add(batch)

    def result(
        self, missing: tuple[str, ...], scope: str = "", dumped: bool = True, classify: bool = False
    ) -> SocketStats:
        """classify: also keep the dump's inbound/outbound rule (for the destroy events)."""
        states: dict[tuple[str, str], int] = {}
        for index, family in _FAMILY_BY_INDEX.items():
            if FAMILIES[family] in missing:
                continue
            for state, name in REPORTED_STATES.items():
                states[(FAMILIES[family], name)] = int(self._counts[index * 16 + state])
        ports = None
        if self._buckets is not None and self._policy is not None:
            ports = summarize(self._buckets, self._policy, self._options)
        return SocketStats(
            states=states,
            missing_families=missing,
            ports=ports,
            scope=scope,
            dumped=dumped,
            classifier=self._buckets.classifier() if classify and self._buckets else None,
        )


def filter_for(policy: PortPolicy | None, options: BucketOptions) -> tuple[bytes, str]:
    """With --buckets.inbound-ports the kernel is asked only for non-listening sockets
    whose local port is in the ephemeral range or in those ports (as `ss` filters): what
    the buckets need, at a fraction of the cost on a busy server."""
    if policy is None or not options.inbound_ports:
        return b"", ""
    low, high = policy.port_range
    ports = tuple(sorted(options.inbound_ports))
    return port_filter_bytecode(
        low, high, ports
    ), f"local port {low}-{high} or {','.join(map(str, ports))}"


def collect_socket_stats(
    diag: DiagSocket,
    buffers: Buffers,
    policy: PortPolicy | None = None,
    options: BucketOptions | None = None,
    missing: tuple[str, ...] = (),
    classify: bool = False,
) -> SocketStats:
    """Dump the namespace `diag` was opened in. DumpInterrupted (NLM_F_DUMP_INTR or
    ENOBUFS) escapes; the caller redoes the dump once on a fresh socket. classify: keep
    the listener set as a Classifier, only where destroy events use it."""
    options = options or BucketOptions()
    bytecode, scope = filter_for(policy, options)
    tally = SocketTally(policy, options)
    dump_all(diag, tally, buffers, bytecode)
    return tally.result(missing, scope, classify=classify)


def no_sockets(
    policy: PortPolicy | None,
    options: BucketOptions,
    missing: tuple[str, ...] = (),
    classify: bool = False,
) -> SocketStats:
    """The exact result of a dump that finds nothing: every state 0, no bucket."""
    scope = filter_for(policy, options)[1]
    return SocketTally(policy, options).result(missing, scope, False, classify=classify)


__all__ = ["DumpInterrupted", "SocketStats", "SocketTally", "collect_socket_stats", "no_sockets"]
