"""API keys of the HTTP service (``imgsearch serve``): each bound to one tenant, or an admin key.

A key is shown once when it is made; the table keeps its public id (``key_id``, the part after
``isk_``, which ``imgsearch tenant list-keys`` and logs may show) and the SHA-256 of the whole key,
never the key. The keys are random 256-bit secrets, so a fast hash is enough: there is nothing to
guess from the digest. The server compares digests in constant time.

Servers look a request's key up on every request (by its primary key), so a revocation, or a
deletion by hand, takes effect at once.

Only administrators read the table (``imgsearch_admin``, which the server's login needs anyway for
admin keys; the migrating login owns it); console logins and the app role can't.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """CREATE TABLE imgsearch.api_keys (
            key_id text PRIMARY KEY,
            secret_sha256 bytea NOT NULL,
            tenant text,
            admin boolean NOT NULL DEFAULT false,
            name text,
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz,
            CONSTRAINT api_keys_key_id_form_check CHECK (key_id ~ '^[a-z2-7]{12}$'),
            CONSTRAINT api_keys_digest_length_check CHECK (octet_length(secret_sha256) = 32),
            CONSTRAINT api_keys_tenant_or_admin_check CHECK (admin = (tenant IS NULL)),
            CONSTRAINT api_keys_tenant_not_empty_check CHECK (tenant <> '')
        )"""
    )
    op.execute("CREATE INDEX api_keys_tenant_idx ON imgsearch.api_keys (tenant)")
    op.execute("REVOKE ALL ON imgsearch.api_keys FROM PUBLIC")
    op.execute("GRANT SELECT ON imgsearch.api_keys TO imgsearch_admin")


def downgrade() -> None:
    op.execute("DROP TABLE imgsearch.api_keys")
