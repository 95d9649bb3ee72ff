"""--web.config.file: the YAML format of Prometheus' exporter-toolkit
(github.com/prometheus/exporter-toolkit, docs/web-configuration.md), so operators reuse the
files they give node_exporter. Parsed and checked here into an immutable WebConfig; the
certificates themselves are loaded by tls.py.

Like exporter-toolkit: unknown keys are errors, relative file paths are relative to the
config file's directory, TLS defaults to min_version TLS12, client_ca_file needs a client
auth type, headers are limited to the security headers it allows, and every password
must be a bcrypt hash. Keys of exporter-toolkit this server cannot honour are refused by
name rather than ignored (see UNSUPPORTED)."""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# exporter-toolkit's client_auth_type values this server implements. Go's
# RequestClientCert and RequireAnyClientCert accept a certificate without verifying it;
# Python's ssl module always verifies a certificate it asks for, so those two are refused.
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# exporter-toolkit's allow-list of extra response headers (web/handler.go), with the values
# it accepts where they form an enumeration.
HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
UNSUPPORTED = {
    "cert": "inline certificates are not supported: use cert_file",
    "key": "inline keys are not supported: use key_file",
    "client_ca": "inline client CAs are not supported: use client_ca_file",
    "cipher_suites": "Go cipher suite names have no OpenSSL equivalent here: remove it "
    "(OpenSSL's defaults for TLS 1.2 and 1.3 apply)",
    "curve_preferences": "not supported: remove it (OpenSSL's default groups apply)",
    "rate_limit": "not supported: use --web.max-requests",
}
TLS_KEYS = {
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
    "min_version",
    "max_version",
    "prefer_server_cipher_suites",  # ignored by Go itself since 1.18; accepted, no effect
    "client_allowed_sans",
}


# Read at most this much: a web config is a few hundred bytes; anything near this is not one.
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 16  # nesting of YAML collections; the format itself needs 4
# Go's bcrypt (golang.org/x/crypto/bcrypt MinCost, MaxCost): exporter-toolkit refuses a
# hash of another cost when it loads the file; Python's bcrypt would only fail each login.
BCRYPT_COSTS = range(4, 32)
BCRYPT_MAX_PASSWORD = 72  # bytes bcrypt reads; Go's uses the first 72 too


class WebConfigError(Exception):
    """The file cannot be used (the message names the key or file)."""


