"""Shared hypothesis strategies for the parser property tests: valid-ish documents mutated
the way a fuzzer would, and the two ways a parser can receive text."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from hypothesis import settings
from hypothesis import strategies as st

from exporter.sources import SourceError, decode_text

# Enough to find the mutations the fixed bugs needed, and the whole suite's hypothesis
# tests stay within seconds.
FUZZ = settings(max_examples=150, deadline=None)

# Byte strings that broke parsers, or that parsers must treat with care.
TOKENS = [
    b"\xc2\xb2",  # "²": str.isdigit() but not int()
    b"\xd9\xa3",  # "٣": a Unicode decimal digit
    b"9" * 4400,  # past int()'s 4300-digit limit
    b"18446744073709551616",  # 2**64
    b"-1",
    b"\x00",
    b"\xff",
    b" ",
    b"\t",
    b"\n",
    b":",
    b"-",
    b",",
    b"_",
    b"\\",
    b"[",
    b"]",
]
T = TypeVar("T")


@st.composite
def mutated(draw: st.DrawFn, documents: st.SearchStrategy[bytes]) -> bytes:
    """A document with up to six random edits: overwrite, insert (random bytes or a
    token), delete, or duplicate a slice."""
    data = bytearray(draw(documents))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(("overwrite", "insert", "token", "delete", "duplicate")))
        if kind == "overwrite" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "token":
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif kind == "duplicate":
            size = draw(st.integers(1, 256))
            data[pos:pos] = data[pos : pos + size]
    return bytes(data)


def texts(data: bytes) -> Iterator[str]:
    """How the input reaches a parser: through decode_text as the readers do (ASCII or
    SourceError), and decoded leniently, since a parser takes any str."""
    with contextlib.suppress(SourceError):
        yield decode_text(data, "input")
    yield data.decode("utf-8", "surrogateescape")


def parses_or_rejects(parse: Callable[[str], T], data: bytes) -> list[T]:
    """Every result of `parse` on the input's texts; SourceError is the only exception
    allowed to escape (anything else fails the test)."""
    results: list[T] = []
    for text in texts(data):
        with contextlib.suppress(SourceError):
            results.append(parse(text))
    return results
