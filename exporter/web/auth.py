"""HTTP basic auth against bcrypt hashes (web config basic_auth_users).

bcrypt costs tens of milliseconds by design, so each check runs in one dedicated thread
(never on the event loop, and one at a time, as exporter-toolkit serialises them) and its
outcome is cached: a scraper sending the same credentials every interval pays bcrypt
once. The cache key is a SHA-256 of user, hash and password, so no password is kept; an
unknown user is checked against a fixed hash so that its timing matches a known one."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import bcrypt

CACHE_ENTRIES = 256
# One thread for every check, kept across web config reloads (a check in flight during a
# reload finishes on it).
_BCRYPT = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcrypt")
# bcrypt of a random password nobody knows, cost 10 like a typical htpasswd entry.
DECOY_HASH = b"$2b$10$7icshmb7oxZrwyXZ6Q691.V1cZZPfF6Kiag4tJxAp/pKqpOf2P0B2"


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an Authorization header, or None."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class BasicAuth:
    def __init__(self, users: Mapping[str, bytes]) -> None:
        self.users = dict(users)
        self._cache: OrderedDict[bytes, bool] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    async def allows(self, header: str | None) -> bool:
        credentials = parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        known = user in self.users
        hashed = self.users.get(user, DECOY_HASH)
        key = hashlib.sha256(b"\0".join((user.encode(), hashed, password.encode()))).digest()
        cached = self._cache.get(key)
        if cached is None:
            loop = asyncio.get_running_loop()
            matches = await loop.run_in_executor(_BCRYPT, _check, password, hashed)
            cached = known and matches
            self._cache[key] = cached
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return cached


def _check(password: str, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password.encode(), hashed)
    except ValueError:  # a malformed hash (webconfig.py checks the shape, not the salt)
        return False
