"""The query log keyed by tenant, and the console's searches as statements a Citus cluster can
route to one shop's node (docs/scaling.md, "Citus mode").

* ``search_queries.tenant`` and ``search_events.tenant`` are ``NOT NULL``: a search that named no
  tenant (an admin's, across shops) is recorded under ``''``, as ``event_ids`` already keeps its
  ids. A distributed table keeps no ``NULL`` in its distribution column, and on one node nothing
  changes but the value: the UBI views still show such a search without a tenant.
* Every statement of the console functions that reads a shop's tables names the shop on each of
  them (``products.tenant = ...`` beside ``products.id = ...``): the shop searched, else a console
  login's own. Under row-level security those rows were the only ones visible anyway; the
  condition lets Citus send the statement to the shop's node alone.
* The SQL-language functions that read those tables (``_checked_events``, ``_lexical``,
  ``facets``, ``adapted``) become PL/pgSQL with the same arguments and results: Citus plans no
  parameterised statement of a SQL function over distributed tables. The boosts of a search's
  candidates are read in one statement instead of one ``_boost`` call per hit (``_boost`` goes).
* ``_record_search`` reads its hits' product keys first, then writes its row with a plain
  ``INSERT ... VALUES`` (Citus takes no subquery in one, and runs an ``INSERT ... SELECT`` through
  ``COPY``, which row-level security refuses a console login).

* ``_request_text`` stamps a request asked again with the proposed row's ``requested_at``
  (Citus takes no volatile function in ``DO UPDATE``).

Results, rankings and errors are those of migration 0024.

Revision ID: 0025
Revises: 0024
Create Date: 2026-11-25
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CALLERS = "imgsearch_app, imgsearch_console, imgsearch_admin"

LOGS = """
UPDATE imgsearch.search_queries SET tenant = '' WHERE tenant IS NULL;
UPDATE imgsearch.search_events SET tenant = '' WHERE tenant IS NULL;
ALTER TABLE imgsearch.search_queries ALTER COLUMN tenant SET DEFAULT '', ALTER COLUMN tenant SET NOT NULL;
ALTER TABLE imgsearch.search_events ALTER COLUMN tenant SET DEFAULT '', ALTER COLUMN tenant SET NOT NULL;
"""

NULLABLE_LOGS = """
ALTER TABLE imgsearch.search_queries ALTER COLUMN tenant DROP NOT NULL, ALTER COLUMN tenant DROP DEFAULT;
ALTER TABLE imgsearch.search_events ALTER COLUMN tenant DROP NOT NULL, ALTER COLUMN tenant DROP DEFAULT;
UPDATE imgsearch.search_queries SET tenant = NULL WHERE tenant = '';
UPDATE imgsearch.search_events SET tenant = NULL WHERE tenant = '';
"""

RECORD = """
CREATE OR REPLACE FUNCTION imgsearch._record_search(
    tenant text, user_query text, attributes jsonb, tenants text[], product_ids text[], image_ids bigint[]
) RETURNS uuid
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    id uuid;
    pks bigint[];
    recording text := lower(btrim(coalesce(nullif(current_setting('imgsearch.record_queries', true), ''), 'on')));
BEGIN
    PERFORM set_config('imgsearch.last_query_id', '', false);
    tenant := coalesce(tenant, imgsearch.login_tenant(), imgsearch.current_tenant(), '');
    IF recording IN ('off', 'false', 'no', '0') OR pg_is_in_recovery()
       OR current_setting('transaction_read_only') = 'on' THEN
        RETURN NULL;
    END IF;
    id := uuidv7();
    BEGIN
        -- the hits' product keys first (an inner join, placed by their order: Citus sends it to
        -- the shards with the ids; an outer join would read every product), then a plain INSERT:
        -- Citus routes it to the shop's node (an INSERT ... SELECT goes through COPY, which
        -- row-level security refuses a console login)
        pks := ARRAY(SELECT f.id FROM generate_series(1, cardinality(product_ids)) AS g(n)
                     LEFT JOIN (SELECT h.n, p.id
                                FROM unnest(tenants, product_ids) WITH ORDINALITY AS h(tenant, product_id, n)
                                JOIN imgsearch.products p ON p.tenant = h.tenant AND p.product_id = h.product_id
                                WHERE _record_search.tenant = '' OR p.tenant = _record_search.tenant) AS f
                     ON f.n = g.n ORDER BY g.n);
        INSERT INTO imgsearch.search_queries (query_id, searched_at, tenant, user_query, query_norm,
            query_attributes, result_offset, product_ids, image_ids, product_pks)
        VALUES (id, uuid_extract_timestamp(id), tenant, user_query, imgsearch.normalized_query(user_query),
            attributes || '{"via": "sql"}', 0, product_ids, image_ids, pks);
    EXCEPTION WHEN others THEN
        RAISE WARNING 'search not recorded (its events will be refused): %', SQLERRM;
        RETURN NULL;
    END;
    PERFORM set_config('imgsearch.last_query_id', id::text, false);
    RETURN id;
