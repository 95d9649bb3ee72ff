"""TLS from --web.config.file on a real daemon, with certificates made by openssl: server
only, client certificates required or optional, allowed SANs, and certificates replaced
on disk while it serves."""

from __future__ import annotations

import http.client
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kernel import wait_until
from tests.serving import HOST, Pki, free_port, issue, make_pki, running, server_certificate

REFUSED = (ssl.SSLError, ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)


def web_config(directory: Path, pki: Pki, extra: str = "") -> Path:
    """A web config in `directory` with copies of the server certificate and the CA,
    named relative to it (as exporter-toolkit resolves them)."""
    directory.mkdir(exist_ok=True)
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(pki.directory / name, directory / name)
    path = directory / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n" + extra)
    return path


def status(daemon_port: int, context: ssl.SSLContext, path: str = "/metrics") -> int:
    conn = http.client.HTTPSConnection(HOST, daemon_port, timeout=5, context=context)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.kernel  # root: else the slab source (/sys/kernel/slab, 0400) logs a failure
def test_tls_without_client_certificates(pki: Pki, tmp_path: Path) -> None:
    config = web_config(tmp_path, pki, "  min_version: TLS12\n")
    with running(f"--web.config.file={config}", context=pki.client_context(False)) as daemon:
        assert status(daemon.port, pki.client_context(with_cert=False)) == 200
        plain = http.client.HTTPConnection(HOST, daemon.port, timeout=5)
        with pytest.raises((http.client.HTTPException, ConnectionResetError)):
            plain.request("GET", "/metrics")
            plain.getresponse().read()
        events = [line["event"] for line in daemon.stop()]
    assert events == ["listening", "shutting down"], events


def test_require_and_verify_client_cert(pki: Pki, tmp_path: Path) -> None:
    config = web_config(
        tmp_path, pki, "  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n"
    )
    with running(f"--web.config.file={config}", context=pki.client_context()) as daemon:
        assert status(daemon.port, pki.client_context(with_cert=True)) == 200
        with pytest.raises(REFUSED):
            status(daemon.port, pki.client_context(with_cert=False))
        stranger = make_pki(tmp_path / "other")  # a certificate from another CA
        context = pki.client_context(with_cert=False)
        context.load_cert_chain(
            stranger.directory / "client.crt", stranger.directory / "client.key"
        )
        with pytest.raises(REFUSED):
            status(daemon.port, context)
        assert status(daemon.port, pki.client_context()) == 200  # still serving


def test_verify_client_cert_if_given_and_allowed_sans(pki: Pki, tmp_path: Path) -> None:
    optional = web_config(
        tmp_path / "optional",
        pki,
        "  client_ca_file: ca.crt\n  client_auth_type: VerifyClientCertIfGiven\n",
    )
    with running(f"--web.config.file={optional}", context=pki.client_context()) as daemon:
        assert status(daemon.port, pki.client_context(with_cert=False)) == 200
        assert status(daemon.port, pki.client_context(with_cert=True)) == 200
    sans = web_config(
        tmp_path / "sans",
        pki,
        "  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_allowed_sans: [prometheus.example]\n",
    )
    with running(f"--web.config.file={sans}", context=pki.client_context()) as daemon:
        assert status(daemon.port, pki.client_context()) == 200  # SAN DNS:prometheus.example
        issue(pki.directory, "intruder", "subjectAltName=DNS:intruder.example")
        context = pki.client_context(with_cert=False)
        context.load_cert_chain(pki.directory / "intruder.crt", pki.directory / "intruder.key")
        assert status(daemon.port, context) == 403


def test_certificate_change_is_picked_up_without_restart(pki: Pki, tmp_path: Path) -> None:
    """A new certificate written over the old one is served to the next handshake; one
    that turns unreadable keeps the last good one, with one error line per change."""
    config = web_config(tmp_path, pki)
    client = pki.client_context(with_cert=False)
    with running(f"--web.config.file={config}", context=client) as daemon:
        before = server_certificate(daemon.port, client)
        kept = http.client.HTTPSConnection(HOST, daemon.port, timeout=5, context=client)
        kept.request("GET", "/healthz")
        kept.getresponse().read()
        renewed = tmp_path / "renewed"
        renewed.mkdir()
        shutil.copy(pki.directory / "ca.crt", renewed)
        shutil.copy(pki.directory / "ca.key", renewed)
        issue(renewed, "server", "subjectAltName=IP:127.0.0.1")
        shutil.copy(renewed / "server.key", tmp_path / "server.key")
        shutil.copy(renewed / "server.crt", tmp_path / "server.crt")
        wait_until(
            lambda: server_certificate(daemon.port, client) != before,
            timeout=5,
            what="the renewed certificate",
        )
        after = server_certificate(daemon.port, client)
        kept.request("GET", "/healthz")  # a connection made before the change lives on
        assert kept.getresponse().read() == b"ok\n"
        (tmp_path / "server.crt").write_text("not a certificate\n")
        daemon.wait_for_event("web config reload failed")
        time.sleep(1.5)  # under test: the next check (every 1 s) of the same bad file is silent
        assert server_certificate(daemon.port, client) == after
        assert status(daemon.port, client) == 200
        events = daemon.stop()
    failures = [e for e in events if str(e["event"]).startswith("web config reload failed")]
    assert len(failures) == 1, events
    assert "cannot load cert_file" in str(failures[0]["error"])
    assert [e["reason"] for e in events if e["event"] == "web config reloaded"] == [
        "changed on disk"
    ]


def test_sighup_applies_a_new_client_auth_type(pki: Pki, tmp_path: Path) -> None:
    """A change that a context swap cannot make (the client auth type) re-creates the
    listener on SIGHUP."""
    config = web_config(tmp_path, pki)
    with running(f"--web.config.file={config}", context=pki.client_context()) as daemon:
        assert status(daemon.port, pki.client_context(with_cert=False)) == 200
        config.write_text(
            config.read_text()
            + "  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n"
        )
        daemon.proc.send_signal(signal.SIGHUP)

        def refuses_anonymous() -> bool:
            try:
                status(daemon.port, pki.client_context(with_cert=False))
            except REFUSED:
                return True
            except OSError:  # the moment between two listeners
                return False
            return False

        wait_until(refuses_anonymous, timeout=5, what="client certificates required")
        assert status(daemon.port, pki.client_context(with_cert=True)) == 200


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"server.crt": "garbage\n"}, "cannot load cert_file"),
        ({"server.key": None}, "cannot load cert_file"),
        ({"ca.crt": "not a CA\n"}, "client_ca_file"),
    ],
    ids=["garbage-cert", "missing-key", "bad-ca"],
)
def test_bad_files_are_refused_at_start_in_one_line(
    pki: Pki, tmp_path: Path, files: dict[str, str | None], message: str
) -> None:
    config = web_config(
        tmp_path, pki, "  client_ca_file: ca.crt\n  client_auth_type: VerifyClientCertIfGiven\n"
    )
    for name, text in files.items():
        if text is None:
            (tmp_path / name).unlink()
        else:
            (tmp_path / name).write_text(text)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "serve",
            "--netns=self",
            f"--web.listen-address={HOST}:{free_port()}",
            f"--web.config.file={config}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"timewait-exporter: --web.config.file {config}: "
    ), lines
    assert message in lines[0]
