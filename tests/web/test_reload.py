"""The web config follows its file: SIGHUP and changes on disk apply without a restart,
and a file that turns bad keeps the last good config with one error line."""

from __future__ import annotations

import signal
from pathlib import Path

import bcrypt

from tests.kernel import wait_until
from tests.serving import running
from tests.web.test_auth import basic


def users_file(path: Path, user: str, password: str) -> None:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    path.write_text(f"basic_auth_users:\n  {user}: '{hashed}'\n")


def test_sighup_and_file_changes_reload_the_web_config(tmp_path: Path) -> None:
    config = tmp_path / "web.yml"
    users_file(config, "alice", "one")
    with running(f"--web.config.file={config}") as daemon:
        assert daemon.get(headers=basic("alice", "one"))[0].status == 200
        # Changed on disk: picked up by the watcher within a couple of seconds.
        users_file(config, "alice", "two")
        wait_until(
            lambda: daemon.get(headers=basic("alice", "two"))[0].status == 200,
            timeout=5,
            what="the new password",
        )
        assert daemon.get(headers=basic("alice", "one"))[0].status == 401
        # A file turned bad keeps the last good config.
        config.write_text("basic_auth_users:\n  alice: plaintext\n")
        daemon.wait_for_event("web config reload failed", reason="changed on disk")
        assert daemon.get(headers=basic("alice", "two"))[0].status == 200
        # SIGHUP re-reads even when the watcher has already seen the file.
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for_event("web config reload failed", reason="SIGHUP")
        users_file(config, "bob", "three")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: daemon.get(headers=basic("bob", "three"))[0].status == 200,
            timeout=5,
            what="bob",
        )
        assert daemon.get(headers=basic("alice", "two"))[0].status == 401
        events = daemon.stop()
    failed = [
        e for e in events if e["event"] == "web config reload failed, keeping the last good one"
    ]
    # The bad file: once when the watcher saw it, once for the first SIGHUP.
    assert [e["reason"] for e in failed] == ["changed on disk", "SIGHUP"], events
    assert "basic_auth_users.alice: not a bcrypt hash" in str(failed[0]["error"])
    reloaded = [e["reason"] for e in events if e["event"] == "web config reloaded"]
    assert reloaded[0] == "changed on disk" and len(reloaded) == 2, events