END
$fn$;
"""

UBI = """
CREATE OR REPLACE VIEW imgsearch.ubi_queries WITH (security_invoker = true) AS
SELECT q.query_id::text AS query_id, nullif(q.tenant, '') AS tenant, jsonb_strip_nulls(jsonb_build_object(
    'application', q.application,
    'query_id', q.query_id::text,
    'client_id', q.client_id,
    'user_query', q.user_query,
    'query_attributes', q.query_attributes
        || jsonb_build_object('tenant', nullif(q.tenant, ''), 'offset', q.result_offset),
    'object_id_field', 'product_id',
    'query_response_id', q.query_id::text,
    'query_response_hit_ids', to_jsonb(q.product_ids),
    'timestamp', to_char(q.searched_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
)) AS document
FROM imgsearch.search_queries q;

CREATE OR REPLACE VIEW imgsearch.ubi_events WITH (security_invoker = true) AS
SELECT e.query_id::text AS query_id, nullif(e.tenant, '') AS tenant, jsonb_strip_nulls(jsonb_build_object(
    'application', 'imgsearch',
    'action_name', e.action_name,
    'query_id', e.query_id::text,
    'client_id', e.client_id,
    'timestamp', to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    'message_type', 'INFO',
    'event_attributes', jsonb_build_object(
        'object', jsonb_build_object('object_id', e.object_id, 'object_id_field', e.object_id_field),
        'position', jsonb_build_object('ordinal', e.position),
        'event_id', e.event_id,
        'tenant', nullif(e.tenant, '')
    )
)) AS document
FROM imgsearch.search_events e;
"""

# the shop a console statement may name: the one searched, else a tenant login's own (whose rows
# are the only ones it sees); NULL for an admin's search across shops
SHOP = """
CREATE FUNCTION imgsearch._shop(tenant text) RETURNS text
LANGUAGE sql STABLE
RETURN coalesce(tenant, imgsearch.login_tenant());
"""


def _migration(name: str) -> ModuleType:
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(f"imgsearch_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _edited(body: str, edits: Sequence[tuple[str, str]]) -> str:
    """``body`` with each (old, new) made once: every old must occur exactly once."""
    for old, new in edits:
        assert body.count(old) == 1, f"an earlier migration's body changed: {old!r}"
        body = body.replace(old, new)
    return body


def _checked() -> str:
    """Migration 0022's ``_checked_events`` in PL/pgSQL, reading the searches of the caller's shop
    (its scope or login) only, as row-level security lets it."""
    earlier: str = _migration("0022_search_feedback.py").CHECKED
    function = earlier[earlier.index("CREATE FUNCTION imgsearch._checked_events") :]
    return _edited(
        function,
        [
            ("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"),
            (
                "LANGUAGE sql STABLE\nBEGIN ATOMIC\n",
                "LANGUAGE plpgsql STABLE\nAS $fn$\nDECLARE\n"
                "    shop text := coalesce(imgsearch.login_tenant(), imgsearch.current_tenant());\n"
                "BEGIN\n    RETURN QUERY\n",
            ),
            (
                "ON q.query_id = p.query_id AND q.searched_at = uuid_extract_timestamp(p.query_id)\n",
                "ON q.query_id = p.query_id AND q.searched_at = uuid_extract_timestamp(p.query_id)\n"
                "         AND (shop IS NULL OR q.tenant = shop)\n",
            ),
            ("    ORDER BY m.index;\nEND;\n", "    ORDER BY m.index;\nEND\n$fn$;\n"),
        ],
    )


# On a Citus coordinator the HNSW settings must reach the workers' sessions, where the scans run.
# Citus sends a SET LOCAL run in a DO block (not a set_config call, nor a function's SET clause)
# to the nodes a transaction has begun on, and begins one on each node the statements reach once
# a distributed transaction is under way; a console search from psql runs in autocommit, where a
# read alone begins none: a row lock (on no row) begins it. On one node: set_config, as before.
CLUSTER = r"""
CREATE FUNCTION imgsearch._citus() RETURNS boolean
LANGUAGE sql STABLE
RETURN EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus');

CREATE FUNCTION imgsearch._set_local(name text, value text) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $fn$
BEGIN
    IF imgsearch._citus() THEN
        EXECUTE format('DO $set$ BEGIN SET LOCAL %s TO %L; END $set$', name, value);
    ELSE
        PERFORM set_config(name, value, true);
    END IF;
END
$fn$;

CREATE FUNCTION imgsearch._begin_distributed() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM 1 FROM imgsearch.models WHERE false FOR SHARE;
END
$fn$;
"""

# the function's own settings, sent to the workers as SET LOCALs (see CLUSTER)
SETTINGS_ON_CLUSTER = """    IF imgsearch._citus() THEN
        PERFORM imgsearch._begin_distributed();
        PERFORM imgsearch._set_local('hnsw.ef_search', '200');
        PERFORM imgsearch._set_local('hnsw.iterative_scan', 'off');
        PERFORM imgsearch._set_local('hnsw.max_scan_tuples', '20000');
        PERFORM imgsearch._set_local('hnsw.scan_mem_multiplier', '4');
    END IF;

    -- 1. few rows match"""


def _search() -> str:
    """Migration 0008's ``_search`` with its settings reaching a cluster's workers and the hits'
    products read from the shop's node."""
    return _edited(
        _migration("0008_console_similar_product.py").search_with_product_filter(),
        [
            ("    -- 1. few rows match", SETTINGS_ON_CLUSTER),
            (
                "PERFORM set_config('hnsw.ef_search', ef_search::text, true);",
                "PERFORM imgsearch._set_local('hnsw.ef_search', ef_search::text);",
            ),
            (
                "PERFORM set_config('hnsw.ef_search', least(1000, ef_search)::text, true);",
                "PERFORM imgsearch._set_local('hnsw.ef_search', least(1000, ef_search)::text);",
            ),
            (
                "PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);",
                "PERFORM imgsearch._set_local('hnsw.iterative_scan', 'relaxed_order');",
            ),
            (
                "PERFORM set_config('hnsw.max_scan_tuples', least(10000000, greatest(20000, total))::text, true);",
                "PERFORM imgsearch._set_local('hnsw.max_scan_tuples', least(10000000, greatest(20000, total))::text);",
            ),
            (
                "JOIN imgsearch.products p ON p.id = hit.pk\n",
                "JOIN imgsearch.products p ON p.id = hit.pk\n"
                "            AND (_search.tenant IS NULL OR p.tenant = _search.tenant)\n",
            )
        ],
    )


PRODUCT_SOURCE = r"""
CREATE OR REPLACE FUNCTION imgsearch._product_source(
    p_tenant text, p_product_id text, OUT source halfvec, OUT pk bigint
) LANGUAGE plpgsql STABLE
AS $fn$
BEGIN
    IF p_tenant IS NULL THEN
        RAISE EXCEPTION 'search_similar_product needs a tenant: product ids name products within a tenant'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT p.id INTO pk FROM imgsearch.products p
        WHERE p.tenant = p_tenant AND p.product_id = p_product_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % has no product %', quote_literal(p_tenant), quote_literal(p_product_id)
            USING ERRCODE = 'no_data_found';
    END IF;
    -- the unit mean of the product's images, as the library computes it
    SELECT l2_normalize(avg(l2_normalize(e.embedding::vector)))::halfvec INTO source
        FROM imgsearch.embeddings e JOIN imgsearch.models m ON m.id = e.model_id
        WHERE m.active AND e.tenant = p_tenant AND e.product_pk = pk;
    IF source IS NULL THEN
        RAISE EXCEPTION 'product % of tenant % has no embedded image yet',
            quote_literal(p_product_id), quote_literal(p_tenant) USING ERRCODE = 'no_data_found';
    END IF;
END
$fn$
"""

# each candidate's boost: the product's for the normalised text, else product_weight times the
# product's own (migration 0024's _boost, for all the candidates in one statement)
ANSWERED = r"""
CREATE OR REPLACE FUNCTION imgsearch._answered(
    source halfvec, want int, in_tenant text, in_category text, in_price_min numeric, in_price_max numeric,
    exclude bigint, exclude_product bigint, user_query text, attributes jsonb
) RETURNS TABLE (image_id bigint, product_id text, distance double precision)
LANGUAGE plpgsql VOLATILE
AS $fn$
#variable_conflict use_column
DECLARE
    shop text := imgsearch._shop(in_tenant);
    lift int;
    weight double precision;
    norm text := imgsearch.normalized_query(user_query);
    r_images bigint[];
    r_products text[];
    r_distances double precision[];
    r_tenants text[];
    r_boosts double precision[];
    places int[];
BEGIN
    IF want IS NULL OR want < 1 OR want > 1000 THEN
        RAISE EXCEPTION 'k must be from 1 to 1000, got %', coalesce(want::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    lift := imgsearch._boost_lift(shop);
    weight := imgsearch._boost_product_weight();
    SELECT array_agg(s.image_id ORDER BY s.n), array_agg(s.product_id ORDER BY s.n),
           array_agg(s.distance ORDER BY s.n)
    INTO r_images, r_products, r_distances
    FROM imgsearch._search(source, least(1000, want + lift), shop, in_category, in_price_min, in_price_max,
                           exclude, exclude_product) WITH ORDINALITY AS s(image_id, product_id, distance, n);
    -- (an inner join: Citus sends it to the shards with the ids; an outer one reads every image)
    r_tenants := ARRAY(SELECT f.tenant FROM generate_series(1, coalesce(cardinality(r_images), 0)) AS g(n)
                       LEFT JOIN (SELECT h.n, i.tenant FROM unnest(r_images) WITH ORDINALITY AS h(id, n)
                                  JOIN imgsearch.images i ON i.id = h.id
                                  WHERE shop IS NULL OR i.tenant = shop) AS f ON f.n = g.n
                       ORDER BY g.n);
    IF lift > 0 THEN
        SELECT coalesce(array_agg(o.n ORDER BY o.n - lift * o.boost, o.boost DESC, o.n), '{}'),
               coalesce(array_agg(o.boost ORDER BY o.n - lift * o.boost, o.boost DESC, o.n), '{}')
        INTO places, r_boosts
        FROM (WITH learned AS (  -- the candidates' boosts (read first: an outer join would read them all)
                  SELECT b.tenant, b.product_id, b.query_norm, b.boost FROM imgsearch.boosts b
                  WHERE b.tenant = ANY (r_tenants) AND (shop IS NULL OR b.tenant = shop)
                    AND b.product_id = ANY (r_products) AND b.query_norm IN (norm, '')
              )
              SELECT h.n::int AS n, coalesce(bq.boost, weight * bp.boost, 0)::double precision AS boost
              FROM unnest(r_tenants, r_products) WITH ORDINALITY AS h(tenant, product_id, n)
              LEFT JOIN learned bq ON bq.tenant = h.tenant AND bq.query_norm = norm AND bq.product_id = h.product_id
              LEFT JOIN learned bp ON bp.tenant = h.tenant AND bp.query_norm = '' AND bp.product_id = h.product_id
             ) AS o;
    ELSE
        places := ARRAY(SELECT generate_series(1, coalesce(cardinality(r_images), 0)));
        r_boosts := array_fill(0::double precision, ARRAY[coalesce(cardinality(r_images), 0)]);
    END IF;
    places := places[1:want];
    PERFORM imgsearch._record_search(
        in_tenant, user_query,
        attributes || jsonb_build_object(
            'k', want, 'boost', lift > 0 AND 0 < ANY (r_boosts[1:want]),
            'filters', jsonb_strip_nulls(jsonb_build_object(
                'category', in_category, 'price_min', in_price_min, 'price_max', in_price_max))),
        ARRAY(SELECT r_tenants[u.p] FROM unnest(places) WITH ORDINALITY AS u(p, r) ORDER BY u.r),
        ARRAY(SELECT r_products[u.p] FROM unnest(places) WITH ORDINALITY AS u(p, r) ORDER BY u.r),
        ARRAY(SELECT r_images[u.p] FROM unnest(places) WITH ORDINALITY AS u(p, r) ORDER BY u.r));
    RETURN QUERY SELECT r_images[u.p], r_products[u.p], r_distances[u.p]
        FROM unnest(places) WITH ORDINALITY AS u(p, r) ORDER BY u.r;
END
$fn$;
"""

ADAPTED = """
CREATE OR REPLACE FUNCTION imgsearch.adapted(query vector, tenant text) RETURNS vector
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    mapped vector;
BEGIN
    SELECT l2_normalize(array_agg(-(r.weights <#> query) ORDER BY r."row")::vector) INTO mapped
    FROM imgsearch.query_adapter_rows r
    JOIN imgsearch.query_adapters a ON a.id = r.adapter_id AND a.tenant = r.tenant
    WHERE a.active AND a.tenant = adapted.tenant AND r.tenant = adapted.tenant
      AND a.model_id = (SELECT m.id FROM imgsearch.models m WHERE m.active);
    RETURN coalesce(mapped, query);
END
$fn$
"""

def _match_within() -> str:
    """Migration 0020's ``lexical_match`` with a fifth argument: the shop an admin's statement
    names (a console search of one shop ranks that shop's matches alone, on its node)."""
    m0020 = _migration("0020_product_text.py")
    return _edited(
        m0020.MATCH.replace("@TRGM@", m0020._schema_of("pg_trgm")),
        [
            (
                "lexical_match(query text, plain text, exact text, excluded text)",
                "lexical_match(query text, plain text, exact text, excluded text, within text)",
            ),
            ("    shop text := coalesce(imgsearch.login_tenant(), imgsearch.current_tenant());\n", ""),
            (
                "        OR pg_has_role(session_user, 'imgsearch_worker', 'MEMBER');\n",
                "        OR pg_has_role(session_user, 'imgsearch_worker', 'MEMBER');\n"
                "    shop text := coalesce(imgsearch.login_tenant(), imgsearch.current_tenant(),\n"
                "                          CASE WHEN everyone THEN within END);\n",
            ),
        ],
    )


# migration 0021's _lexical: the top n products matching a text
LEXICAL = """
CREATE OR REPLACE FUNCTION imgsearch._lexical(query text, n int, tenant text, category text,
    price_min numeric, price_max numeric)
RETURNS TABLE (product_pk bigint, rank bigint)
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    shop text := imgsearch._shop(_lexical.tenant);
    m_pks bigint[];
    m_exact boolean[];
    m_ranks real[];
    m_similarities real[];
BEGIN
    -- the matches first: lexical_match reads the products itself (on Citus, a query of the
    -- cluster, which a statement sent to one shard can't run)
    SELECT array_agg(m.product_pk), array_agg(m.exact_match), array_agg(m.doc_rank), array_agg(m.similarity)
    INTO m_pks, m_exact, m_ranks, m_similarities
    FROM imgsearch.lexical_match(query, lower(btrim(query)), btrim(query), NULL, shop) AS m;
    RETURN QUERY
    SELECT p.id, row_number() OVER (ORDER BY m.exact_match DESC, m.doc_rank DESC, m.similarity DESC, p.id)
    FROM unnest(m_pks, m_exact, m_ranks, m_similarities) AS m(product_pk, exact_match, doc_rank, similarity)
    JOIN imgsearch.products p ON p.id = m.product_pk
    WHERE (shop IS NULL OR p.tenant = shop)
      AND (_lexical.category IS NULL OR p.category = _lexical.category)
      AND (_lexical.price_min IS NULL OR p.price >= _lexical.price_min)
      AND (_lexical.price_max IS NULL OR p.price <= _lexical.price_max)
      AND EXISTS (SELECT 1 FROM imgsearch.embeddings e WHERE e.tenant = p.tenant AND e.product_pk = p.id
                  AND e.model_id = (SELECT m2.id FROM imgsearch.models m2 WHERE m2.active))
    ORDER BY 2
    LIMIT n;
END
$fn$
"""


# migration 0024's search_hybrid: each side's candidates read first, in statements of their own
# (on Citus each reads the cluster, which a statement sent to one shard can't), each join to a
# shop's table naming the shop, the boosts read in the fusion statement
HYBRID = """
CREATE OR REPLACE FUNCTION imgsearch.search_hybrid(
    query text, k int DEFAULT 10, tenant text DEFAULT NULL, category text DEFAULT NULL,
    price_min numeric DEFAULT NULL, price_max numeric DEFAULT NULL, rrf_k double precision DEFAULT 60
) RETURNS TABLE (image_id bigint, product_id text, title text, brand text, relevance double precision,
                 semantic_rank int, lexical_rank int, distance double precision)
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    q record;
    shop text := imgsearch._shop(search_hybrid.tenant);
    n int;
    lift int;
    weight double precision;
    norm text := imgsearch.normalized_query(query);
    s_images bigint[];
    s_products text[];
    s_distances double precision[];
    l_products bigint[];
    l_ranks bigint[];
    r_images bigint[];
    r_products text[];
    r_titles text[];
    r_brands text[];
    r_relevance double precision[];
    r_semantic int[];
    r_lexical int[];
    r_distances double precision[];
    r_tenants text[];
    r_boosts double precision[];
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN  -- before asking a worker anything
        RAISE EXCEPTION 'k must be from 1 to 1000, got %', coalesce(k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF rrf_k IS NULL OR NOT rrf_k > 0 OR rrf_k = 'Infinity' THEN
        RAISE EXCEPTION 'rrf_k must be a number above 0, got %', coalesce(rrf_k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    lift := imgsearch._boost_lift(shop);
    weight := imgsearch._boost_product_weight();
    -- each side's products (imgsearch.search.hybrid.candidates)
    n := least(2000, greatest(50, 2 * k, k + lift));
    SELECT * INTO q FROM imgsearch._text_embedding(query);
    q.embedding := imgsearch.adapted(q.embedding,
        coalesce(search_hybrid.tenant, imgsearch.login_tenant(), imgsearch.current_tenant()));
    SELECT array_agg(s.image_id ORDER BY s.ord), array_agg(s.product_id ORDER BY s.ord),
           array_agg(s.distance ORDER BY s.ord)
    INTO s_images, s_products, s_distances
    FROM imgsearch._search(l2_normalize(q.embedding)::halfvec, least(1000, 4 * n), shop, search_hybrid.category,
                           price_min, price_max, NULL) WITH ORDINALITY AS s(image_id, product_id, distance, ord);
    SELECT array_agg(l.product_pk ORDER BY l.rank), array_agg(l.rank ORDER BY l.rank) INTO l_products, l_ranks
    FROM imgsearch._lexical(query, n, shop, search_hybrid.category, price_min, price_max) AS l;
    WITH images AS (
        SELECT s.image_id, s.product_id, s.distance, row_number() OVER (ORDER BY s.distance) AS place
        FROM unnest(s_images, s_products, s_distances) AS s(image_id, product_id, distance)
    ), semantic AS (
        SELECT b.product_pk, b.image_id, row_number() OVER (ORDER BY b.place) AS rank FROM (
            SELECT DISTINCT ON (p.id) p.id AS product_pk, i.image_id, i.place
            FROM images i JOIN imgsearch.embeddings e ON e.image_id = i.image_id
                AND (shop IS NULL OR e.tenant = shop)
            JOIN imgsearch.products p ON p.id = e.product_pk AND p.tenant = e.tenant
                AND p.product_id = i.product_id
            ORDER BY p.id, i.place
        ) AS b ORDER BY b.place LIMIT n
    ), lexical AS (
        SELECT l.product_pk, l.rank FROM unnest(l_products, l_ranks) AS l(product_pk, rank)
    ), fused AS (
        SELECT coalesce(s.product_pk, l.product_pk) AS product_pk, s.image_id AS semantic_image,
               s.rank AS semantic_rank, l.rank AS lexical_rank,
               coalesce(1 / (rrf_k + s.rank), 0) + coalesce(1 / (rrf_k + l.rank), 0) AS relevance
        FROM semantic s FULL JOIN lexical l ON l.product_pk = s.product_pk
    ), placed AS (
        SELECT f.*, p.tenant, p.product_id, p.title, p.brand,
               row_number() OVER (ORDER BY f.relevance DESC, f.product_pk) AS place
        FROM fused f JOIN imgsearch.products p ON p.id = f.product_pk AND (shop IS NULL OR p.tenant = shop)
    ), learned AS (  -- the candidates' boosts (an outer join to boosts would read them all)
        SELECT b.tenant, b.product_id, b.query_norm, b.boost
        FROM placed pl JOIN imgsearch.boosts b ON b.tenant = pl.tenant AND b.product_id = pl.product_id
        WHERE lift > 0 AND pl.place <= k + lift AND (shop IS NULL OR b.tenant = shop)
          AND b.query_norm IN (norm, '')
    ), top AS (
        SELECT pl.*, o.boost, row_number() OVER (ORDER BY pl.place - lift * o.boost, o.boost DESC, pl.place) AS r
        FROM placed pl
        LEFT JOIN learned bq ON bq.tenant = pl.tenant AND bq.query_norm = norm AND bq.product_id = pl.product_id
        LEFT JOIN learned bp ON bp.tenant = pl.tenant AND bp.query_norm = '' AND bp.product_id = pl.product_id
        CROSS JOIN LATERAL (
            SELECT CASE WHEN lift > 0 THEN coalesce(bq.boost, weight * bp.boost, 0)::double precision
                        ELSE 0 END AS boost) AS o
        WHERE pl.place <= k + lift
        ORDER BY pl.place - lift * o.boost, o.boost DESC, pl.place LIMIT k
    ), best AS (  -- each product's image: the semantic side's, else its nearest (DISTINCT ON: Citus
                  -- takes no LIMIT in a lateral subquery over rows it gathered)
        SELECT DISTINCT ON (t.product_pk) t.product_pk, e.image_id,
               (e.embedding <=> q.embedding::halfvec)::double precision AS distance
        FROM top t JOIN imgsearch.embeddings e ON e.tenant = t.tenant AND e.product_pk = t.product_pk
             AND (shop IS NULL OR e.tenant = shop)
        WHERE e.model_id = (SELECT m.id FROM imgsearch.models m WHERE m.active)
        ORDER BY t.product_pk, (e.image_id = t.semantic_image) DESC NULLS LAST, 3, e.image_id
    )
    SELECT array_agg(best.image_id ORDER BY t.r), array_agg(t.product_id ORDER BY t.r),
           array_agg(t.title ORDER BY t.r), array_agg(t.brand ORDER BY t.r), array_agg(t.relevance ORDER BY t.r),
           array_agg(t.semantic_rank::int ORDER BY t.r), array_agg(t.lexical_rank::int ORDER BY t.r),
           array_agg(best.distance ORDER BY t.r), array_agg(t.tenant ORDER BY t.r), array_agg(t.boost ORDER BY t.r)
    INTO r_images, r_products, r_titles, r_brands, r_relevance, r_semantic, r_lexical, r_distances, r_tenants,
         r_boosts
    FROM top t JOIN best ON best.product_pk = t.product_pk;
    PERFORM imgsearch._record_search(
        search_hybrid.tenant, query,
        jsonb_build_object(
            'kind', 'text', 'mode', 'hybrid', 'k', k, 'boost', lift > 0 AND 0 < ANY (r_boosts),
            'filters', jsonb_strip_nulls(jsonb_build_object(
                'category', search_hybrid.category, 'price_min', price_min, 'price_max', price_max))),
        coalesce(r_tenants, '{}'), coalesce(r_products, '{}'), coalesce(r_images, '{}'));
    RETURN QUERY SELECT * FROM unnest(r_images, r_products, r_titles, r_brands, r_relevance, r_semantic,
                                      r_lexical, r_distances);
END
$fn$
"""


def _facets() -> str:
    """Migration 0021's ``facets`` in PL/pgSQL, its match set read on the shop's node."""
    earlier: str = _migration("0021_console_hybrid_and_facets.py").FACETS
    return _edited(
        earlier,
        [
            ("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"),
            (
                "LANGUAGE sql STABLE\nBEGIN ATOMIC\n",
                "LANGUAGE plpgsql STABLE\nAS $fn$\nDECLARE\n"
                "    shop text := imgsearch._shop(facets.tenant);\n    matches bigint[];\n    counted jsonb;\nBEGIN\n"
                "    IF query IS NOT NULL THEN  -- first: lexical_match reads the products itself\n"
                "        matches := ARRAY(SELECT m.product_pk\n"
                "                         FROM imgsearch.lexical_match(query, lower(btrim(query)), btrim(query), NULL,\n"
                "                                                      shop) AS m);\n"
                "    END IF;\n",
            ),
            (
                "WHERE (query IS NULL OR p.id IN (\n"
                "                SELECT m.product_pk FROM imgsearch.lexical_match(query, lower(btrim(query)), btrim(query), NULL) AS m))\n",
                "WHERE (query IS NULL OR p.id = ANY (matches))\n",
            ),
            ("AND (facets.tenant IS NULL OR p.tenant = facets.tenant)", "AND (shop IS NULL OR p.tenant = shop)"),
            (
                "EXISTS (SELECT 1 FROM imgsearch.embeddings e WHERE e.product_pk = p.id\n",
                "EXISTS (SELECT 1 FROM imgsearch.embeddings e WHERE e.tenant = p.tenant AND e.product_pk = p.id\n",
            ),
            ("            FROM matched m, prices p WHERE m.price IS NOT NULL GROUP BY 1, 2) AS buckets), '[]')\n    );\nEND\n",
             "            FROM matched m, prices p WHERE m.price IS NOT NULL GROUP BY 1, 2) AS buckets), '[]')\n"
             "    ) INTO counted;\n    RETURN counted;\nEND\n$fn$\n"),
        ],
    )  # fmt: skip


def _request_text() -> str:
    """Migration 0015's ``_request_text`` with a request asked again stamped by the proposed
    row's ``requested_at`` (its default, ``clock_timestamp()``): Citus takes no volatile function
    in ``DO UPDATE``."""
    earlier: str = _migration("0015_sql_text_search.py").FUNCTIONS
    start = earlier.index("CREATE FUNCTION imgsearch._request_text")
    function = earlier[start : earlier.index("$fn$;", start) + len("$fn$;")]
    return _edited(
        function,
        [
            ("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"),
            ("requested_at = clock_timestamp();", "requested_at = excluded.requested_at;"),
        ],
    )


PRIVATE = (
    "imgsearch._shop(text)",
    "imgsearch._citus()",
    "imgsearch._set_local(text, text)",
    "imgsearch._begin_distributed()",
)


def upgrade() -> None:
    op.execute(LOGS)
    op.execute(UBI)
    op.execute(SHOP)
    op.execute(CLUSTER)
    for sql in (_request_text(), RECORD, _checked(), _search(), PRODUCT_SOURCE, ANSWERED, ADAPTED, _match_within(), LEXICAL, HYBRID,
                _facets()):
        op.execute(sql)
    op.execute("DROP FUNCTION imgsearch._boost(text, text, text, double precision)")
    op.execute("REVOKE ALL ON FUNCTION imgsearch.lexical_match(text, text, text, text, text) FROM PUBLIC")
    op.execute(
        "GRANT EXECUTE ON FUNCTION imgsearch.lexical_match(text, text, text, text, text) "
        "TO imgsearch_app, imgsearch_console, imgsearch_worker, imgsearch_admin"
    )
    for function in PRIVATE:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {CALLERS}")


def downgrade() -> None:
    m0024 = _migration("0024_console_searches_recorded.py")
    boost = m0024.SETTINGS[m0024.SETTINGS.index("CREATE FUNCTION imgsearch._boost(") :]
    op.execute(boost)
    op.execute(
        f"REVOKE ALL ON FUNCTION imgsearch._boost(text, text, text, double precision) FROM PUBLIC;"
        f"GRANT EXECUTE ON FUNCTION imgsearch._boost(text, text, text, double precision) TO {CALLERS}"
    )
    m0021 = _migration("0021_console_hybrid_and_facets.py")
    op.execute(m0021.FACETS.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.execute(m0021.MATCHED.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.execute(m0024.HYBRID)
    op.execute(_migration("0023_query_adapters.py").ADAPTED.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.execute(m0024.ANSWERED.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    m0008 = _migration("0008_console_similar_product.py")
    op.execute(m0008.PRODUCT_SOURCE.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.execute(m0008.search_with_product_filter())
    m0022 = _migration("0022_search_feedback.py")
    checked = m0022.CHECKED[m0022.CHECKED.index("CREATE FUNCTION imgsearch._checked_events") :]
    op.execute(checked.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.execute(m0024.RECORD.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.execute(_request_text().replace("requested_at = excluded.requested_at;", "requested_at = clock_timestamp();"))
    op.execute("DROP FUNCTION imgsearch.lexical_match(text, text, text, text, text)")
    op.execute("DROP FUNCTION imgsearch._shop(text), imgsearch._citus(), imgsearch._set_local(text, text)")
    op.execute("DROP FUNCTION imgsearch._begin_distributed()")
    op.execute(UBI.replace("nullif(q.tenant, '')", "q.tenant").replace("nullif(e.tenant, '')", "e.tenant"))
    op.execute(NULLABLE_LOGS)
