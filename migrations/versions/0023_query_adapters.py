"""Per-shop query adapters: a d x d linear map per tenant and model, applied to text (and image)
query vectors before the search; the stored embeddings never change.

* ``query_adapters``: one row per trained adapter, versioned per (tenant, model), with its
  held-out figures against the identity (``metrics``), whether it is ``active`` (at most one per
  tenant and model) and the adapter it replaced (``previous_id``, for a rollback);
* ``query_adapter_rows``: its matrix, one ``vector`` per row, so that PostgreSQL maps a query
  with pgvector's inner product (``imgsearch.adapted(query, tenant)``: W q, unit length; the
  query itself when the tenant has no active adapter);
* ``search_text`` and ``search_hybrid`` map their text's embedding with the adapter of the
  tenant searched (their ``tenant``, else the console login's).

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-25
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = ("imgsearch_app", "imgsearch_console", "imgsearch_worker", "imgsearch_admin")
CALLERS = "imgsearch_app, imgsearch_console, imgsearch_admin"

CREATE = """
CREATE TABLE imgsearch.query_adapters (
    id bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT query_adapters_pkey PRIMARY KEY,
    tenant text NOT NULL,
    model_id smallint NOT NULL
        CONSTRAINT query_adapters_model_id_fkey REFERENCES imgsearch.models (id) ON DELETE CASCADE,
    version integer NOT NULL,
    dim integer NOT NULL,
    metrics jsonb NOT NULL,
    active boolean NOT NULL DEFAULT false,
    previous_id bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    CONSTRAINT query_adapters_tenant_model_id_version_key UNIQUE (tenant, model_id, version)
);
CREATE UNIQUE INDEX query_adapters_active_idx ON imgsearch.query_adapters (tenant, model_id) WHERE active;

CREATE TABLE imgsearch.query_adapter_rows (
    adapter_id bigint NOT NULL
        CONSTRAINT query_adapter_rows_adapter_id_fkey REFERENCES imgsearch.query_adapters (id) ON DELETE CASCADE,
    "row" integer NOT NULL,
    tenant text NOT NULL,
    weights vector NOT NULL,
    CONSTRAINT query_adapter_rows_pkey PRIMARY KEY (adapter_id, "row")
);
"""

ADAPTED = """
CREATE FUNCTION imgsearch.adapted(query vector, tenant text) RETURNS vector
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT coalesce(
        (SELECT l2_normalize(array_agg(-(r.weights <#> query) ORDER BY r."row")::vector)
         FROM imgsearch.query_adapter_rows r
         JOIN imgsearch.query_adapters a ON a.id = r.adapter_id
         WHERE a.active AND a.tenant = adapted.tenant
           AND a.model_id = (SELECT m.id FROM imgsearch.models m WHERE m.active)),
        query);
END
"""

SEARCH_TEXT = """
CREATE OR REPLACE FUNCTION imgsearch.search_text(
    query text, k int DEFAULT 10, tenant text DEFAULT NULL, category text DEFAULT NULL,
    price_min numeric DEFAULT NULL, price_max numeric DEFAULT NULL
) RETURNS TABLE (image_id bigint, product_id text, distance double precision, probability double precision)
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    q record;
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN  -- before asking a worker anything
        RAISE EXCEPTION 'k must be from 1 to 1000, got %', coalesce(k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO q FROM imgsearch._text_embedding(query);@ADAPT@
    RETURN QUERY
        SELECT s.image_id, s.product_id, s.distance,
            CASE WHEN q.logit_bias IS NULL THEN NULL
                 ELSE 1 / (1 + exp(-(q.logit_scale * (1 - s.distance) + q.logit_bias))) END
        FROM imgsearch.search_vector(q.embedding, k, tenant, category, price_min, price_max) AS s;
END
$fn$;
"""

ADAPT = """
    q.embedding := imgsearch.adapted(q.embedding,
        coalesce({function}.tenant, imgsearch.login_tenant(), imgsearch.current_tenant()));"""
EMBEDDED = "SELECT * INTO q FROM imgsearch._text_embedding(query);"


def _hybrid() -> str:
    """Migration 0021's ``search_hybrid``, as CREATE OR REPLACE."""
    path = Path(__file__).with_name("0021_console_hybrid_and_facets.py")
    spec = importlib.util.spec_from_file_location("imgsearch_migration_0021", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    hybrid: str = module.HYBRID
    assert hybrid.count(EMBEDDED) == 1
    return hybrid.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    op.execute(CREATE)
    op.execute(ADAPTED)
    op.execute(SEARCH_TEXT.replace("@ADAPT@", ADAPT.format(function="search_text")))
    op.execute(_hybrid().replace(EMBEDDED, EMBEDDED + ADAPT.format(function="search_hybrid")))
    everyone = ", ".join(ROLES)
    for table in ("query_adapters", "query_adapter_rows"):
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON imgsearch.{table} TO {everyone}")
        op.execute(f"ALTER TABLE imgsearch.{table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_app ON imgsearch.{table} TO imgsearch_app "
            "USING (tenant = imgsearch.current_tenant()) WITH CHECK (tenant = imgsearch.current_tenant())"
        )
        op.execute(
            f"CREATE POLICY tenant_console ON imgsearch.{table} TO imgsearch_console "
            "USING (tenant = imgsearch.login_tenant()) WITH CHECK (tenant = imgsearch.login_tenant())"
        )
        op.execute(
            f"CREATE POLICY all_tenants ON imgsearch.{table} TO imgsearch_worker, imgsearch_admin "
            "USING (true) WITH CHECK (true)"
        )
    op.execute(f"GRANT EXECUTE ON FUNCTION imgsearch.adapted(vector, text) TO {CALLERS}")


def downgrade() -> None:
    op.execute(SEARCH_TEXT.replace("@ADAPT@", ""))
    op.execute(_hybrid())
    op.execute("DROP FUNCTION imgsearch.adapted(vector, text)")
    op.execute("DROP TABLE imgsearch.query_adapter_rows, imgsearch.query_adapters")
