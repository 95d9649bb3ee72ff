"""`timewait-exporter dump` end to end: in real namespaces against ss, /proc and /sys, and
on recorded trees through --path.procfs / --path.sysfs."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.engine.registry import COLLECTORS
from exporter.sources import PAGE_SIZE
from exporter.sources.netstat import DEFAULT_FIELDS, parse_netstat, snake_case
from exporter.sources.slab import CACHES, read_sysfs_cache
from tests.conftest import FIXTURES
from tests.exposition import samples, series, value
from tests.kernel import (
    Netns,
    connect,
    nsenter,
    populate_all_states,
    sockets_script,
    ss_states,
    time_wait_pairs,
    unnamed_namespace,
)
from tests.kernel import new_netns as kernel_netns

EXPORTER = [sys.executable, "-m", "exporter"]


def dump_tree(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *EXPORTER,
            "dump",
            "--path.procfs",
            str(root / "proc"),
            "--path.sysfs",
            str(root / "sys"),
            "--no-collector.sockdiag",
            "--netns=self",
            "--netns.name",
            "fixture",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dump_in_namespace_equals_kernel(netns: Netns) -> None:
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40999")
    netns.sysctl("net.ipv4.tcp_max_tw_buckets", "5000")
    netns.sysctl("net.ipv4.ip_local_reserved_ports", "40100-40109")
    populate_all_states(netns)
    for _ in range(5):
        ss_before = netns.ss_states()
        netstat_before = netns.read("net/netstat")
        result = netns.exporter("dump")
        if ss_before == netns.ss_states() and netstat_before == netns.read("net/netstat"):
            break
    parsed = samples(result.stdout)
    label = {"netns": netns.name}
    sockets = {
        (dict(k)["family"], dict(k)["state"]): v for k, v in series(parsed, "tcptw_sockets").items()
    }
    assert {k: v for k, v in sockets.items() if v} == dict(ss_before)
    expected_tcpext = {
        name: v
        for name, v in parse_netstat(netstat_before).items()
        if re.search(DEFAULT_FIELDS, name)
    }
    assert expected_tcpext  # the default regex matched something
    for name, v in expected_tcpext.items():
        assert value(parsed, f"tcptw_tcpext_{snake_case(name)}_total", **label) == v, name
    assert value(parsed, "tcptw_sysctl_ip_local_port_range_min", **label) == 40000
    assert value(parsed, "tcptw_sysctl_ip_local_port_range_max", **label) == 40999
    assert value(parsed, "tcptw_sysctl_tcp_max_tw_buckets", **label) == 5000
    assert value(parsed, "tcptw_sysctl_ip_local_reserved_ports", **label) == 10
    assert value(parsed, "tcptw_sysctl_tcp_tw_reuse", **label) == 0
    sockstat = netns.read("net/sockstat").split("TCP:")[1].split()
    assert value(parsed, "tcptw_sockstat_tcp_tw", **label) == int(
        sockstat[sockstat.index("tw") + 1]
    )
    for source in ("sockdiag", "netstat", "sockstat", "sysctl"):
        assert value(parsed, "tcptw_source_success", netns=netns.name, source=source) == 1
    assert value(parsed, "tcptw_source_success", netns="", source="slab") == 1
    slab = series(parsed, "tcptw_slab_memory_bytes")
    merged = {dict(k)["cache"]: dict(k)["merged"] for k in slab}
    for cache, flag in merged.items():
        assert flag == ("true" if Path(f"/sys/kernel/slab/{cache}").is_symlink() else "false")


def test_dump_slab_figures_equal_sys_kernel_slab(netns: Netns) -> None:
    """Slab caches are host-wide and move with every socket on the machine: a cache counts
    only when /sys/kernel/slab reads the same just before and after the dump."""
    sysfs = Path("/sys/kernel/slab")
    compared: set[str] = set()
    for _ in range(20):
        before = {name: read_sysfs_cache(sysfs, name, PAGE_SIZE) for name in CACHES}
        parsed = samples(netns.exporter("dump", "--no-collector.sockdiag").stdout)
        after = {name: read_sysfs_cache(sysfs, name, PAGE_SIZE) for name in CACHES}
        for name, cache in before.items():
            if cache is None or cache != after[name]:
                continue
            labels = {
                "cache": name,
                "merged": "true" if cache.merged else "false",
                "shared_cache": cache.shared_cache,
            }
            assert value(parsed, "tcptw_slab_objects", **labels) == cache.objects
            assert value(parsed, "tcptw_slab_active_objects", **labels) == cache.active_objects
            assert value(parsed, "tcptw_slab_object_size_bytes", **labels) == cache.object_size
            assert value(parsed, "tcptw_slab_memory_bytes", **labels) == cache.memory_bytes
            compared.add(name)
        if compared == {name for name, cache in before.items() if cache is not None}:
            break
    assert {"tw_sock_TCP", "tcp_bind_bucket"} <= compared  # one plain, one merged here


def test_time_wait_overflow_is_counted(netns: Netns) -> None:
    netns.sysctl("net.ipv4.tcp_max_tw_buckets", "50")

    def overflow() -> int:
        return parse_netstat(netns.read("net/netstat"))["TCPTimeWaitOverflow"]

    start = overflow()
    before = samples(netns.exporter("dump").stdout)
    listener = netns.listen("127.0.0.1", 8080)
    time_wait_pairs(netns, listener, 200)
    after = samples(netns.exporter("dump").stdout)
    label = {"netns": netns.name}
    metric = "tcptw_tcpext_tcp_time_wait_overflow_total"
    assert value(before, metric, **label) == start
    assert value(after, metric, **label) - start >= 150
    assert value(after, metric, **label) == overflow()
    assert value(after, "tcptw_sockets", family="ipv4", state="time_wait", **label) == 50


def test_console_script_runs_in_namespace(netns: Netns) -> None:
    script = shutil.which("timewait-exporter")
    if script is None:
        pytest.fail("the timewait-exporter console script is not installed (pip install -e .)")
    result = netns.run(script, "dump")
    assert f'tcptw_source_success{{netns="{netns.name}",source="sockdiag"}} 1.0' in result.stdout


def test_corrupt_netstat_fails_alone(tree: Path) -> None:
    shutil.copyfile(FIXTURES / "corrupt/netstat-count-mismatch", tree / "proc/net/netstat")
    result = dump_tree(tree)
    assert result.returncode == 0
    parsed = samples(result.stdout)
    assert value(parsed, "tcptw_source_success", netns="fixture", source="netstat") == 0
    for source in ("sockstat", "sysctl"):
        assert value(parsed, "tcptw_source_success", netns="fixture", source=source) == 1
    assert value(parsed, "tcptw_source_success", netns="", source="slab") == 1
    assert not series(parsed, "tcptw_tcpext_tw_total")  # absent, never a silent 0
    assert value(parsed, "tcptw_sockstat_tcp_tw", netns="fixture") == 11
    assert '"source": "netstat"' in result.stderr and "names but" in result.stderr


def test_exit_code_is_1_only_when_nothing_could_be_read(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()  # directories that exist, holding nothing to read
    (tmp_path / "sys").mkdir()
    result = dump_tree(tmp_path)
    assert result.returncode == 1
    assert "tcptw_build_info" in result.stdout


def test_collectors_can_be_switched_off(tree: Path) -> None:
    parsed = samples(dump_tree(tree, "--no-collector.slab", "--no-collector.netstat").stdout)
    sources = {dict(k)["source"] for k in series(parsed, "tcptw_source_success")}
    assert sources == {"snmp", "sockstat", "sysctl"}
    assert not series(parsed, "tcptw_slab_objects")


def test_netstat_field_regex(tree: Path) -> None:
    parsed = samples(dump_tree(tree, "--collector.netstat.fields", "^(TW|DelayedACKs)$").stdout)
    names = {name for name, _ in parsed if name.startswith("tcptw_tcpext_")}
    assert names == {"tcptw_tcpext_tw_total", "tcptw_tcpext_delayed_acks_total"}


@pytest.mark.parametrize(
    "args",
    [
        ["--collector.netstat.fields", "("],
        ["--poll.interval", "0"],
        ["--poll.interval", "nan"],
        ["--poll.interval", "inf"],
        ["--web.telemetry-path", "metrics"],
        ["--web.listen-address", "garbage"],
        ["--web.listen-address", ":99999"],
        ["--web.listen-address", "localhost:9961"],  # names are not resolved
        ["--web.listen-address", "no.such.host:9961"],
        ["--poll.interval", "1e-9"],
        ["--web.telemetry-path", "/metrics?x"],
        ["--web.max-connections", "0"],
        ["--metrics.detail-hold", "-1"],
        ["--bogus"],
        ["--poll.workers", "0"],
        ["--netns", ","],
        ["--web.max-requests", "0"],
        ["--web.read-timeout", "nan"],
        ["--web.idle-timeout", "-1"],
        ["--web.telemetry-path", "/healthz"],
        ["--path.procfs", "/nonexistent"],
        ["--path.sysfs", "/etc/hostname"],
        ["--path.pod-logs", "/nonexistent"],
        [f"--no-collector.{name}" for name in COLLECTORS],
    ],
)
def test_bad_flags_are_one_line_errors(args: list[str]) -> None:
    result = subprocess.run([*EXPORTER, "serve", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, args
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("timewait-exporter: "), result.stderr
    assert lines[0].endswith("(see --help)")


def test_a_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*EXPORTER, "serve", "--web.listen-address", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"timewait-exporter: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_a_missing_web_config_file_is_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *EXPORTER,
            "serve",
            "--web.listen-address=127.0.0.1:0",
            f"--web.config.file={tmp_path / 'web.yml'}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"timewait-exporter: --web.config.file {tmp_path / 'web.yml'}: cannot read "
        f"{tmp_path / 'web.yml'}: No such file or directory"
    )


def test_debug_logging_tells_what_each_poll_did(netns: Netns) -> None:
    """--log.level=debug: one line per namespace (outcome, time, failed sources) and a
    poll summary; nothing at the default level."""
    netns.listen("127.0.0.1", 8080)
    quiet = netns.exporter("dump", "--log.format=json")
    assert quiet.stderr == ""
    result = netns.exporter("dump", "--log.level=debug", "--log.format=json")
    events = [json.loads(line) for line in result.stderr.splitlines()]
    polled = [e for e in events if e["event"] == "namespace polled"]
    assert len(polled) == 1 and polled[0]["outcome"] == "dumped" and polled[0]["failed"] == []
    summary = [e for e in events if e["event"] == "poll summary"]
    assert len(summary) == 1 and summary[0]["namespaces"] == 1
    assert summary[0]["outcome_dumped"] == 1


def test_dump_from_the_host_equals_ss_in_every_namespace(kernel: None) -> None:
    """Default flags, run from the host: 3 named namespaces and 2 unnamed ones kept alive
    only by a process, each with its own sockets and port range, each equal to `ss` run
    inside it, state by state."""
    with contextlib.ExitStack() as stack:
        expected_range: dict[str, tuple[int, int]] = {}
        ss_prefix: dict[str, list[str]] = {}
        for i in range(3):
            ns = stack.enter_context(kernel_netns())
            low = 30000 + 1000 * i
            ns.sysctl("net.ipv4.ip_local_port_range", f"{low} {low + 499}")
            listener = ns.listen("127.0.0.1", 8080)
            time_wait_pairs(ns, listener, 3 + i)
            for _ in range(i + 1):
                connect(ns, "", ("127.0.0.1", 8080))
                ns.held.append(listener.accept()[0])
            expected_range[ns.name] = (low, low + 499)
            ss_prefix[ns.name] = ["ip", "netns", "exec", ns.name]
        for i in range(2):
            low = 50000 + 1000 * i
            script = sockets_script(f"{low} {low + 99}", timewait=2 + i, established=i)
            process = stack.enter_context(unnamed_namespace(script))
            label = f"ino-{Path(f'/proc/{process.pid}/ns/net').stat().st_ino}"
            expected_range[label] = (low, low + 99)
            ss_prefix[label] = nsenter(process.pid)
        for _ in range(5):
            before = {label: ss_states(prefix) for label, prefix in ss_prefix.items()}
            result = subprocess.run(
                [*EXPORTER, "dump"], capture_output=True, text=True, timeout=120, check=True
            )
            after = {label: ss_states(prefix) for label, prefix in ss_prefix.items()}
            if before == after:
                break
        parsed = samples(result.stdout)
        info = {dict(k)["netns"] for k in series(parsed, "tcptw_netns_info")}
        assert "host" in info and set(expected_range) <= info
        for label, states in before.items():
            ours = {
                (dict(k)["family"], dict(k)["state"]): v
                for k, v in series(parsed, "tcptw_sockets").items()
                if dict(k)["netns"] == label and v
            }
            assert ours == dict(states), label
            low, high = expected_range[label]
            assert value(parsed, "tcptw_sysctl_ip_local_port_range_min", netns=label) == low
            assert value(parsed, "tcptw_sysctl_ip_local_port_range_max", netns=label) == high
            assert value(parsed, "tcptw_ephemeral_ports_available", netns=label) == high - low + 1
            for source in ("sockdiag", "netstat", "sockstat", "sysctl"):
                assert value(parsed, "tcptw_source_success", netns=label, source=source) == 1
        assert "error" not in result.stderr
