"""SQL console search functions: imgsearch.search_vector and imgsearch.search_similar.

They follow the library's strategy (imgsearch.search): a bounded count of the rows the filters
match picks an exact scan (up to 4000 rows or 15% of the catalog) or HNSW with a relaxed iterative
scan that fills a pool of matching rows, re-sorted exactly, falling back to the exact scan if the
pool holds fewer rows than asked. pgvector settings are scoped to the function call by its
SET clauses (set_config(..., true) inside such a function is SET LOCAL, undone when it returns).
User values reach the dynamic SQL only through EXECUTE ... USING; format() inlines only the
active model's id and dimension, integers read from imgsearch.models.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEARCH = r"""
CREATE FUNCTION imgsearch._search(
    query halfvec, k int, tenant text, category text, price_min numeric, price_max numeric, exclude bigint
) RETURNS TABLE (image_id bigint, product_id text, distance double precision)
LANGUAGE plpgsql STABLE
SET hnsw.ef_search = 40
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.max_scan_tuples = 20000
SET hnsw.scan_mem_multiplier = 4
SET jit = off
SET random_page_cost = 1.1
SET plan_cache_mode = force_custom_plan
AS $fn$
DECLARE
    active record;
    bound int;
    matching bigint;
    total bigint;
    ids bigint[];
    products text[];
    distances double precision[];
    filtered text := ' FROM imgsearch.embeddings e'
        ' JOIN imgsearch.products p ON p.id = e.product_pk'
        ' WHERE e.model_id = %s'
        ' AND ($1::text IS NULL OR e.tenant = $1)'
        ' AND ($2::text IS NULL OR p.category = $2)'
        ' AND ($3::numeric IS NULL OR p.price >= $3)'
        ' AND ($4::numeric IS NULL OR p.price <= $4)'
        ' AND ($5::bigint IS NULL OR e.image_id <> $5)';
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'k must be from 1 to 1000, got %', k USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF query IS NULL THEN
        RAISE EXCEPTION 'query vector must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT m.id, m.dim INTO active FROM imgsearch.models m WHERE m.active;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no active model: open the catalog once (imgsearch migrate)' USING ERRCODE = 'no_data_found';
    END IF;
    IF vector_dims(query) <> active.dim THEN
        RAISE EXCEPTION 'query vector has % dimensions, expected %', vector_dims(query), active.dim
            USING ERRCODE = 'data_exception';
    END IF;
    SELECT greatest(c.reltuples, 1)::bigint INTO total FROM pg_class c
        WHERE c.oid = 'imgsearch.embeddings'::regclass;
    -- imgsearch.search: EXACT_MAX_ROWS = 4000, EXACT_MAX_FRACTION = 0.15
    bound := greatest(4000, ceil(0.15 * total)::int, k);
    IF num_nulls(tenant, category, price_min, price_max, exclude) = 5 THEN
        matching := total + 1;  -- no filters: nothing to count
    ELSE
        EXECUTE format('SELECT count(*) FROM (SELECT 1' || filtered || ' LIMIT %s) s', active.id, bound + 1)
            INTO matching USING tenant, category, price_min, price_max, exclude;
    END IF;
    IF matching > bound THEN
        PERFORM set_config('hnsw.ef_search', least(1000, greatest(200, 2 * k))::text, true);
        PERFORM set_config('hnsw.max_scan_tuples', least(10000000, greatest(20000, total))::text, true);
        EXECUTE format(
            'WITH pool AS MATERIALIZED ('
            'SELECT e.image_id, p.product_id, (e.embedding::halfvec(%s) <=> $6)::float8 AS distance'
            || filtered || ' ORDER BY e.embedding::halfvec(%s) <=> $6 LIMIT %s)'
            ' SELECT array_agg(image_id ORDER BY distance), array_agg(product_id ORDER BY distance),'
            ' array_agg(distance ORDER BY distance) FROM (SELECT * FROM pool ORDER BY distance LIMIT %s) top',
            active.dim, active.id, active.dim, least(4000, greatest(200, 4 * k)), k)
            INTO ids, products, distances USING tenant, category, price_min, price_max, exclude, query;
        IF coalesce(cardinality(ids), 0) = k THEN
            RETURN QUERY SELECT * FROM unnest(ids, products, distances);
            RETURN;
        END IF;
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT e.image_id, p.product_id, (e.embedding <=> $6)::float8 AS distance'
        || filtered || ' ORDER BY e.embedding <=> $6 LIMIT %s', active.id, k)
        USING tenant, category, price_min, price_max, exclude, query;
END
$fn$
"""

SEARCH_VECTOR = """
CREATE FUNCTION imgsearch.search_vector(
    query vector, k int DEFAULT 10, tenant text DEFAULT NULL, category text DEFAULT NULL,
    price_min numeric DEFAULT NULL, price_max numeric DEFAULT NULL
) RETURNS TABLE (image_id bigint, product_id text, distance double precision)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM imgsearch._search(query::halfvec, k, tenant, category, price_min, price_max, NULL);
END
"""

SIMILAR_SOURCE = r"""
CREATE FUNCTION imgsearch._similar_source(p_image_id bigint, p_tenant text) RETURNS halfvec
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    source halfvec;
BEGIN
    SELECT e.embedding INTO source FROM imgsearch.embeddings e JOIN imgsearch.models m ON m.id = e.model_id
        WHERE m.active AND e.image_id = p_image_id AND (p_tenant IS NULL OR e.tenant = p_tenant);
    IF source IS NULL THEN
        RAISE EXCEPTION 'no embedded image with id %', p_image_id USING ERRCODE = 'no_data_found';
    END IF;
    RETURN source;
END
$fn$
"""

# A SQL function: its parameter image_id may share the name of the result column image_id.
SEARCH_SIMILAR = """
CREATE FUNCTION imgsearch.search_similar(
    image_id bigint, k int DEFAULT 10, tenant text DEFAULT NULL, category text DEFAULT NULL,
    price_min numeric DEFAULT NULL, price_max numeric DEFAULT NULL
) RETURNS TABLE (image_id bigint, product_id text, distance double precision)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT s.* FROM imgsearch._search(imgsearch._similar_source($1, $3), $2, $3, $4, $5, $6, $1) AS s;
END
"""


def upgrade() -> None:
    op.execute(SEARCH)
    op.execute(SEARCH_VECTOR)
    op.execute(SIMILAR_SOURCE)
    op.execute(SEARCH_SIMILAR)
    op.execute(
        "COMMENT ON FUNCTION imgsearch.search_vector(vector, int, text, text, numeric, numeric) IS "
        "'Top k images nearest to a query vector under the active model, with optional filters'"
    )
    op.execute(
        "COMMENT ON FUNCTION imgsearch.search_similar(bigint, int, text, text, numeric, numeric) IS "
        "'Top k images most like the given image (itself left out), with optional filters'"
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION imgsearch.search_similar(bigint, int, text, text, numeric, numeric)")
    op.execute("DROP FUNCTION imgsearch.search_vector(vector, int, text, text, numeric, numeric)")
    op.execute("DROP FUNCTION imgsearch._similar_source(bigint, text)")
    op.execute("DROP FUNCTION imgsearch._search(halfvec, int, text, text, numeric, numeric, bigint)")
