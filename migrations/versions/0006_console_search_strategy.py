"""The SQL console's search follows the library's strategy again.

``imgsearch._search`` (behind ``imgsearch.search_vector`` and ``imgsearch.search_similar``) kept
the strategy the library had when migration 0002 wrote it: count the matching rows up to 15% of
the catalog, scan them exactly when that many or fewer match. Since then the library
(``imgsearch.search``) counts only up to 1,500 rows and, above that, first takes the matching
rows among HNSW's 200 nearest, which are the right top-k when ``k`` of them match. A console
search with a large filter around the query (a price range over 10% of the catalog) then costs a
pass instead of an exact scan of every matching row, and a shop's whole catalog is no longer
counted up to 15% of the table before each search. The filters read the embeddings table alone
(its category and price columns, migration 0004); products are joined to the ``k`` hits, not to
every matching row. Step by step, as the library:

1. a filter that matches at most 1,500 rows (counted up to 1,501): an exact scan;
2. otherwise one HNSW pass, iterative scan off, ``ef_search`` = max(200, 2k): the matching rows
   among the nearest; ``k`` of them are the answer;
3. a short pass means the filter's rows lie away from the query: an exact scan when at most 15% of
   the catalog matches;
4. else a relaxed iterative scan fills a pool that is re-sorted exactly, and a short pool falls
   back to the exact scan.

Each call says which it took at level DEBUG (``SET client_min_messages = debug`` in psql shows
it). The guarantees are unchanged: min(k, matching) rows, nearest first. Settings stay scoped to the
call (the function's SET clauses; set_config(..., true) inside it is SET LOCAL, undone when it
returns). User values reach the dynamic SQL only through EXECUTE ... USING; format() inlines only
the active model's id and dimension, read from imgsearch.models, and integers computed here.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEARCH = r"""
CREATE OR REPLACE FUNCTION imgsearch._search(
    query halfvec, k int, tenant text, category text, price_min numeric, price_max numeric, exclude bigint
) RETURNS TABLE (image_id bigint, product_id text, distance double precision)
LANGUAGE plpgsql STABLE
SET hnsw.ef_search = 200
SET hnsw.iterative_scan = off
SET hnsw.max_scan_tuples = 20000
SET hnsw.scan_mem_multiplier = 4
SET jit = off
SET random_page_cost = 1.1
SET plan_cache_mode = force_custom_plan
AS $fn$
DECLARE
    -- imgsearch.search: EXACT_MAX_ROWS, EXACT_MAX_FRACTION, MIN_EF_SEARCH, MAX_EF_SEARCH,
    -- MIN_SCAN_TUPLES, MIN_POOL and MAX_POOL at their defaults
    exact_max_rows constant int := 1500;
    exact_max_fraction constant numeric := 0.15;
    ef_search constant int := greatest(200, 2 * k);
    active record;
    total bigint;
    bound bigint;
    matching bigint;
    has_filters boolean := num_nulls(tenant, category, price_min, price_max, exclude) < 5;
    strategy text;
    ids bigint[];
    pks bigint[];
    distances double precision[];
    -- the filters read embeddings alone (migration 0004); products are joined to the k hits only
    filtered text := ' FROM imgsearch.embeddings e'
        ' WHERE e.model_id = %1$s'
        ' AND ($1::text IS NULL OR e.tenant = $1)'
        ' AND ($2::text IS NULL OR e.category = $2)'
        ' AND ($3::numeric IS NULL OR e.price >= $3)'
        ' AND ($4::numeric IS NULL OR e.price <= $4)'
        ' AND ($5::bigint IS NULL OR e.image_id <> $5)';
    counted text := 'SELECT count(*) FROM (SELECT 1' || filtered || ' LIMIT %2$s) s';
    hits text := 'SELECT array_agg(image_id ORDER BY distance), array_agg(product_pk ORDER BY distance),'
        ' array_agg(distance ORDER BY distance) FROM ';
    -- the first %3$s matching rows through the model's HNSW index, the nearest %4$s of them,
    -- re-sorted: MATERIALIZED and "+ 0", or PostgreSQL 17+ takes the scan's order (relaxed, for
    -- a pool) as sorted and keeps its first rows (pgvector's README)
    nearest text := 'WITH pool AS MATERIALIZED ('
        'SELECT e.image_id, e.product_pk, (e.embedding::halfvec(%2$s) <=> $6)::float8 AS distance'
        || filtered || ' ORDER BY e.embedding::halfvec(%2$s) <=> $6 LIMIT %3$s) '
        || hits || '(SELECT * FROM pool ORDER BY distance + 0 LIMIT %4$s) top';
    -- every matching row's distance (the uncast column: no HNSW index serves it)
    exact text := hits || '(SELECT e.image_id, e.product_pk, (e.embedding <=> $6)::float8 AS distance'
        || filtered || ' ORDER BY e.embedding <=> $6 LIMIT %2$s) top';
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

    -- 1. few rows match: every matching row's distance (below)
    IF has_filters THEN
        EXECUTE format(counted, active.id, exact_max_rows + 1)
            INTO matching USING tenant, category, price_min, price_max, exclude;
        IF matching <= exact_max_rows THEN
            strategy := format('exact (%s rows match)', matching);
        END IF;
    END IF;

    -- 2. one HNSW pass: the matching rows among the ef_search nearest
    IF strategy IS NULL AND ef_search <= 1000 THEN
        PERFORM set_config('hnsw.ef_search', ef_search::text, true);
        EXECUTE format(nearest, active.id, active.dim, k, k)
            INTO ids, pks, distances USING tenant, category, price_min, price_max, exclude, query;
        IF coalesce(cardinality(ids), 0) = k THEN
            strategy := 'hnsw';
        END IF;
    END IF;

    -- 3. the pass came short, the filter's rows lie away from the query: exact up to a bound
    IF strategy IS NULL AND has_filters THEN
        bound := greatest(exact_max_rows, ceil(exact_max_fraction * total)::bigint, k);
        EXECUTE format(counted, active.id, bound + 1)
            INTO matching USING tenant, category, price_min, price_max, exclude;
        IF matching <= bound THEN
            strategy := format('exact (%s rows match, the pass came short)', matching);
        END IF;
    END IF;

    -- 4. a relaxed iterative scan fills a pool, re-sorted exactly; an exact scan if it comes short
    IF strategy IS NULL THEN
        PERFORM set_config('hnsw.ef_search', least(1000, ef_search)::text, true);
        PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
        PERFORM set_config('hnsw.max_scan_tuples', least(10000000, greatest(20000, total))::text, true);
        EXECUTE format(nearest, active.id, active.dim, least(4000, greatest(200, 4 * k)), k)
            INTO ids, pks, distances USING tenant, category, price_min, price_max, exclude, query;
        strategy := CASE WHEN coalesce(cardinality(ids), 0) = k THEN 'hnsw_iterative'
            ELSE 'exact (the pool came short)' END;
    END IF;

    IF strategy LIKE 'exact%' THEN
        EXECUTE format(exact, active.id, k)
            INTO ids, pks, distances USING tenant, category, price_min, price_max, exclude, query;
    END IF;
    RAISE DEBUG 'imgsearch._search: %', strategy;
    RETURN QUERY SELECT hit.i, p.product_id, hit.d
        FROM unnest(ids, pks, distances) WITH ORDINALITY AS hit (i, pk, d, n)
        JOIN imgsearch.products p ON p.id = hit.pk
        ORDER BY hit.n;
END
$fn$
"""


def _previous_search() -> str:
    """Migration 0002's function as migration 0004 left it (filters on the embeddings' columns)."""
    path = Path(__file__).with_name("0002_sql_search_functions.py")
    spec = importlib.util.spec_from_file_location("imgsearch_migration_0002", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    search: str = module.SEARCH
    return (
        search.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
        .replace("p.category", "e.category")
        .replace("p.price", "e.price")
    )


def upgrade() -> None:
    op.execute(SEARCH)


def downgrade() -> None:
    op.execute(_previous_search())
