from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.engine.poller import wanted
from exporter.netns.context import NetnsContext
from exporter.sources import SourceError, netstat
from exporter.sources.netstat import (
    DEFAULT_FIELDS,
    parse_netstat,
    read_netstat,
    select_fields,
    snake_case,
)
from tests import oracles
from tests.conftest import FIXTURES, TREES
from tests.fuzzing import FUZZ, mutated, parses_or_rejects
from tests.fuzzing import texts as decodings
from tests.kernel import Netns

DEFAULT = re.compile(DEFAULT_FIELDS)


def test_parses_recorded_file_by_header_name() -> None:
    counters = parse_netstat((TREES / "linux-6.18/proc/net/netstat").read_text())
    assert len(counters) == 135  # every name of the header line
    assert "PAWSPassive" not in counters  # gone since Linux 4.12: absent, not 0
    assert set(select_fields(counters, DEFAULT)) == {
        "TW",
        "TWRecycled",
        "TWKilled",
        "PAWSActive",
        "PAWSEstab",
        "TSEcrRejected",
        "PAWSOldAck",
        "PAWSTimewait",
        "ListenOverflows",
        "ListenDrops",
        "TCPTimeWaitOverflow",
        "TCPACKSkippedPAWS",
        "TCPACKSkippedTimeWait",
    }


def test_old_kernel_has_paws_passive_and_no_paws_old_ack() -> None:
    counters = parse_netstat((TREES / "linux-4.9/proc/net/netstat").read_text())
    selected = select_fields(counters, DEFAULT)
    assert selected["PAWSPassive"] == 7
    assert selected["TW"] == 12
    assert "PAWSOldAck" not in selected
    assert not any(name.startswith("TCPACKSkipped") for name in selected)


