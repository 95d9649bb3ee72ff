from __future__ import annotations

import pytest

from exporter.sources import SourceError
from exporter.sources.sockstat import parse_sockstat
from tests.conftest import FIXTURES, TREES


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
