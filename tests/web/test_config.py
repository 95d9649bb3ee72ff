"""--web.config.file parsing: exporter-toolkit's keys and rules, and a clear message
naming the key for everything refused."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from exporter.web.config import WebConfigError, load_web_config, parse_web_config

HASH = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"  # "fakepassword"
BASE = Path("/etc/exporter")


def test_full_file_in_exporter_toolkit_format() -> None:
    config = parse_web_config(
        f"""
tls_server_config:
  cert_file: server.crt
  key_file: /abs/server.key
  client_ca_file: ca.crt
  client_auth_type: RequireAndVerifyClientCert
  min_version: TLS13
  prefer_server_cipher_suites: true
  client_allowed_sans: [prometheus.example]
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  prometheus: {HASH}
""",
        BASE,
    )
    assert config.tls is not None
    assert config.tls.cert_file == BASE / "server.crt"  # relative to the file's directory
    assert config.tls.key_file == Path("/abs/server.key")
    assert config.tls.client_ca_file == BASE / "ca.crt"
    assert config.tls.verify_mode == ssl.CERT_REQUIRED
    assert config.tls.min_version == ssl.TLSVersion.TLSv1_3
    assert config.tls.max_version == ssl.TLSVersion.TLSv1_3
    assert config.tls.client_allowed_sans == frozenset({"prometheus.example"})
    assert dict(config.headers) == {
        "X-Frame-Options": "deny",
        "Strict-Transport-Security": "max-age=31536000",
    }
    assert dict(config.users) == {"prometheus": HASH.encode()}


def test_empty_file_and_empty_tls_section_mean_plain_http() -> None:
    assert parse_web_config("", BASE).tls is None
    assert parse_web_config("tls_server_config: {}\n", BASE).tls is None
    defaults = parse_web_config("tls_server_config: {cert_file: a, key_file: b}", BASE).tls
    assert defaults is not None and defaults.verify_mode == ssl.CERT_NONE
    assert defaults.min_version == ssl.TLSVersion.TLSv1_2  # exporter-toolkit's default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_server_config: [", "not valid YAML"),
        ("- a\n- b\n", "the file must be a mapping"),
        ("tls_config: {}\n", "unknown key tls_config"),
        ("tls_server_config: {key_file: k}\n", "missing cert_file"),
        ("tls_server_config: {cert_file: c}\n", "missing key_file"),
        (
            "tls_server_config: {cert_file: c, key_file: k, client_ca_file: ca}\n",
            "client_ca_file is set without a client_auth_type",
        ),
        (
            "tls_server_config: {cert_file: c, key_file: k,"
            " client_auth_type: RequireAndVerifyClientCert}\n",
            "needs client_ca_file",
        ),
        (
            "tls_server_config: {cert_file: c, key_file: k, client_ca_file: ca,"
            " client_auth_type: RequireAnyClientCert}\n",
            "unverified certificate",
        ),
        (
            "tls_server_config: {cert_file: c, key_file: k, client_auth_type: Sometimes}\n",
            "'Sometimes' is not supported",
        ),
        (
            "tls_server_config: {cert_file: c, key_file: k, min_version: TLS14}\n",
            "unknown TLS version 'TLS14'",
        ),
        (
            "tls_server_config: {cert_file: c, key_file: k, min_version: TLS13,"
            " max_version: TLS12}\n",
            "min_version is above max_version",
        ),
        (
            "tls_server_config: {cert_file: c, key_file: k, cipher_suites: [X]}\n",
            "cipher_suites: Go cipher suite names",
        ),
        ("tls_server_config: {cert: PEM, key_file: k}\n", "inline certificates"),
        (
            "tls_server_config: {cert_file: c, key_file: k, client_allowed_sans: [a]}\n",
            "client_allowed_sans needs client_auth_type RequireAndVerifyClientCert",
        ),
        ("basic_auth_users: {alice: secret}\n", "basic_auth_users.alice: not a bcrypt hash"),
        ("basic_auth_users: {alice: 12}\n", "basic_auth_users.alice must be a string"),
        ("http_server_config: {headers: {X-Custom: a}}\n", "'X-Custom' can not be configured"),
        (
            "http_server_config: {headers: {X-Frame-Options: allow}}\n",
            "invalid value for X-Frame-Options",
        ),
        ("http_server_config: {rate_limit: {burst: 1}}\n", "use --web.max-requests"),
        ("http_server_config: {timeouts: 1}\n", "unknown key http_server_config.timeouts"),
    ],
)
def test_refusals_name_the_key(text: str, message: str) -> None:
    with pytest.raises(WebConfigError) as raised:
        parse_web_config(text, BASE)
    assert message in str(raised.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match=r"cannot read .*missing\.yml: No such file"):
        load_web_config(tmp_path / "missing.yml")
