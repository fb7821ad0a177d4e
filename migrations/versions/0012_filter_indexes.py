"""Per-value HNSW graphs: a category's (or a tenant's) own partial HNSW index of the model.

A search filtered to a value whose rows lie away from the query walks the model's one graph a
long way before it meets them (bench/search/search.py "far" filters). A partial index of those rows
alone, ``... WHERE model_id = 1 AND category = 'shoes'``, makes that search an unfiltered HNSW
search of a small graph. ``imgsearch index categories --min-rows N`` records the rule here and
builds one for each value with at least N rows; :mod:`imgsearch.db.filter_indexes`.

* ``filter_index_rules``: which column gets graphs, from how many rows.
* ``filter_indexes``: the graphs built, per model, column and value (the index's name is derived
  from a hash of the value, so any value makes a valid name), with the recall@10 the graph gave
  at its build against an exact search of the value's rows. Searches use the graphs whose recall
  is at least 0.98, planned for their values (a partial index is only chosen when the planner
  sees the value).

Only administrators read them; the migrating login owns them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """CREATE TABLE imgsearch.filter_index_rules (
            column_name text PRIMARY KEY,
            min_rows bigint NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT filter_index_rules_column_known_check CHECK (column_name IN ('category', 'tenant')),
            CONSTRAINT filter_index_rules_min_rows_positive_check CHECK (min_rows > 0)
        )"""
    )
    op.execute(
        """CREATE TABLE imgsearch.filter_indexes (
            model_id smallint NOT NULL REFERENCES imgsearch.models (id) ON DELETE CASCADE,
            column_name text NOT NULL,
            value text NOT NULL,
            index_name text NOT NULL UNIQUE,
            rows bigint NOT NULL,
            recall real NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (model_id, column_name, value),
            CONSTRAINT filter_indexes_column_known_check CHECK (column_name IN ('category', 'tenant'))
        )"""
    )
    for table in ("filter_index_rules", "filter_indexes"):
        op.execute(f"REVOKE ALL ON imgsearch.{table} FROM PUBLIC")
        op.execute(f"GRANT SELECT ON imgsearch.{table} TO imgsearch_admin")


def downgrade() -> None:
    # the graphs themselves are indexes on embeddings: drop them with their registry
    op.execute(
        """DO $$
        DECLARE name text;
        BEGIN
            FOR name IN SELECT index_name FROM imgsearch.filter_indexes LOOP
                EXECUTE format('DROP INDEX IF EXISTS imgsearch.%I', name);
            END LOOP;
        END $$"""
    )
    op.execute("DROP TABLE imgsearch.filter_indexes")
    op.execute("DROP TABLE imgsearch.filter_index_rules")
