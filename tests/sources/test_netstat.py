from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.context import NetnsContext
from exporter.sources import SourceError
from exporter.sources.netstat import (
    DEFAULT_FIELDS,
    parse_netstat,
    read_netstat,
    select_fields,
    snake_case,
)
from tests.conftest import FIXTURES, TREES
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
    context = NetnsContext.open(tmp_path, None, None, diag=False)
    with pytest.raises(SourceError, match="not text"):
        read_netstat(context)


def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    context = NetnsContext.open(tmp_path, None, None, diag=False)
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
