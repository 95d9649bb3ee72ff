"""TLS for the HTTP server: an ssl.SSLContext from the web config, swapped in place when
the certificate files change.

The listening socket keeps the context it was created with. Its sni_callback runs in
every handshake (OpenSSL calls the servername callback whether or not the client sent
SNI) and points the connection at the newest context, which changes the certificate,
key and client CAs. OpenSSL copies the verify mode and protocol versions into each
connection before that callback, so a change of client_auth_type or min/max_version
needs a new listener instead (server.py does that)."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from exporter.web.config import TLSSettings, WebConfigError


def build_context(settings: TLSSettings) -> ssl.SSLContext:
    """Load the certificate, key and client CAs now (raises WebConfigError)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = settings.min_version
    context.maximum_version = settings.max_version
    try:
        context.load_cert_chain(settings.cert_file, settings.key_file)
    except OSError as exc:  # ssl.SSLError is an OSError too
        raise WebConfigError(
            f"cannot load cert_file {settings.cert_file} with key_file {settings.key_file}: "
            f"{_reason(exc)}"
        ) from None
    if settings.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=settings.client_ca_file)
        except OSError as exc:
            raise WebConfigError(
                f"cannot load client_ca_file {settings.client_ca_file}: {_reason(exc)}"
            ) from None
        if not context.cert_store_stats()["x509_ca"]:
            raise WebConfigError(
                f"client_ca_file {settings.client_ca_file} holds no CA certificate"
            )
    context.verify_mode = settings.verify_mode
    return context


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)


Stamp = tuple[tuple[int, int, int], ...]


def file_stamp(paths: tuple[Path, ...]) -> Stamp:
    """What changes when a file is rewritten or replaced (a Kubernetes Secret update swaps
    a symlink, so stat follows links)."""
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append((0, 0, -1))
    return tuple(stamps)


@dataclass(frozen=True)
class Shape:
    """What a context swap cannot change on a live listener."""

    verify_mode: ssl.VerifyMode
    min_version: ssl.TLSVersion
    max_version: ssl.TLSVersion

    @classmethod
    def of(cls, settings: TLSSettings | None) -> Shape | None:
        if settings is None:
            return None
        return cls(settings.verify_mode, settings.min_version, settings.max_version)


class ServerTLS:
    """The listener's context plus the newest one, which new handshakes get."""

    def __init__(self, settings: TLSSettings, context: ssl.SSLContext) -> None:
        self.settings = settings
        self.listener_context = context
        self.current = context
        context.sni_callback = self._select

    def _select(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        current = self.current
        if connection.context is not current:
            connection.context = current

    def replace(self, settings: TLSSettings, context: ssl.SSLContext) -> None:
        """Use a new context for new handshakes (same Shape as the listener's)."""
        self.settings = settings
        self.current = context
