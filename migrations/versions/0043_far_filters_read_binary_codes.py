"""Far filters read binary codes (issue 72).

A filter whose rows lie away from the query makes the model's HNSW graph come short, and a search
then computed every matching row's full distance (an exact scan: 2.75 us a row, reading each
row's 1.5 KB vector from the heap). Here each row also keeps its vector's sign bits, and a far
filter of more than a few thousand rows compares those first:

* ``embeddings.code``: ``binary_quantize(embedding)``, one bit a dimension (96 bytes at 768),
  a stored generated column: every write path keeps it, and adding it computes it for the rows
  already there. As migration 0030's ``price_units`` did, adding it rewrites the table and
  rebuilds its indexes, the HNSW graphs included, while the migration holds it (searches wait;
  docs/operations.md gives the times): ``maintenance_work_mem`` is set from the largest graph's
  size, as there, and the index rebuilt below is dropped first. Filling a plain column by
  ``UPDATE`` instead holds the table as well and leaves a dead graph entry per row (0030's
  docstring).
* ``embeddings_tenant_category_price_idx`` (its keys unchanged: model, tenant, category, price)
  now INCLUDEs the code and the row's key, so a far filter's nearest codes come from an
  index-only scan, without the heap (imgsearch.search.statements: the ``codes`` part).
* ``binary_code_checks``: per model, the recall@10 its codes kept, re-ranked exactly, against an
  exact search at the last check (imgsearch.db.binary_codes); searches use the codes only from
  that module's ``MIN_RECALL`` up.

Revision ID: 0043
Revises: 0042
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0043"
down_revision: str | None = "0042"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYS = "model_id, tenant, category, price_units"
INDEX = "imgsearch.embeddings_tenant_category_price_idx"


# memory to rebuild the largest HNSW graph in one go (migration 0030's)
REBUILD_MEMORY = """
SELECT set_config('maintenance_work_mem', (greatest(64, least(8192,
    coalesce(max(pg_relation_size(i.indexrelid)), 0) * 3 / 2 / 1048576 + 1)))::text || 'MB', true)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
WHERE i.indrelid = 'imgsearch.embeddings'::regclass AND a.amname = 'hnsw'
"""


def upgrade() -> None:
    op.execute(REBUILD_MEMORY)
    op.execute(f"DROP INDEX {INDEX}")  # first: the rewrite would rebuild it only to drop it
    op.execute(
        "ALTER TABLE imgsearch.embeddings ADD COLUMN code bit varying "
        "GENERATED ALWAYS AS (binary_quantize(embedding)::bit varying) STORED"
    )
    op.execute(
        "CREATE INDEX embeddings_tenant_category_price_idx ON imgsearch.embeddings "
        f"({KEYS}) INCLUDE (code, image_id, product_pk, region)"
    )
    op.execute(
        """CREATE TABLE imgsearch.binary_code_checks (
            model_id smallint PRIMARY KEY REFERENCES imgsearch.models (id) ON DELETE CASCADE,
            rows bigint NOT NULL,
            recall real NOT NULL,
            checked_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT binary_code_checks_recall_check CHECK (recall BETWEEN 0 AND 1)
        )"""
    )
    op.execute("REVOKE ALL ON imgsearch.binary_code_checks FROM PUBLIC")
    op.execute("GRANT SELECT ON imgsearch.binary_code_checks TO imgsearch_admin, imgsearch_app")


def downgrade() -> None:
    op.execute("DROP TABLE imgsearch.binary_code_checks")
    op.execute(f"DROP INDEX {INDEX}")
    op.execute(f"CREATE INDEX embeddings_tenant_category_price_idx ON imgsearch.embeddings ({KEYS})")
    op.execute("ALTER TABLE imgsearch.embeddings DROP COLUMN code")
