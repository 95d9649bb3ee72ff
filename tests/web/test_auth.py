"""Basic auth from --web.config.file: bcrypt hashes, exporter-toolkit's rules, health
pages exempt, and each credential checked by bcrypt once."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import bcrypt
import pytest

import exporter.web.auth
from exporter.web.auth import BasicAuth, parse_basic
from tests.serving import running

PASSWORD = "s3cret"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Basic " + base64.b64encode(b"u:p:q").decode(), ("u", "p:q")),
        ("basic " + base64.b64encode(b"u:").decode(), ("u", "")),
        ("Basic " + base64.b64encode(b"nocolon").decode(), None),
        ("Basic !!!", None),
        ("Bearer abc", None),
        ("Basic " + base64.b64encode(b"\xff:x").decode(), None),
        ("", None),
        (None, None),
    ],
)
def test_parse_basic(header: str | None, expected: tuple[str, str] | None) -> None:
    assert parse_basic(header) == expected


def test_each_credential_pays_bcrypt_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real_check = exporter.web.auth._check

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real_check(password, hashed)

    monkeypatch.setattr(exporter.web.auth, "_check", counting)
    auth = BasicAuth({"prometheus": HASH.encode()})
    right = basic("prometheus", PASSWORD)["Authorization"]
    wrong = basic("prometheus", "guess")["Authorization"]
    stranger = basic("mallory", PASSWORD)["Authorization"]

    async def checks() -> list[bool]:
        return [await auth.allows(h) for h in (right, right, wrong, wrong, stranger, stranger)]

    assert asyncio.run(checks()) == [True, True, False, False, False, False]
    # An unknown user is checked against the decoy hash, so it costs what a known one does.
    assert calls == [HASH.encode(), HASH.encode(), exporter.web.auth.DECOY_HASH]


@pytest.mark.kernel  # root: else the slab source (/sys/kernel/slab, 0400) logs a failure
def test_basic_auth_over_http(tmp_path: Path) -> None:
    config = tmp_path / "web.yml"
    config.write_text(
        f"basic_auth_users:\n  prometheus: '{HASH}'\n"
        "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
    )
    with running(f"--web.config.file={config}") as daemon:
        ok, body = daemon.get(headers=basic("prometheus", PASSWORD))
        assert ok.status == 200 and b"tcptw_build_info" in body
        assert ok.getheader("X-Content-Type-Options") == "nosniff"
        for headers in (basic("prometheus", "wrong"), basic("nobody", PASSWORD), {}):
            refused, _ = daemon.get(headers=headers)
            assert refused.status == 401
            assert refused.getheader("WWW-Authenticate", "").startswith("Basic")
            assert refused.getheader("X-Content-Type-Options") == "nosniff"
        assert daemon.get("/", headers=basic("nobody", "x"))[0].status == 401
        assert daemon.get("/healthz")[0].status == 200  # probes need no credentials
        assert daemon.get("/readyz")[0].status == 200
        events = [line["event"] for line in daemon.stop()]
    assert events == ["listening", "shutting down"]


def test_spraying_never_evicts_a_success_nor_queues_unbounded() -> None:
    """A logged-in scraper's credentials stay cached however many wrong passwords come;
    a second check from the same address while one is in flight is refused at once."""
    auth = BasicAuth({"prometheus": HASH.encode()})
    right = basic("prometheus", PASSWORD)["Authorization"]

    async def run() -> tuple[bool, list[bool], bool]:
        first = await auth.allows(right, "10.0.0.1")
        wrong = [
            await auth.allows(basic("prometheus", f"guess-{i}")["Authorization"], f"10.0.1.{i}")
            for i in range(300)
        ]
        slow = asyncio.ensure_future(auth.allows(basic("x", "y")["Authorization"], "10.0.2.1"))
        await asyncio.sleep(0)
        meanwhile = await auth.allows(basic("x", "z")["Authorization"], "10.0.2.1")
        await slow
        return first, wrong, meanwhile

    first, wrong, meanwhile = asyncio.run(run())
    assert first and not any(wrong) and not meanwhile and auth.refused_busy == 1
    assert asyncio.run(auth.allows(right, "10.0.0.1"))  # still cached: no bcrypt
