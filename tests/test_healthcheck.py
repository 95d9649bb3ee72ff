"""`timewait-exporter healthcheck` against a real daemon (tests/serving.py): it follows the
listen address and TLS from --web.config.file, given as its own flags or read from the
command line of the `serve` process it runs next to (the image's HEALTHCHECK has none)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest

from exporter import cli, healthcheck
from tests.conftest import tool
from tests.serving import HOST, Pki, free_port, make_pki, running


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "healthcheck", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tool("openssl", "Debian package openssl")
    return make_pki(tmp_path_factory.mktemp("pki"))


def web_config(directory: Path, pki: Pki, tls: str = "", users: bool = False) -> Path:
    """web.yml in `directory` naming copies of the server certificate (relative paths)."""
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(pki.directory / name, directory / name)
    text = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n" + tls
    if users:
        hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
        text += f"basic_auth_users:\n  prometheus: {hashed}\n"
    path = directory / "web.yml"
    path.write_text(text)
    return path


def test_non_default_listen_address() -> None:
    port = free_port()
    with running(port=port):
        result = check(f"--web.listen-address={HOST}:{port}")
        assert result.returncode == 0, result
        assert result.stdout == f"ok: http://{HOST}:{port}/healthz\n"
        # The default address (:9961) is not where this daemon listens.
        assert check("--web.listen-address=127.0.0.1:1").returncode == 1


def test_wildcard_listen_address_is_checked_on_loopback() -> None:
    port = free_port()
    with running(f"--web.listen-address=:{port}", port=port):
        result = check(f"--web.listen-address=:{port}")
        assert result.returncode == 0, result
        assert f"http://127.0.0.1:{port}/healthz" in result.stdout


def test_tls_and_basic_auth_from_the_web_config(pki: Pki, tmp_path: Path) -> None:
    config = web_config(tmp_path, pki, users=True)
    port = free_port()
    with running(f"--web.config.file={config}", port=port, context=pki.client_context(False)):
        result = check(f"--web.listen-address={HOST}:{port}", f"--web.config.file={config}")
        assert result.returncode == 0, result
        assert result.stdout == f"ok: https://{HOST}:{port}/healthz\n"
        # Plain HTTP to the TLS listener fails: the check must follow the config file.
        plain = check(f"--web.listen-address={HOST}:{port}")
        assert plain.returncode == 1 and plain.stdout.startswith("unhealthy: "), plain


@pytest.mark.parametrize("version", ["TLS13", "TLS12"])
def test_client_certificate_required(pki: Pki, tmp_path: Path, version: str) -> None:
    """The check has no client certificate: a completed handshake (TLS 1.3) or the
    server's alert asking for one (TLS 1.2) shows a live listener."""
    config = web_config(
        tmp_path,
        pki,
        "  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n"
        f"  max_version: {version}\n",
    )
    port = free_port()
    with running(f"--web.config.file={config}", port=port, context=pki.client_context()):
        result = check(f"--web.listen-address={HOST}:{port}", f"--web.config.file={config}")
        assert result.returncode == 0, result
        assert "client certificate required" in result.stdout


def test_unreadable_web_config_is_unhealthy(tmp_path: Path) -> None:
    result = check("--web.listen-address=127.0.0.1:1", f"--web.config.file={tmp_path / 'no'}")
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: --web.config.file: cannot read")


def fake_proc(root: Path, pid: int, cmdline: list[str], cwd: Path) -> Path:
    directory = root / str(pid)
    directory.mkdir(parents=True)
    (directory / "cmdline").write_bytes(b"".join(w.encode() + b"\0" for w in cmdline))
    (directory / "cwd").symlink_to(cwd)
    return root


def test_without_flags_it_follows_the_serving_process(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the image's HEALTHCHECK does: no flags of its own; PID 1 is the daemon, whose
    flags name a TLS config by a path relative to the daemon's working directory."""
    config = web_config(tmp_path, pki)
    port = free_port()
    with running(f"--web.config.file={config}", port=port, context=pki.client_context(False)):
        served = [
            "/opt/venv/bin/python3",
            "/opt/venv/bin/timewait-exporter",
            "serve",
            f"--web.listen-address=:{port}",
            "--web.config.file=web.yml",
            "--log.format=json",
        ]
        proc = fake_proc(tmp_path / "proc", 1, served, tmp_path)
        monkeypatch.setattr(healthcheck, "PROC", proc)
        monkeypatch.chdir("/")
        assert cli.main(["healthcheck"]) == 0
        assert capsys.readouterr().out == f"ok: https://127.0.0.1:{port}/healthz\n"
        # Its own flags replace the daemon's: here plain HTTP, which fails.
        assert cli.main(["healthcheck", f"--web.listen-address=127.0.0.1:{port}"]) == 1


def test_serving_process_is_found_when_not_pid_1(tmp_path: Path) -> None:
    parser = cli.build_parser()
    proc = tmp_path / "proc"
    fake_proc(proc, 1, ["/sbin/tini", "--", "timewait-exporter", "serve"], tmp_path)
    fake_proc(proc, 7, ["timewait-exporter", "--web.listen-address=:9100"], tmp_path)
    fake_proc(proc, 9, ["vi", "/opt/venv/bin/timewait-exporter"], tmp_path)
    fake_proc(proc, 11, ["python3", "-m", "exporter", "healthcheck"], tmp_path)
    found = healthcheck.serving_process(parser, proc)
    assert found is not None and found[0] == 7 and found[1].listen_address == ":9100"
    fake_proc(proc, 8, ["python3", "-m", "exporter", "serve"], tmp_path)
    assert healthcheck.serving_process(parser, proc) is None  # two: ambiguous, defaults


@pytest.mark.parametrize(
    ("cmdline", "args"),
    [
        (["/opt/venv/bin/python3", "/opt/venv/bin/timewait-exporter", "serve"], ["serve"]),
        (["timewait-exporter"], []),
        (["python3", "-m", "exporter", "--netns=self"], ["--netns=self"]),
        (["vi", "timewait-exporter"], None),
        (["sleep", "3600"], None),
    ],
)
def test_exporter_args(cmdline: list[str], args: list[str] | None) -> None:
    assert healthcheck.exporter_args(cmdline) == args


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (":9961", ("127.0.0.1", 9961)),
        ("0.0.0.0:9100", ("127.0.0.1", 9100)),
        ("[::]:9100", ("::1", 9100)),
        ("[::1]:9100", ("::1", 9100)),
        ("10.0.0.5:80", ("10.0.0.5", 80)),
    ],
)
def test_target(address: str, expected: tuple[str, int]) -> None:
    assert healthcheck.target(address) == expected
