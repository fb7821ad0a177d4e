"""API keys (imgsearch/keys.py) and their commands: shown once, stored as a digest, bound to a
tenant or admin, listed without secrets, revoked at once; bad arguments are one line."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import text

from imgsearch.access import keys
from imgsearch.db.engine import make_engine
from imgsearch.errors import InvalidInput, NotFound
from tests.helpers import run_cli


def test_create_list_revoke_through_the_cli(database_url: str) -> None:
    created = run_cli(
        "tenant", "create-key", "acme", "--name", "checkout", IMGSEARCH_DATABASE_URL=database_url
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    key_id = keys.key_id_of(key)
    assert key_id is not None and key.startswith(f"isk_{key_id}_")
    assert f"created key {key_id} for tenant 'acme'" in created.stdout
    admin = run_cli("tenant", "create-key", "--admin", IMGSEARCH_DATABASE_URL=database_url)
    admin_key = admin.stdout.strip().splitlines()[-1]
    assert admin.returncode == 0 and keys.key_id_of(admin_key)

    listed = run_cli("tenant", "list-keys", IMGSEARCH_DATABASE_URL=database_url)
    assert listed.returncode == 0
    assert key_id in listed.stdout and "acme" in listed.stdout and "checkout" in listed.stdout
    assert "(admin)" in listed.stdout
    assert key not in listed.stdout and key.split("_", 2)[2] not in listed.stdout

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM imgsearch.api_keys")).mappings().all()
            assert (
                conn.execute(
                    text("SELECT has_table_privilege('imgsearch_console', 'imgsearch.api_keys', 'SELECT')")
                ).scalar()
                is False
            )
            assert (
                conn.execute(
                    text("SELECT has_table_privilege('imgsearch_app', 'imgsearch.api_keys', 'SELECT')")
                ).scalar()
                is False
            )
        stored = [str(value) for row in rows for value in row.values()]
        assert not any(key in value or key.split("_", 2)[2] in value for value in stored), (
            "never the key itself"
        )
        (row,) = [r for r in rows if r["key_id"] == key_id]
        assert bytes(row["secret_sha256"]) == hashlib.sha256(key.encode()).digest()
        with engine.begin() as conn:
            assert keys.authenticate(conn, key) == keys.Principal(key_id, "acme", False)
            assert keys.authenticate(conn, admin_key) == keys.Principal(
                keys.key_id_of(admin_key) or "", None, True
            )

        revoked = run_cli("tenant", "revoke-key", key_id, IMGSEARCH_DATABASE_URL=database_url)
        assert revoked.returncode == 0 and f"revoked key {key_id}" in revoked.stdout
        with engine.begin() as conn:
            assert keys.authenticate(conn, key) is None
        assert key_id not in run_cli("tenant", "list-keys", IMGSEARCH_DATABASE_URL=database_url).stdout
        assert key_id in run_cli("tenant", "list-keys", "--all", IMGSEARCH_DATABASE_URL=database_url).stdout
        by_key = run_cli("tenant", "revoke-key", admin_key, IMGSEARCH_DATABASE_URL=database_url)
        assert by_key.returncode == 0, "a whole key names its key too"
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("tenant", "create-key"), 2, "give a TENANT for a tenant's key, or --admin"),
        (("tenant", "create-key", "acme", "--admin"), 2, "not both"),
        (("tenant", "create-key", " "), 2, "tenant must not be empty"),
        (("tenant", "create-key", "a\x01b"), 2, "control characters"),
        (("tenant", "create-key", "acme", "--name", "x" * 300), 2, "the limit is 200"),
        (("tenant", "revoke-key", "nosuchkey"), 3, "no key with id"),
        (("tenant", "revoke-key", "abcdefghijkl"), 3, "no key with id 'abcdefghijkl'"),
        (("tenant", "revoke-key", "'; DROP TABLE x; --"), 3, "no key with id"),
    ],
)
def test_bad_key_commands_are_one_line(
    database_url: str, args: tuple[str, ...], code: int, message: str
) -> None:
    done = run_cli(*args, IMGSEARCH_DATABASE_URL=database_url)
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_authenticate_refuses_what_isnt_a_live_key(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        key, info = keys.create_key(engine, 42)
        assert info.tenant == "42", "names are stored as uploads store them"
        secret = key.split("_", 2)[2]
        with engine.begin() as conn:
            for candidate in (
                "",
                "isk",
                key + "x",
                key[:-1],
                key[:-1] + ("A" if key[-1] != "A" else "B"),
                key.upper(),
                f"isk_{info.key_id}_{'A' * 43}",
                secret,
                42,
                None,
            ):
                assert keys.authenticate(conn, candidate) is None  # type: ignore[arg-type]
        assert keys.revoke_key(engine, info.key_id).revoked_at is not None
        first = keys.revoke_key(engine, info.key_id).revoked_at
        assert keys.revoke_key(engine, info.key_id).revoked_at == first, "revoking again changes nothing"
        with pytest.raises(InvalidInput):
            keys.create_key(engine, "acme", admin=True)
        with pytest.raises(InvalidInput):
            keys.create_key(engine, None)
        with pytest.raises(NotFound):
            keys.revoke_key(engine, "isk_aaaaaaaaaaaa_" + "A" * 43)
    finally:
        engine.dispose()
