"""The kernel's INET_DIAG_REQ_BYTECODE checker and interpreter, for the port filter only
(net/ipv4/inet_diag.c: inet_diag_bc_audit with valid_cc, and inet_diag_bc_run)."""

from __future__ import annotations

import struct

OP = struct.Struct("=BBH")  # code, yes, no
NOP, JMP, S_GE, S_LE = 0, 1, 2, 3


def _valid_cc(program: bytes, length: int, cc: int) -> bool:
    """valid_cc: walking "yes" steps from the start lands on the op `cc` bytes before the
    end (a "no" jump must land on an op boundary)."""
    off = 0
    while length >= 0:
        if cc > length:
            return False
        if cc == length:
            return True
        yes = OP.unpack_from(program, off)[1]
        if yes < 4 or yes & 3:
            return False
        length -= yes
        off += yes
    return False


def audit(program: bytes) -> bool:
    """inet_diag_bc_audit restricted to the ops port_filter_bytecode emits."""
    off, length = 0, len(program)
    while length > 0:
        if length < OP.size:
            return False
        code, yes, no = OP.unpack_from(program, off)
        min_len = OP.size
        if code in (S_GE, S_LE):
            min_len += OP.size
            if length < min_len:
                return False
        elif code not in (JMP, NOP):
            return False
        if code != NOP:
            if no < min_len or no > length + 4 or no & 3:
                return False
            if no < length and not _valid_cc(program, len(program), length - no):
                return False
        if yes < min_len or yes > length + 4 or yes & 3:
            return False
        off += yes
        length -= yes
    return length == 0


def run_program(program: bytes, sport: int) -> bool:
    """inet_diag_bc_run for a socket with local port `sport`: accepted or not."""
    off, length = 0, len(program)
    while length > 0:
        code, yes_step, no_step = OP.unpack_from(program, off)
        if code == JMP:
            yes = False
        elif code == S_GE:
            yes = sport >= OP.unpack_from(program, off + 4)[2]
        elif code == S_LE:
            yes = sport <= OP.unpack_from(program, off + 4)[2]
        else:
            yes = True
        step = yes_step if yes else no_step
        off += step
        length -= step
    return length == 0
