"""API keys of the HTTP service: each bound to one tenant, or an admin key that sees all of them.

A key reads ``isk_<key id>_<secret>``: the key id (12 characters) is public, named by
``imgsearch tenant list-keys`` and the server's logs; the secret is 256 random bits. PostgreSQL
keeps the key id and the SHA-256 of the whole key (migration 0011), never the key itself, which is
shown once, when it is made. A request's key is looked up by its id on every request, so a revoked
key stops working at once, and its digest is compared in constant time.

>>> key, info = create_key(engine, "acme", name="checkout")     # doctest: +SKIP
>>> authenticate(conn, key)                                      # doctest: +SKIP
Principal(key_id='...', tenant='acme', admin=False)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update

from imgsearch.db.models import ApiKey
from imgsearch.errors import InvalidInput, NotFound
from imgsearch.ingest import checks

PREFIX = "isk"
KEY_ID_LENGTH = 12
_KEY_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # base32, lower case: no look-alikes to mistype
_SECRET_BYTES = 32
_FORM = re.compile(rf"^{PREFIX}_([a-z2-7]{{{KEY_ID_LENGTH}}})_([A-Za-z0-9_-]{{43}})$")
_KEY_ID_FORM = re.compile(rf"^[a-z2-7]{{{KEY_ID_LENGTH}}}$")
# compared against when a key id is unknown, so an unknown id costs what a known one does
_NO_DIGEST = hashlib.sha256(b"no such key").digest()
MAX_NAME = 200


@dataclass(frozen=True)
class Principal:
    """Who a request's key says it comes from: one tenant, or an administrator (``tenant`` None)."""

    key_id: str
    tenant: str | None
    admin: bool


@dataclass(frozen=True)
class KeyInfo:
    """A stored key, without its secret."""

    key_id: str
    tenant: str | None
    admin: bool
    name: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def key_id_of(key: str) -> str | None:
    """The public id of a well-formed key, else None (nothing else about it is looked at)."""
    match = _FORM.match(key) if isinstance(key, str) else None
    return match.group(1) if match else None


def create_key(
    engine: Engine, tenant: str | None, *, admin: bool = False, name: str | None = None
) -> tuple[str, KeyInfo]:
    """Make a key for ``tenant`` (or, with ``admin=True`` and no tenant, an admin key); the key,
    to show once, and what is stored of it."""
    if admin == (tenant is not None):
        raise InvalidInput("a key is for one tenant or, with admin, for none: give exactly one of them")
    if tenant is not None:
        tenant = checks.identifier(tenant, "tenant")
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput(f"a key's name must be a non-empty string, got {name!r}")
        if len(name) > MAX_NAME:
            raise InvalidInput(f"a key's name is {len(name)} characters long; the limit is {MAX_NAME}")
        name = checks.name(name.strip(), "key name")
    key_id = "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))
    key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    assert key_id_of(key) == key_id
    with engine.begin() as conn:
        row = conn.execute(
            insert(ApiKey)
            .values(key_id=key_id, secret_sha256=digest(key), tenant=tenant, admin=admin, name=name)
            .returning(*_INFO_COLUMNS)
        ).one()
    return key, KeyInfo(*row)


_INFO_COLUMNS = (
    ApiKey.key_id,
    ApiKey.tenant,
    ApiKey.admin,
    ApiKey.name,
    ApiKey.created_at,
    ApiKey.revoked_at,
)


def list_keys(engine: Engine, *, tenant: str | None = None, revoked: bool = False) -> list[KeyInfo]:
    """The stored keys (``tenant``'s only, with a tenant), oldest first; revoked ones too with
    ``revoked=True``."""
    stmt = select(*_INFO_COLUMNS).order_by(ApiKey.created_at, ApiKey.key_id)
    if tenant is not None:
        stmt = stmt.where(ApiKey.tenant == checks.identifier(tenant, "tenant"))
    if not revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    with engine.connect() as conn:
        return [KeyInfo(*row) for row in conn.execute(stmt)]


def revoke_key(engine: Engine, key_or_id: str) -> KeyInfo:
    """Revoke a key, named by its id or the whole key; it stops working at once. Revoking a
    revoked key again changes nothing. :class:`NotFound` when there is no such key."""
    key_id = key_id_of(key_or_id) if isinstance(key_or_id, str) else None
    if key_id is None and isinstance(key_or_id, str) and _KEY_ID_FORM.match(key_or_id):
        key_id = key_or_id
    if key_id is None:
        raise NotFound(f"no key with id {str(key_or_id)[:40]!r}: a key id is {KEY_ID_LENGTH} characters")
    with engine.begin() as conn:
        row = conn.execute(
            update(ApiKey)
            .where(ApiKey.key_id == key_id)
            .values(revoked_at=func.coalesce(ApiKey.revoked_at, func.now()))
            .returning(*_INFO_COLUMNS)
        ).first()
    if row is None:
        raise NotFound(f"no key with id {key_id!r}")
    return KeyInfo(*row)


# a key's row, by its public id: what a request's key is checked against (psycopg's placeholder)
LOOKUP_SQL = (
    "SELECT key_id, secret_sha256, tenant, admin FROM imgsearch.api_keys "
    "WHERE key_id = %s AND revoked_at IS NULL"
)


def verified(key: str, row: Any) -> Principal | None:
    """The principal of ``key`` given its stored ``row`` (key_id, secret_sha256, tenant, admin),
    or None. The digests are compared in constant time, against a stand-in when there is no row,
    so an unknown id takes the time a known one does."""
    stored = bytes(row[1]) if row is not None else _NO_DIGEST
    given = digest(key if isinstance(key, str) else "")
    if not hmac.compare_digest(given, stored) or row is None:
        return None
    return Principal(key_id=row[0], tenant=row[2], admin=bool(row[3]))


def authenticate(conn: Connection, key: str) -> Principal | None:
    """Who ``key`` belongs to, or None when it is malformed, unknown or revoked (alike, and in
    about the same time: the digest is compared in constant time even for an unknown id)."""
    key_id = key_id_of(key)
    row = None
    if key_id is not None:
        row = conn.execute(
            select(ApiKey.key_id, ApiKey.secret_sha256, ApiKey.tenant, ApiKey.admin).where(
                ApiKey.key_id == key_id, ApiKey.revoked_at.is_(None)
            )
        ).first()
    return verified(key, row)
