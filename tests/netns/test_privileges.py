"""Missing privileges are loud (issue 20): the judgement on its own, then the real daemon
with `--netns=all` run without CAP_SYS_PTRACE, without CAP_SYS_ADMIN and without any
capability (setpriv), beside an unnamed namespace held by a root process: one warning
naming what is missing, tcptw_netns_discovery_limited{reason} and a red /readyz. The
image test (tests/test_image.py) runs the same cases in the container."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from exporter.netns.privileges import (
    CAP_SYS_ADMIN,
    CAP_SYS_PTRACE,
    REASONS,
    Evidence,
    describe,
    effective_capabilities,
    judge,
)
from tests.exposition import samples, series
from tests.kernel import unnamed_namespace, wait_until
from tests.serving import Daemon, running

BOTH = 1 << CAP_SYS_PTRACE | 1 << CAP_SYS_ADMIN
METRIC = "tcptw_netns_discovery_limited"


def test_judgement() -> None:
    refused = Evidence(links_refused=3, host_found=True)
    assert judge(BOTH, Evidence(), False) == frozenset()
    assert judge(BOTH, refused, False) == frozenset()  # pid 1 refused to root, host found
    assert judge(BOTH, Evidence(links_refused=3, host_found=False), False) == {"ns_link_denied"}
    assert judge(1 << CAP_SYS_ADMIN, refused, False) == {"no_cap_sys_ptrace"}
    assert judge(1 << CAP_SYS_ADMIN, Evidence(), False) == frozenset()  # nothing refused
    assert judge(1 << CAP_SYS_PTRACE, Evidence(), False) == {"no_cap_sys_admin"}
    assert judge(BOTH, Evidence(), True) == {"no_cap_sys_admin"}  # user namespace, seccomp
    assert judge(0, refused, False) == {"no_cap_sys_ptrace", "no_cap_sys_admin"}
    assert judge(None, Evidence(listed=False), False) == {"proc_unreadable"}
    assert judge(None, refused, False) == frozenset()  # unknown capabilities: evidence only


def test_the_warning_says_what_is_missing_and_lost() -> None:
    assert describe(frozenset({"no_cap_sys_ptrace"}), 1) == (
        "namespace discovery is limited (no CAP_SYS_PTRACE): only the exporter's own "
        "namespace is polled"
    )
    assert describe(frozenset({"no_cap_sys_admin"}), 1).endswith(
        "(no CAP_SYS_ADMIN): namespaces are found but cannot be entered"
    )
    both = frozenset({"no_cap_sys_admin", "no_cap_sys_ptrace"})
    assert describe(both, 1).endswith(
        "(no CAP_SYS_ADMIN, no CAP_SYS_PTRACE): only the exporter's own namespace is polled"
    )
    assert describe(both, 4).endswith(
        "the namespaces of processes it may not read are not found; namespaces are found "
        "but cannot be entered"
    )


def test_effective_capabilities(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000280000\n")
    assert effective_capabilities(str(status)) == BOTH
    assert effective_capabilities(str(tmp_path / "absent")) is None
    assert effective_capabilities() is not None


def limited(daemon: Daemon) -> dict[str, float]:
    parsed = samples(daemon.get()[1].decode())
    return {dict(k)["reason"]: v for k, v in series(parsed, METRIC).items()}


def limit_warning(events: list[dict[str, object]]) -> dict[str, object]:
    """The one warning (a second poll does not repeat it)."""
    found = [e for e in events if str(e["event"]).startswith("namespace discovery is limited")]
    assert len(found) == 1, events
    return found[0]


def run_limited(drop: tuple[str, ...], expected: set[str]) -> list[dict[str, object]]:
    """The daemon under `drop` (setpriv options), once its first poll is rendered: the
    metric holds exactly `expected`, /readyz is 503 naming them. The log lines."""
    with (
        unnamed_namespace() as holder,
        running(
            "--netns=all",
            "--poll.interval=1",
            "--collector.sockstat",
            prefix=("setpriv", *drop),
        ) as daemon,
    ):
        inode = Path(f"/proc/{holder.pid}/ns/net").stat().st_ino
        wait_until(lambda: bool(limited(daemon)), timeout=15, what="the first poll")
        assert {r for r, v in limited(daemon).items() if v == 1} == expected
        assert set(limited(daemon)) == set(REASONS)
        response, body = daemon.get("/readyz")
        assert response.status == 503
        named = ", ".join(r for r in REASONS if r in expected)
        assert body.decode().strip() == f"not ready: namespace discovery is limited ({named})"
        parsed = samples(daemon.get()[1].decode())
        labels = {dict(k)["netns"] for k in series(parsed, "tcptw_netns_info")}
        time.sleep(1.5)  # a second poll: the warning is not repeated
        events = daemon.stop()
    warning = limit_warning(events)
    assert warning["level"] == "warning" and warning["reasons"] == sorted(expected)
    assert warning["metric"] == METRIC
    found = f"ino-{inode}" in labels
    assert found == ("no_cap_sys_ptrace" not in expected), labels
    return events


def test_without_cap_sys_ptrace(kernel: None) -> None:
    """Root without CAP_SYS_PTRACE: root processes with more capabilities refuse their
    links (cap_ptrace_access_check), so the holder's namespace is not found."""
    events = run_limited(("--inh-caps=-all", "--bounding-set=-sys_ptrace"), {"no_cap_sys_ptrace"})
    assert "(no CAP_SYS_PTRACE)" in str(limit_warning(events)["event"])


def test_without_cap_sys_admin(kernel: None) -> None:
    """Root without CAP_SYS_ADMIN: the holder's namespace is found, but setns is refused:
    it fails with one line and tcptw_source_success 0."""
    events = run_limited(("--inh-caps=-all", "--bounding-set=-sys_admin"), {"no_cap_sys_admin"})
    assert str(limit_warning(events)["event"]).endswith(
        "namespaces are found but cannot be entered"
    )
    # One warning says it for every namespace: no error line per namespace (debug only).
    failed = [e for e in events if e["event"] == "source failed" and e["source"] == "netns"]
    assert failed == []


def test_without_any_capability(kernel: None) -> None:
    run_limited(
        (
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ),
        {"no_cap_sys_ptrace", "no_cap_sys_admin"},
    )


@pytest.mark.parametrize("netns", ["self"])
def test_netns_self_is_never_limited(kernel: None, netns: str) -> None:
    """--netns=self needs no privilege: no metric, no warning, /readyz green."""
    with running(
        f"--netns={netns}",
        "--collector.sockstat",
        prefix=("setpriv", "--inh-caps=-all", "--bounding-set=-all"),
        ready_path="/readyz",
    ) as daemon:
        assert limited(daemon) == {}
        events = daemon.stop()
    assert not [e for e in events if "discovery" in str(e["event"])], events