class _Loader(yaml.SafeLoader):
    """yaml's safe loader without aliases (a billion-laughs file expands them) and with
    bounded nesting (deep nesting exhausts Python's recursion)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise WebConfigError(f"YAML aliases are not allowed (line {event.start_mark.line + 1})")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise WebConfigError(
                    f"nested more than {MAX_DEPTH} levels deep (line {mark.line + 1})"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


@dataclass(frozen=True)
class TLSSettings:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    verify_mode: ssl.VerifyMode = ssl.CERT_NONE
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    client_allowed_sans: frozenset[str] | None = None

    def files(self) -> tuple[Path, ...]:
        return (self.cert_file, self.key_file) + (
            (self.client_ca_file,) if self.client_ca_file else ()
        )


@dataclass(frozen=True)
class WebConfig:
    tls: TLSSettings | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: Mapping[str, str] = field(default_factory=dict)


def load_web_config(path: Path) -> WebConfig:
    return parse_web_config(read_config_file(path), path.parent)


def read_config_file(path: Path) -> str:
    """The file's text: a regular file (a FIFO would block, /dev/zero never end) of at
    most MAX_FILE_BYTES, in UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise WebConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WebConfigError(f"cannot read {path}: not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_FILE_BYTES:
            raise WebConfigError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
        return b"".join(chunks).decode("utf-8")
    except OSError as exc:
        raise WebConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise WebConfigError(f"cannot read {path}: not UTF-8 text") from None
    finally:
        os.close(fd)


def parse_web_config(text: str, directory: Path) -> WebConfig:
    try:
        document = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise WebConfigError(f"not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:  # the scanner itself, on pathological input
        raise WebConfigError(f"nested more than {MAX_DEPTH} levels deep") from None
    if document is None:
        return WebConfig()
    top = _mapping(document, "the file")
    _only(top, {"tls_server_config", "http_server_config", "basic_auth_users"}, "")
    tls = _tls(top.get("tls_server_config"), directory)
    users = _users(top.get("basic_auth_users"))
    http = _mapping(top.get("http_server_config") or {}, "http_server_config")
    _only(http, {"http2", "headers"}, "http_server_config.")  # http2: HTTP/1.1 is served
    headers = _headers(http.get("headers"))
    return WebConfig(tls=tls, users=users, headers=headers)


def _tls(value: object, directory: Path) -> TLSSettings | None:
    if value is None:
        return None
    section = _mapping(value, "tls_server_config")
    _only(section, TLS_KEYS, "tls_server_config.")
    if not any(
        section.get(k) for k in ("cert_file", "key_file", "client_ca_file", "client_auth_type")
    ):
        return None  # exporter-toolkit: no TLS field set means plain HTTP
    cert, key = section.get("cert_file"), section.get("key_file")
    if not cert:
        raise WebConfigError("tls_server_config: missing cert_file")
    if not key:
        raise WebConfigError("tls_server_config: missing key_file")
    auth = _text(
        section.get("client_auth_type") or "NoClientCert", "tls_server_config.client_auth_type"
    )
    if auth not in CLIENT_AUTH:
        why = (
            " (it accepts an unverified certificate, which Python's ssl cannot)"
            if auth in ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
            else ""
        )
        raise WebConfigError(
            f"tls_server_config.client_auth_type {auth!r} is not supported{why}: use one "
            f"of {', '.join(CLIENT_AUTH)}"
        )
    ca = section.get("client_ca_file")
    if ca and auth == "NoClientCert":
        raise WebConfigError("tls_server_config: client_ca_file is set without a client_auth_type")
    if not ca and auth != "NoClientCert":
        raise WebConfigError(f"tls_server_config: client_auth_type {auth} needs client_ca_file")
    sans = section.get("client_allowed_sans")
    if sans is not None:
        if auth != "RequireAndVerifyClientCert":
            raise WebConfigError(
                "tls_server_config.client_allowed_sans needs client_auth_type "
                "RequireAndVerifyClientCert"
            )
        if not isinstance(sans, list) or not all(isinstance(s, str) for s in sans):
            raise WebConfigError("tls_server_config.client_allowed_sans must be a list of strings")
    low = _version(section.get("min_version"), "min_version", ssl.TLSVersion.TLSv1_2)
    high = _version(section.get("max_version"), "max_version", ssl.TLSVersion.TLSv1_3)
    if low > high:
        raise WebConfigError("tls_server_config: min_version is above max_version")
    return TLSSettings(
        cert_file=directory / _text(cert, "cert_file"),
        key_file=directory / _text(key, "key_file"),
        client_ca_file=directory / _text(ca, "client_ca_file") if ca else None,
        verify_mode=CLIENT_AUTH[auth],
        min_version=low,
        max_version=high,
        client_allowed_sans=frozenset(canonical_san(s) for s in sans) if sans is not None else None,
    )


def _version(value: object, key: str, default: ssl.TLSVersion) -> ssl.TLSVersion:
    if value is None:
        return default
    value = _text(value, f"tls_server_config.{key}")
    if value not in TLS_VERSIONS:
        raise WebConfigError(
            f"tls_server_config.{key}: unknown TLS version {value!r} "
            f"(one of {', '.join(TLS_VERSIONS)})"
        )
    return TLS_VERSIONS[str(value)]


def _users(value: object) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for user, hashed in _mapping(value or {}, "basic_auth_users").items():
        text = _text(hashed, f"basic_auth_users.{user}")
        # A bcrypt hash: $2a$, $2b$ or $2y$, a two-digit cost, 53 characters of salt+hash.
        prefix, _, rest = text.partition("$")[2].partition("$")
        cost, _, digest = rest.partition("$")
        if prefix not in ("2a", "2b", "2y") or not cost.isdigit() or len(digest) != 53:
            raise WebConfigError(f"basic_auth_users.{user}: not a bcrypt hash")
        if int(cost) not in BCRYPT_COSTS:
            raise WebConfigError(
                f"basic_auth_users.{user}: bcrypt cost {int(cost)} is outside "
                f"{BCRYPT_COSTS.start}-{BCRYPT_COSTS.stop - 1}"
            )
        users[str(user)] = text.encode()
    return users


def _headers(value: object) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, raw in _mapping(value or {}, "http_server_config.headers").items():
        text = _text(raw, f"http_server_config.headers.{name}")
        if name not in HEADERS:
            raise WebConfigError(f"HTTP header {name!r} can not be configured")
        allowed = HEADERS[name]
        if allowed and text not in allowed:
            raise WebConfigError(
                f"invalid value for {name}: expected one of {allowed}, got {text!r}"
            )
        if "\r" in text or "\n" in text:
            raise WebConfigError(f"HTTP header {name}: the value holds a line break")
        headers[name] = text
    return headers


def canonical_san(value: str) -> str:
    """An IP address SAN as Python's ssl reports it (IPv6 written out in full, as
    0:0:0:0:0:0:0:1, upper case hex), so that a file written for exporter-toolkit (Go
    compares parsed addresses) matches; other names as given."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return value
    if address.version == 4:
        return str(address)
    packed = address.packed  # CPython's _ssl.c prints each 16-bit group with %X
    return ":".join(f"{int.from_bytes(packed[i : i + 2], 'big'):X}" for i in range(0, 16, 2))


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise WebConfigError(f"{where} must be a mapping")
    return value


def _only(section: Mapping[str, object], allowed: set[str], prefix: str) -> None:
    for key in section:
        if key in UNSUPPORTED:
            raise WebConfigError(f"{prefix}{key}: {UNSUPPORTED[key]}")
        if key not in allowed:
            raise WebConfigError(f"unknown key {prefix}{key}")


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise WebConfigError(f"{where} must be a string")
    return value
