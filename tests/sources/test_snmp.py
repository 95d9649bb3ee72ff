from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.config import Config
from exporter.engine.poller import Poller
from exporter.sources import SourceError
from exporter.sources.netstat import parse_netstat
from exporter.sources.snmp import FIELDS, SIGNED, parse_snmp_tcp
from tests import oracles
from tests.conftest import TREES
from tests.fuzzing import FUZZ, mutated
from tests.fuzzing import texts as decodings
from tests.kernel import Netns, connect

RECORDED = (TREES / "linux-6.18/proc/net/snmp").read_text()


def test_parses_the_recorded_tcp_group() -> None:
    """Exact values of the recorded file's Tcp value line; MaxConn -1 is accepted."""
    assert parse_snmp_tcp(RECORDED) == {
        "ActiveOpens": 1773,
        "AttemptFails": 410,
        "EstabResets": 175,
        "CurrEstab": 4,
    }
    assert parse_netstat(RECORDED, "Tcp", SIGNED)["MaxConn"] == -1


def test_a_negative_counter_is_rejected() -> None:
    bad = RECORDED.replace("Tcp: 1 200 120000 -1 1773", "Tcp: 1 200 120000 -1 -1773")
    assert bad != RECORDED
    with pytest.raises(SourceError, match="ActiveOpens is not a number"):
        parse_snmp_tcp(bad)


def test_a_kernel_without_a_field_has_it_absent() -> None:
    """A Tcp group without CurrEstab (as an older or trimmed kernel could print it)."""
    header, values = (line for line in RECORDED.splitlines() if line.startswith("Tcp:"))
    names, numbers = header.split(), values.split()
    index = names.index("CurrEstab")
    text = " ".join(names[:index] + names[index + 1 :]) + "\n"
    text += " ".join(numbers[:index] + numbers[index + 1 :]) + "\n"
    assert "CurrEstab" not in parse_snmp_tcp(text)
    assert parse_snmp_tcp(text)["ActiveOpens"] == 1773


def test_the_source_equals_proc_net_snmp_in_the_same_namespace(netns: Netns) -> None:
    """3 connections held open and 2 refused connects: the poll's values equal the
    namespace's /proc/net/snmp read just before and after (unchanged in between), and
    they are exactly what the kernel counts for that traffic."""
    listener = netns.listen("127.0.0.1", 8080)
    clients = [connect(netns, "", ("127.0.0.1", 8080)) for _ in range(3)]
    servers = [listener.accept()[0] for _ in range(3)]
    for _ in range(2):
        refused = netns.new_socket()
        with pytest.raises(ConnectionRefusedError):
            refused.connect(("127.0.0.1", 9))
    poller = Poller(Config(netns=frozenset({netns.name}), collectors=frozenset({"snmp"})))
    try:
        before = parse_snmp_tcp(netns.read("net/snmp"))
        snapshot = poller.poll_once()
        after = parse_snmp_tcp(netns.read("net/snmp"))
    finally:
        poller.close()
        for sock in servers:
            sock.close()
    (result,) = snapshot.results
    assert result.ok and result.netns == netns.name
    assert before == after == result.data
    # A refused connect sent its SYN (an active open) and went back to CLOSED from
    # SYN-SENT (an attempt failed); each held connection is established at both ends.
    assert result.data == {"ActiveOpens": 5, "AttemptFails": 2, "EstabResets": 0, "CurrEstab": 6}
    assert [c.getpeername() for c in clients] == [("127.0.0.1", 8080)] * 3  # still held


# -- property tests (hypothesis); fuzz/targets.py runs the same parser under atheris ------


@FUZZ
@given(mutated(st.just(RECORDED.encode())))
def test_mutated_snmp_parses_or_is_rejected(data: bytes) -> None:
    for text in decodings(data):
        try:
            values = parse_snmp_tcp(text)
        except SourceError:
            continue
        row = oracles.two_line_group(text, "Tcp")  # the exported fields that it has
        assert values == {name: int(row[name]) for name in FIELDS if name in row}
