"""API keys with roles: issue, revoke, list, authenticate.

Roles are ordered: a steward can do what a member can, an admin what a steward can. ``admin`` is the
release role (promotion and rollback through the service).

The service checks a key on every request; with ``cache_seconds`` (setting ``key_cache_seconds``) a valid key's
check is answered from memory for that long after the database confirmed it, so a request costs no database round
trip. That lifetime is how long a revoked key can still work on a process that had just checked it; unknown and
revoked keys are never cached (each such request asks the database, behind the per-address failure limit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from mlops.members.schema import API_KEYS, engine

ROLES = ("member", "steward", "admin")
PREFIX = "mlk"


class AuthError(RuntimeError):
    """The caller is not who they need to be: ``status`` 401 (no/bad/revoked key) or 403 (role too low)."""

    def __init__(self, message: str, status: int = 401):
        super().__init__(message)
        self.message, self.status = message, status


@dataclass(frozen=True)
class Member:
    key_id: str
    name: str
    role: str

    def require(self, role: str) -> None:
        if ROLES.index(self.role) < ROLES.index(role):
            raise AuthError(f"{self.name} holds role {self.role!r}; this needs {role!r} or higher", status=403)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


#: Valid keys remembered at most (beyond this, expired entries are dropped, then all: memory stays bounded).
MAX_CACHED_KEYS = 10_000


class KeyStore:
    def __init__(self, url: str, cache_seconds: float = 0.0):
        self.engine = engine(url)
        self.cache_seconds = cache_seconds
        # sha256 of a valid key -> (monotonic time it expires, its member); never the key itself
        self._cache: dict[str, tuple[float, Member]] = {}
        self._cache_lock = threading.Lock()

    def _remember(self, digest: str, member: Member) -> None:
        now = time.monotonic()
        with self._cache_lock:
            if len(self._cache) >= MAX_CACHED_KEYS:
                self._cache = {d: hit for d, hit in self._cache.items() if hit[0] > now}
                if len(self._cache) >= MAX_CACHED_KEYS:
                    self._cache = {}
            self._cache[digest] = (now + self.cache_seconds, member)

    def forget(self, key_id: str | None = None) -> None:
        """Drop the cached checks of ``key_id`` (all keys when None): the next request asks the database."""
        with self._cache_lock:
            self._cache = {d: hit for d, hit in self._cache.items() if key_id is not None and hit[1].key_id != key_id}

    def issue(self, name: str, role: str, created_by: str) -> tuple[Member, str]:
        """A new key for ``name``; the key itself is returned once and never stored."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        if not name.strip():
            raise ValueError("a key needs the member's name (who is attributed in the request log)")
        key_id = secrets.token_hex(6)
        key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(24)}"
        with self.engine.begin() as conn:
            conn.execute(
                API_KEYS.insert().values(
                    key_id=key_id, name=name, role=role, key_hash=_digest(key), created_at=_now(), created_by=created_by
                )
            )
        return Member(key_id, name, role), key

    def revoke(self, key_id: str) -> Member:
        """Revoke one key (by its id, the part after ``mlk_``): refused at once by this process, by every serving
        replica within its ``key_cache_seconds``."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(API_KEYS).where(API_KEYS.c.key_id == key_id)).mappings().first()
            if row is None:
                raise ValueError(f"no key with id {key_id!r}; `mlops keys list` shows them")
            if row["revoked_at"] is None:
                conn.execute(API_KEYS.update().where(API_KEYS.c.key_id == key_id).values(revoked_at=_now()))
        self.forget(key_id)  # this process at once; others within their key_cache_seconds
        return Member(row["key_id"], row["name"], row["role"])

    def list(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(API_KEYS).order_by(API_KEYS.c.created_at)).mappings()
            return [{k: v for k, v in row.items() if k != "key_hash"} for row in rows]

    def authenticate(self, key: str | None) -> Member:
        if not key:
            raise AuthError("an API key is required: send it in the X-API-Key header (ask an admin for one)")
        parts = key.split("_", 2)  # the secret may itself contain "_"
        if len(parts) != 3 or parts[0] != PREFIX:
            raise AuthError("malformed API key: it looks like mlk_<id>_<secret>")
        digest = _digest(key)
        if self.cache_seconds > 0:
            hit = self._cache.get(digest)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(API_KEYS).where(API_KEYS.c.key_id == parts[1])).mappings().first()
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            raise AuthError("unknown API key")
        if row["revoked_at"] is not None:
            raise AuthError(f"this API key was revoked at {row['revoked_at']}; ask an admin for a new one")
        member = Member(row["key_id"], row["name"], row["role"])
        if self.cache_seconds > 0:
            self._remember(digest, member)
        return member
