"""The SQL console's searches recorded and boosted as the library's are.

``search_vector``, ``search_similar``, ``search_similar_product``, ``search_text`` and
``search_hybrid`` keep their arguments and result columns. Each now:

* blends the learned boosts (migration 0022's ``boosts``) into its ranking as
  :mod:`imgsearch.search.boosting` does: the hits are ranked without boosts (``place``), then
  ordered by ``place - lift * boost`` (ties: the boosted hit first) among the first
  ``k + lift`` candidates; a text's boost is the product's for the normalised text, else
  ``product_weight`` times the product's own; a search without text uses the products' own;
* records itself in ``search_queries`` (``query_attributes`` says ``"via": "sql"``) under a
  UUIDv7 that ``imgsearch.last_query_id()`` returns for the session's last recorded search, so a
  console user can send events on its hits with ``record_events``. A standby or a read-only
  transaction can't write: the search answers unrecorded and ``last_query_id()`` is NULL. A row
  the database refuses (a tenant login searching another tenant) is a WARNING, not an error.

Settings, per session or with ``SET LOCAL`` per transaction, as the library's ``IMGSEARCH_*``:
``imgsearch.boost`` (on), ``imgsearch.boost_max_lift`` (10), ``imgsearch.boost_product_weight``
(0.5) and ``imgsearch.record_queries`` (on). ``imgsearch.normalized_query(text)`` is
:func:`imgsearch.learning.queries.normalized`: the key of a query's boosts.

``search_hybrid`` takes its images from ``_search`` (as ``search_vector`` did) so that one
search is recorded once; its sides bring ``max(50, 2k, k + lift)`` products, as the library's.

Revision ID: 0024
Revises: 0023
Create Date: 2026-11-25
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CALLERS = "imgsearch_app, imgsearch_console, imgsearch_admin"
EVERYONE = "imgsearch_app, imgsearch_console, imgsearch_worker, imgsearch_admin"

NORMALIZED = r"""
CREATE FUNCTION imgsearch.normalized_query(query text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN nullif(left(btrim(regexp_replace(casefold(normalize(query, NFKC) COLLATE pg_unicode_fast),
                                        '\s+', ' ', 'g'), ' '), 500), '');
"""

LAST_QUERY_ID = """
CREATE FUNCTION imgsearch.last_query_id() RETURNS uuid
LANGUAGE sql STABLE
RETURN nullif(current_setting('imgsearch.last_query_id', true), '')::uuid;
"""

# the session's boost settings: the lift (0: boosts off, or nothing learned for the tenant searched,
# every tenant when NULL: the plain search) and a product's own boost's weight
SETTINGS = r"""
CREATE FUNCTION imgsearch._boost_lift(tenant text) RETURNS int
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    enabled text := lower(btrim(coalesce(nullif(current_setting('imgsearch.boost', true), ''), 'on')));
    lift text := btrim(coalesce(nullif(current_setting('imgsearch.boost_max_lift', true), ''), '10'));
BEGIN
    IF enabled IN ('off', 'false', 'no', '0') THEN
        RETURN 0;
    ELSIF enabled NOT IN ('on', 'true', 'yes', '1') THEN
        RAISE EXCEPTION 'imgsearch.boost must be on or off, got %', quote_literal(enabled)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF lift !~ '^[0-9]{1,3}$' OR lift::int > 100 THEN
        RAISE EXCEPTION 'imgsearch.boost_max_lift must be a whole number of places from 0 to 100, got %',
            quote_literal(lift) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF lift::int > 0
       AND NOT EXISTS (SELECT 1 FROM imgsearch.boosts b WHERE _boost_lift.tenant IS NULL OR b.tenant = _boost_lift.tenant) THEN
        RETURN 0;
    END IF;
    RETURN lift::int;
END
$fn$;

CREATE FUNCTION imgsearch._boost_product_weight() RETURNS double precision
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    weight text := btrim(coalesce(nullif(current_setting('imgsearch.boost_product_weight', true), ''), '0.5'));
BEGIN
    IF weight !~ '^([0-9]+(\.[0-9]*)?|\.[0-9]+)$' OR weight::numeric > 1 THEN
        RAISE EXCEPTION 'imgsearch.boost_product_weight must be from 0 to 1, got %', quote_literal(weight)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN weight::double precision;
END
$fn$;

CREATE FUNCTION imgsearch._boost(tenant text, product_id text, query_norm text, product_weight double precision)
RETURNS double precision
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT coalesce(
        (SELECT b.boost FROM imgsearch.boosts b
         WHERE b.tenant = _boost.tenant AND b.query_norm = _boost.query_norm AND b.product_id = _boost.product_id),
        product_weight * (SELECT b.boost FROM imgsearch.boosts b
                          WHERE b.tenant = _boost.tenant AND b.query_norm = '' AND b.product_id = _boost.product_id),
        0)::double precision;
END;
"""

# one search's row in search_queries, and the session's last_query_id (NULL when not recorded);
# its tenant: the one searched, else the console login's, else the scope's
RECORD = """
CREATE FUNCTION imgsearch._record_search(
    tenant text, user_query text, attributes jsonb, tenants text[], product_ids text[], image_ids bigint[]
) RETURNS uuid
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    id uuid;
    recording text := lower(btrim(coalesce(nullif(current_setting('imgsearch.record_queries', true), ''), 'on')));
BEGIN
    PERFORM set_config('imgsearch.last_query_id', '', false);
    tenant := coalesce(tenant, imgsearch.login_tenant(), imgsearch.current_tenant());
    IF recording IN ('off', 'false', 'no', '0') OR pg_is_in_recovery()
       OR current_setting('transaction_read_only') = 'on' THEN
        RETURN NULL;
    END IF;
    id := uuidv7();
    BEGIN
        INSERT INTO imgsearch.search_queries (query_id, searched_at, tenant, user_query, query_norm,
            query_attributes, result_offset, product_ids, image_ids, product_pks)
        VALUES (id, uuid_extract_timestamp(id), tenant, user_query, imgsearch.normalized_query(user_query),
            attributes || '{"via": "sql"}', 0, product_ids, image_ids,
            ARRAY(SELECT p.id FROM unnest(tenants, product_ids) WITH ORDINALITY AS h(tenant, product_id, n)
                  LEFT JOIN imgsearch.products p ON p.tenant = h.tenant AND p.product_id = h.product_id
                  ORDER BY h.n));
    EXCEPTION WHEN others THEN
        RAISE WARNING 'search not recorded (its events will be refused): %', SQLERRM;
        RETURN NULL;
    END;
    PERFORM set_config('imgsearch.last_query_id', id::text, false);
    RETURN id;
END
$fn$;
"""

# the images nearest a source, boosted and recorded: search_vector's, search_similar's and
# search_similar_product's body, and search_text's search
ANSWERED = r"""
CREATE FUNCTION imgsearch._answered(
    source halfvec, want int, in_tenant text, in_category text, in_price_min numeric, in_price_max numeric,
    exclude bigint, exclude_product bigint, user_query text, attributes jsonb
) RETURNS TABLE (image_id bigint, product_id text, distance double precision)
LANGUAGE plpgsql VOLATILE
AS $fn$
#variable_conflict use_column
DECLARE
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
    lift := imgsearch._boost_lift(in_tenant);
    weight := imgsearch._boost_product_weight();
    SELECT array_agg(s.image_id ORDER BY s.n), array_agg(s.product_id ORDER BY s.n),
           array_agg(s.distance ORDER BY s.n), array_agg(i.tenant ORDER BY s.n)
    INTO r_images, r_products, r_distances, r_tenants
    FROM imgsearch._search(source, least(1000, want + lift), in_tenant, in_category, in_price_min, in_price_max,
                           exclude, exclude_product) WITH ORDINALITY AS s(image_id, product_id, distance, n)
    LEFT JOIN imgsearch.images i ON i.id = s.image_id;
    SELECT coalesce(array_agg(o.n ORDER BY o.n - lift * o.boost, o.boost DESC, o.n), '{}'),
           coalesce(array_agg(o.boost ORDER BY o.n - lift * o.boost, o.boost DESC, o.n), '{}')
    INTO places, r_boosts
    FROM (SELECT h.n::int AS n,
                 CASE WHEN lift > 0 THEN imgsearch._boost(h.tenant, h.product_id, norm, weight) ELSE 0 END AS boost
          FROM unnest(r_tenants, r_products) WITH ORDINALITY AS h(tenant, product_id, n)) AS o;
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

SEARCH_VECTOR = """
CREATE OR REPLACE FUNCTION imgsearch.search_vector(
    query vector, k int DEFAULT 10, tenant text DEFAULT NULL, category text DEFAULT NULL,
    price_min numeric DEFAULT NULL, price_max numeric DEFAULT NULL
) RETURNS TABLE (image_id bigint, product_id text, distance double precision)
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT * FROM imgsearch._answered(l2_normalize(query)::halfvec, k, tenant, category, price_min, price_max,
                                      NULL, NULL, NULL, '{"kind": "vector", "mode": "semantic"}');
END
"""

# SQL functions: a parameter may share the name of a result column
SEARCH_SIMILAR = """
CREATE OR REPLACE FUNCTION imgsearch.search_similar(
    image_id bigint, k int DEFAULT 10, tenant text DEFAULT NULL, category text DEFAULT NULL,
    price_min numeric DEFAULT NULL, price_max numeric DEFAULT NULL
) RETURNS TABLE (image_id bigint, product_id text, distance double precision)
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT s.* FROM imgsearch._answered(imgsearch._similar_source($1, $3), $2, $3, $4, $5, $6, $1, NULL, NULL,
        jsonb_build_object('kind', 'similar_to', 'mode', 'semantic', 'similar_to', $1)) AS s;
END
"""

SEARCH_SIMILAR_PRODUCT = """
CREATE OR REPLACE FUNCTION imgsearch.search_similar_product(
    tenant text, product_id text, k int DEFAULT 10, category text DEFAULT NULL,
    price_min numeric DEFAULT NULL, price_max numeric DEFAULT NULL
) RETURNS TABLE (image_id bigint, product_id text, distance double precision)
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT s.* FROM imgsearch._product_source($1, $2) AS src,
        imgsearch._answered(src.source, $3, $1, $4, $5, $6, NULL, src.pk, NULL,
            jsonb_build_object('kind', 'similar_to_product', 'mode', 'semantic', 'similar_to_product', $2)) AS s;
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
    SELECT * INTO q FROM imgsearch._text_embedding(query);
    q.embedding := imgsearch.adapted(q.embedding,
        coalesce(search_text.tenant, imgsearch.login_tenant(), imgsearch.current_tenant()));
    RETURN QUERY
        SELECT s.image_id, s.product_id, s.distance,
            CASE WHEN q.logit_bias IS NULL THEN NULL
                 ELSE 1 / (1 + exp(-(q.logit_scale * (1 - s.distance) + q.logit_bias))) END
        FROM imgsearch._answered(l2_normalize(q.embedding)::halfvec, k, search_text.tenant, search_text.category,
                                 price_min, price_max, NULL, NULL, query,
                                 '{"kind": "text", "mode": "semantic"}') AS s;
END
$fn$;
"""

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
    n int;
    lift int;
    weight double precision;
    norm text := imgsearch.normalized_query(query);
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
    lift := imgsearch._boost_lift(search_hybrid.tenant);
    weight := imgsearch._boost_product_weight();
    -- each side's products (imgsearch.search.hybrid.candidates)
    n := least(2000, greatest(50, 2 * k, k + lift));
    SELECT * INTO q FROM imgsearch._text_embedding(query);
    q.embedding := imgsearch.adapted(q.embedding,
        coalesce(search_hybrid.tenant, imgsearch.login_tenant(), imgsearch.current_tenant()));
    WITH images AS (
        SELECT s.image_id, s.product_id, s.distance, row_number() OVER (ORDER BY s.distance) AS place
        FROM imgsearch._search(l2_normalize(q.embedding)::halfvec, least(1000, 4 * n), search_hybrid.tenant,
                               search_hybrid.category, price_min, price_max, NULL) AS s
    ), semantic AS (
        SELECT b.product_pk, b.image_id, row_number() OVER (ORDER BY b.place) AS rank FROM (
            SELECT DISTINCT ON (p.id) p.id AS product_pk, i.image_id, i.place
            FROM images i JOIN imgsearch.embeddings e ON e.image_id = i.image_id
            JOIN imgsearch.products p ON p.id = e.product_pk AND p.product_id = i.product_id
            ORDER BY p.id, i.place
        ) AS b ORDER BY b.place LIMIT n
    ), lexical AS (
        SELECT * FROM imgsearch._lexical(query, n, search_hybrid.tenant, search_hybrid.category,
                                         price_min, price_max)
    ), fused AS (
        SELECT coalesce(s.product_pk, l.product_pk) AS product_pk, s.image_id AS semantic_image,
               s.rank AS semantic_rank, l.rank AS lexical_rank,
               coalesce(1 / (rrf_k + s.rank), 0) + coalesce(1 / (rrf_k + l.rank), 0) AS relevance
        FROM semantic s FULL JOIN lexical l ON l.product_pk = s.product_pk
    ), placed AS (
        SELECT f.*, p.tenant, p.product_id, p.title, p.brand,
               row_number() OVER (ORDER BY f.relevance DESC, f.product_pk) AS place
        FROM fused f JOIN imgsearch.products p ON p.id = f.product_pk
    ), top AS (
        SELECT pl.*, o.boost, row_number() OVER (ORDER BY pl.place - lift * o.boost, o.boost DESC, pl.place) AS r
        FROM placed pl CROSS JOIN LATERAL (
            SELECT CASE WHEN lift > 0 THEN imgsearch._boost(pl.tenant, pl.product_id, norm, weight)
                        ELSE 0 END AS boost) AS o
        WHERE pl.place <= k + lift
        ORDER BY pl.place - lift * o.boost, o.boost DESC, pl.place LIMIT k
    )
    SELECT array_agg(best.image_id ORDER BY t.r), array_agg(t.product_id ORDER BY t.r),
           array_agg(t.title ORDER BY t.r), array_agg(t.brand ORDER BY t.r), array_agg(t.relevance ORDER BY t.r),
           array_agg(t.semantic_rank::int ORDER BY t.r), array_agg(t.lexical_rank::int ORDER BY t.r),
           array_agg(best.distance ORDER BY t.r), array_agg(t.tenant ORDER BY t.r), array_agg(t.boost ORDER BY t.r)
    INTO r_images, r_products, r_titles, r_brands, r_relevance, r_semantic, r_lexical, r_distances, r_tenants,
         r_boosts
    FROM top t CROSS JOIN LATERAL (
        SELECT e.image_id, (e.embedding <=> q.embedding::halfvec)::double precision AS distance
        FROM imgsearch.embeddings e
        WHERE e.product_pk = t.product_pk AND e.model_id = (SELECT m.id FROM imgsearch.models m WHERE m.active)
        ORDER BY (e.image_id = t.semantic_image) DESC NULLS LAST, 2 LIMIT 1
    ) AS best;
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

PRIVATE = (
    "imgsearch._boost_lift(text)",
    "imgsearch._boost_product_weight()",
    "imgsearch._boost(text, text, text, double precision)",
    "imgsearch._record_search(text, text, jsonb, text[], text[], bigint[])",
    "imgsearch._answered(halfvec, int, text, text, numeric, numeric, bigint, bigint, text, jsonb)",
)


def _migration(name: str) -> ModuleType:
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(f"imgsearch_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    for sql in (NORMALIZED, LAST_QUERY_ID, SETTINGS, RECORD, ANSWERED):
        op.execute(sql)
    for sql in (SEARCH_VECTOR, SEARCH_SIMILAR, SEARCH_SIMILAR_PRODUCT, SEARCH_TEXT, HYBRID):
        op.execute(sql)
    for function in PRIVATE:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {CALLERS}")
    op.execute(
        f"GRANT EXECUTE ON FUNCTION imgsearch.normalized_query(text), imgsearch.last_query_id() TO {EVERYONE}"
    )
    op.execute(
        "COMMENT ON FUNCTION imgsearch.last_query_id() IS "
        "'The query_id of this session''s last recorded search (NULL: none, or not recorded)'"
    )


def downgrade() -> None:
    earlier = _migration("0023_query_adapters.py")
    op.execute(
        _migration("0017_vectors_that_cannot_corrupt.py").SEARCH_VECTOR.format(query="l2_normalize(query)")
    )
    op.execute(
        _migration("0002_sql_search_functions.py").SEARCH_SIMILAR.replace("CREATE", "CREATE OR REPLACE", 1)
    )
    op.execute(
        _migration("0008_console_similar_product.py").SEARCH_SIMILAR_PRODUCT.replace(
            "CREATE", "CREATE OR REPLACE", 1
        )
    )
    op.execute(earlier.SEARCH_TEXT.replace("@ADAPT@", earlier.ADAPT.format(function="search_text")))
    op.execute(
        earlier._hybrid().replace(
            earlier.EMBEDDED, earlier.EMBEDDED + earlier.ADAPT.format(function="search_hybrid")
        )
    )
    for function in reversed(PRIVATE):
        op.execute(f"DROP FUNCTION {function}")
    op.execute("DROP FUNCTION imgsearch.last_query_id(), imgsearch.normalized_query(text)")
