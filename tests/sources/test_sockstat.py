from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.sources import SourceError
from exporter.sources.sockstat import parse_sockstat
from tests.conftest import FIXTURES, TREES
from tests.fuzzing import FUZZ, mutated, parses_or_rejects


def test_recorded_file() -> None:
    fields = parse_sockstat((TREES / "linux-6.18/proc/net/sockstat").read_text())
    assert set(fields) == {"inuse", "orphan", "tw", "alloc", "mem"}
    assert fields["tw"] == 11  # 10 TIME-WAIT + 1 orphaned FIN-WAIT-2 timewait minisock


def test_old_kernel_file() -> None:
    assert parse_sockstat((TREES / "linux-4.9/proc/net/sockstat").read_text()) == {
        "inuse": 12,
        "orphan": 0,
        "tw": 12,
        "alloc": 14,
        "mem": 3,
    }


@pytest.mark.parametrize(
    ("name", "message"),
    [("sockstat-no-tcp", "no TCP line"), ("sockstat-non-numeric", "not a number")],
)
def test_corrupt(name: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_sockstat((FIXTURES / "corrupt" / name).read_text())


@pytest.mark.parametrize("line", ["TCP: inuse 1 orphan", "TCP: orphan 0 alloc 1"])
def test_malformed_tcp_line(line: str) -> None:
    with pytest.raises(SourceError):
        parse_sockstat(line + "\n")


# -- property tests (hypothesis); fuzz/targets.py runs the same parser under atheris ------

RECORDED = [
    (TREES / "linux-6.18/proc/net/sockstat").read_bytes(),
    (TREES / "linux-4.9/proc/net/sockstat").read_bytes(),
]
COUNT = st.integers(0, 2**64 - 1)


@st.composite
def sockstat_files(draw: st.DrawFn) -> tuple[str, dict[str, int]]:
    fields = {name: draw(COUNT) for name in ("inuse", "orphan", "tw", "alloc", "mem")}
    kept = draw(st.permutations(list(fields)))[: draw(st.integers(2, 5))]
    kept = [*{"inuse", "tw"} - set(kept), *kept]
    words = [f"{name} {fields[name]}" for name in kept]
    text = f"sockets: used {draw(COUNT)}\nTCP: {' '.join(words)}\nUDP: inuse 0 mem 1\n"
    return text, {
        name: fields[name] for name in ("inuse", "orphan", "tw", "alloc", "mem") if name in kept
    }


@FUZZ
@given(sockstat_files())
def test_generated_file_parses_to_exactly_its_fields(doc: tuple[str, dict[str, int]]) -> None:
    text, fields = doc
    assert parse_sockstat(text) == fields


@FUZZ
@given(mutated(st.sampled_from(RECORDED)) | st.binary())
def test_mutated_file_parses_or_raises_source_error(data: bytes) -> None:
    for fields in parses_or_rejects(parse_sockstat, data):
        assert {"inuse", "tw"} <= set(fields)
        assert all(type(v) is int and 0 <= v < 10**20 for v in fields.values())


@pytest.mark.parametrize("value", ["²", "9" * 4400])
def test_value_int_cannot_read_is_a_source_error(value: str) -> None:
    """Found by fuzzing: "²" and a 4400-digit value passed str.isdigit(), then int() raised
    ValueError."""
    with pytest.raises(SourceError, match="not a number"):
        parse_sockstat(f"TCP: inuse {value} tw 0\n")