def test_other_groups_are_ignored() -> None:
    text = "IpExt: InNoRoutes InTruncatedPkts\nIpExt: 1 2\nTcpExt: TW TWKilled\nTcpExt: 5 6\n"
    assert parse_netstat(text) == {"TW": 5, "TWKilled": 6}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("netstat-truncated", "names but"),
        ("netstat-count-mismatch", "names but"),
        ("netstat-non-numeric", "not a number"),
        ("netstat-empty", "no TcpExt lines"),
    ],
)
def test_corrupt_files_raise_clear_errors(name: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_netstat((FIXTURES / "corrupt" / name).read_text())


def test_binary_garbage_is_a_source_error(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "thread-self").mkdir()
    (tmp_path / "thread-self/net").symlink_to("../net")
    (tmp_path / "net/netstat").write_bytes((FIXTURES / "corrupt/netstat-binary").read_bytes())
    context = NetnsContext.open(tmp_path, None, None, wanted([netstat.SOURCE]))
    with pytest.raises(SourceError, match="not text"):
        read_netstat(context)


def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    context = NetnsContext.open(tmp_path, None, None, wanted([netstat.SOURCE]))
    with pytest.raises(SourceError, match="cannot open"):
        read_netstat(context)


@pytest.mark.parametrize(
    ("kernel", "metric"),
    [
        ("TW", "tw"),
        ("TWRecycled", "tw_recycled"),
        ("TWKilled", "tw_killed"),
        ("TCPTimeWaitOverflow", "tcp_time_wait_overflow"),
        ("PAWSPassive", "paws_passive"),
        ("PAWSActive", "paws_active"),
        ("PAWSOldAck", "paws_old_ack"),
        ("PAWSTimewait", "paws_timewait"),
        ("TSEcrRejected", "ts_ecr_rejected"),
        ("TCPACKSkippedTimeWait", "tcp_ack_skipped_time_wait"),
        ("TCPACKSkippedPAWS", "tcp_ack_skipped_paws"),
        ("ListenOverflows", "listen_overflows"),
        ("TCPMD5NotFound", "tcp_md5_not_found"),
        ("DelayedACKs", "delayed_acks"),
        ("TCPDSACKOldSent", "tcp_dsack_old_sent"),
    ],
)
def test_snake_case(kernel: str, metric: str) -> None:
    assert snake_case(kernel) == metric


def test_live_namespace_equals_proc(netns: Netns) -> None:
    with netns.context() as context:
        before = netns.read("net/netstat")
        ours = read_netstat(context)
        after = netns.read("net/netstat")
    assert before == after  # an idle namespace: nothing moved while we read
    assert ours == parse_netstat(before)
    assert ours["TW"] == 0


def test_every_recorded_counter_gets_a_unique_valid_name() -> None:
    counters = parse_netstat((TREES / "linux-6.18/proc/net/netstat").read_text())
    names = [snake_case(name) for name in counters]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", n) for n in names)
    assert snake_case("DelayedACKs") == "delayed_acks"


# -- property tests (hypothesis); fuzz/targets.py runs the same parser under atheris ------

RECORDED = [
    (TREES / "linux-6.18/proc/net/netstat").read_bytes(),
    (TREES / "linux-4.9/proc/net/netstat").read_bytes(),
]
_NAMES = st.lists(st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,24}", fullmatch=True), unique=True)


@st.composite
def netstat_files(draw: st.DrawFn) -> tuple[str, dict[str, int]]:
    """A netstat file with a TcpExt group of generated counters among other groups."""
    counters = {name: draw(st.integers(0, 2**64 - 1)) for name in draw(_NAMES.filter(bool))}
    groups = [("TcpExt", counters)]
    for group in draw(st.lists(st.sampled_from(["IpExt", "MPTcpExt", "Tcp"]), unique=True)):
        groups.insert(draw(st.integers(0, len(groups))), (group, {"InX": 1, "OutY": 2}))
    lines = []
    for group, fields in groups:
        lines.append(" ".join([f"{group}:", *fields]))
        lines.append(" ".join([f"{group}:", *map(str, fields.values())]))
    return "\n".join(lines) + "\n", counters


@FUZZ
@given(netstat_files())
def test_generated_file_parses_to_exactly_its_counters(doc: tuple[str, dict[str, int]]) -> None:
    text, counters = doc
    parsed = parse_netstat(text)
    assert parsed == counters and list(parsed) == list(counters)
    for name in parsed:
        snake_case(name)


@FUZZ
@given(mutated(st.sampled_from(RECORDED) | netstat_files().map(lambda d: d[0].encode())))
def test_mutated_file_parses_or_raises_source_error(data: bytes) -> None:
    for text in decodings(data):
        try:
            counters = parse_netstat(text)
        except SourceError:
            continue
        words = oracles.two_line_group(text, "TcpExt")
        assert counters == {name: int(value) for name, value in words.items()}
        assert list(counters) == list(words)
        assert all(0 <= v < 10**20 for v in counters.values())
        for name in counters:
            snake_case(name)


@FUZZ
@given(st.text() | st.binary().map(lambda b: b.decode("latin-1")))
def test_any_text_parses_or_raises_source_error(text: str) -> None:
    parses_or_rejects(parse_netstat, text.encode("utf-8", "surrogateescape"))
    parses_or_rejects(parse_netstat, f"TcpExt: A B\nTcpExt: 1 {text}\n".encode())


@pytest.mark.parametrize("value", ["²", "٣", "9" * 4400, "1" * 21])
def test_value_int_cannot_read_is_a_source_error(value: str) -> None:
    """Found by fuzzing: str.isdigit() accepts "²" and digit strings past int()'s 4300-digit
    limit, and int() then raised ValueError."""
    with pytest.raises(SourceError, match="not a number"):
        parse_netstat(f"TcpExt: TW TWKilled\nTcpExt: 1 {value}\n")


# -- the read path (parse_chosen): what parse_netstat then select_fields give ------------


def chosen_by_full_parse(
    text: str, choice: netstat.Choice, group: str, signed: frozenset[str]
) -> dict[str, int] | str:
    """The reference: the whole group parsed, then the chosen counters; or the error."""
    try:
        counters = parse_netstat(text, group, signed)
    except SourceError as exc:
        return str(exc)
    if isinstance(choice, tuple):
        return {name: counters[name] for name in choice if name in counters}
    return select_fields(counters, choice)


def chosen(
    text: str, choice: netstat.Choice, group: str, signed: frozenset[str]
) -> dict[str, int] | str:
    try:
        result = netstat.parse_chosen(text, choice, group, signed)
    except SourceError as exc:
        return str(exc)
    return result


CHOICES: list[tuple[netstat.Choice, str, frozenset[str]]] = [
    (DEFAULT, "TcpExt", frozenset()),
    (re.compile("."), "TcpExt", frozenset()),
    (("ListenDrops", "TW", "Nope", "A"), "TcpExt", frozenset({"TW"})),
    (("ActiveOpens", "MaxConn", "CurrEstab"), "Tcp", frozenset({"MaxConn"})),
]


@FUZZ
@given(
    mutated(
        st.sampled_from(
            [
                *RECORDED,
                (TREES / "linux-6.18/proc/net/snmp").read_bytes(),
                b"TcpExt: A TW\nTcpExt: 1 -\nTcp: MaxConn A\nTcp: -1 2\n",
            ]
        )
        | netstat_files().map(lambda d: d[0].encode())
    ),
    st.sampled_from(CHOICES),
)
def test_chosen_counters_equal_those_of_the_full_parse(
    data: bytes, choosing: tuple[netstat.Choice, str, frozenset[str]]
) -> None:
    """Same counters, same order, same error; read twice (the header's layout cached)."""
    for text in decodings(data):
        expected = chosen_by_full_parse(text, *choosing)
        assert chosen(text, *choosing) == expected
        assert chosen(text, *choosing) == expected
        if isinstance(expected, dict):
            assert list(netstat.parse_chosen(text, *choosing)) == list(expected)


@pytest.mark.parametrize(
    "row",
    ["1 -", "1 --2", "- 2", "-2 -", "1 2 3", "1", "1 ²", "1 " + "1" * 21, "-" + "1" * 21 + " 2"],
)
def test_chosen_counters_reject_what_the_full_parse_rejects(row: str) -> None:
    for group, signed in (("TcpExt", frozenset()), ("TcpExt", frozenset({"TW"}))):
        text = f"{group}: TW TWKilled\n{group}: {row}\n"
        expected = chosen_by_full_parse(text, DEFAULT, group, signed)
        assert isinstance(expected, str), expected
        assert chosen(text, DEFAULT, group, signed) == expected
