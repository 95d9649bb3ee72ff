"""HTTP basic auth against bcrypt hashes (web config basic_auth_users).

bcrypt costs tens of milliseconds by design, so each check runs in one dedicated thread
(never on the event loop, and one at a time, as exporter-toolkit serialises them) and its
outcome is cached: a scraper sending the same credentials every interval pays bcrypt
once. The cache key is a SHA-256 of user, hash and password, so no password is kept; an
unknown user is checked against a fixed hash so that its timing matches a known one.

Password spraying cannot starve real scrapes:
- successes and failures are cached apart: no number of wrong passwords evicts the
  credentials of a scraper that logged in;
- each source address has at most one bcrypt check in flight (a second request from it
  meanwhile is refused at once), and at most MAX_PENDING checks wait for the thread;
  beyond that a new check is refused at once (401), never queued.
Like Go's bcrypt, only the first 72 bytes of a password count."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import bcrypt

CACHE_ENTRIES = 256  # successes, and separately failures
MAX_PENDING = 4  # bcrypt checks in flight or waiting for the thread
MAX_PASSWORD_BYTES = 72
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
        self._good: OrderedDict[bytes, None] = OrderedDict()
        self._bad: OrderedDict[bytes, None] = OrderedDict()
        self._busy: set[str] = set()  # source addresses with a check in flight
        self.refused_busy = 0  # checks refused at once (a count for tests and logs)

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    async def allows(self, header: str | None, peer: str = "") -> bool:
        credentials = parse_basic(header)
        if credentials is None:
            return False
        user, text = credentials
        password = text.encode()[:MAX_PASSWORD_BYTES]
        known = user in self.users
        hashed = self.users.get(user, DECOY_HASH)
        key = hashlib.sha256(b"\0".join((user.encode(), hashed, password))).digest()
        if key in self._good:
            self._good.move_to_end(key)
            return True
        if key in self._bad:
            self._bad.move_to_end(key)
            return False
        if peer in self._busy or len(self._busy) >= MAX_PENDING:
            self.refused_busy += 1
            return False
        self._busy.add(peer)
        try:
            loop = asyncio.get_running_loop()
            matches = await loop.run_in_executor(_BCRYPT, _check, password, hashed)
        finally:
            self._busy.discard(peer)
        allowed = known and matches
        cache = self._good if allowed else self._bad
        cache[key] = None
        while len(cache) > CACHE_ENTRIES:
            cache.popitem(last=False)
        return allowed


def _check(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a malformed hash (webconfig.py checks the shape, not the salt)
        return False
