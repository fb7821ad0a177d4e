"""Hybrid search and facets from plain SQL, as the library runs them.

* ``imgsearch.search_hybrid(query, k, tenant, category, price_min, price_max)``: the products'
  words (``search_doc``, trigrams, an exact id) and the images (the text embedded by a worker, as
  ``search_text`` gets it, through ``search_vector``'s filtered strategy), fused by Reciprocal
  Rank Fusion (``rrf_k`` 60, weights 1), one row per product with its best image;
* ``imgsearch.facets(query, tenant, category, price_min, price_max)``: one ``jsonb`` with the
  total and the counts per category, brand, attribute value and price bucket of the whole match
  set (the products with an embedded image matching the filters, and with ``query``, its words).

Both run as their caller: a tenant's console login sees its own rows only.

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CALLERS = "imgsearch_app, imgsearch_console, imgsearch_admin"

# the top n products matching a text, ranked as imgsearch.search.lexical ranks them: its words, a
# close trigram match of the title, brand or id, or the id itself (imgsearch.lexical_match)
MATCHED = """
CREATE FUNCTION imgsearch._lexical(query text, n int, tenant text, category text,
    price_min numeric, price_max numeric)
RETURNS TABLE (product_pk bigint, rank bigint)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT p.id, row_number() OVER (ORDER BY m.exact_match DESC, m.doc_rank DESC, m.similarity DESC, p.id)
    FROM imgsearch.lexical_match(query, lower(btrim(query)), btrim(query), NULL) AS m
    JOIN imgsearch.products p ON p.id = m.product_pk
    WHERE (_lexical.tenant IS NULL OR p.tenant = _lexical.tenant)
      AND (_lexical.category IS NULL OR p.category = _lexical.category)
      AND (_lexical.price_min IS NULL OR p.price >= _lexical.price_min)
      AND (_lexical.price_max IS NULL OR p.price <= _lexical.price_max)
      AND EXISTS (SELECT 1 FROM imgsearch.embeddings e WHERE e.product_pk = p.id
                  AND e.model_id = (SELECT m2.id FROM imgsearch.models m2 WHERE m2.active))
    ORDER BY 2
    LIMIT n;
END
"""

HYBRID = """
CREATE FUNCTION imgsearch.search_hybrid(
    query text, k int DEFAULT 10, tenant text DEFAULT NULL, category text DEFAULT NULL,
    price_min numeric DEFAULT NULL, price_max numeric DEFAULT NULL, rrf_k double precision DEFAULT 60
) RETURNS TABLE (image_id bigint, product_id text, title text, brand text, relevance double precision,
                 semantic_rank int, lexical_rank int, distance double precision)
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    q record;
    n int;
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN  -- before asking a worker anything
        RAISE EXCEPTION 'k must be from 1 to 1000, got %', coalesce(k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF rrf_k IS NULL OR NOT rrf_k > 0 OR rrf_k = 'Infinity' THEN
        RAISE EXCEPTION 'rrf_k must be a number above 0, got %', coalesce(rrf_k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    n := least(2000, greatest(50, 2 * k));  -- each side's products (imgsearch.search.hybrid.candidates)
    SELECT * INTO q FROM imgsearch._text_embedding(query);
    RETURN QUERY
    WITH images AS (
        SELECT s.image_id, s.product_id, s.distance, row_number() OVER (ORDER BY s.distance) AS place
        FROM imgsearch.search_vector(q.embedding, least(1000, 4 * n), search_hybrid.tenant,
                                     search_hybrid.category, price_min, price_max) AS s
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
        ORDER BY 5 DESC, 1 LIMIT k
    )
    SELECT best.image_id, p.product_id, p.title, p.brand, f.relevance, f.semantic_rank::int,
           f.lexical_rank::int, best.distance
    FROM fused f JOIN imgsearch.products p ON p.id = f.product_pk
    CROSS JOIN LATERAL (
        SELECT e.image_id, (e.embedding <=> q.embedding::halfvec)::double precision AS distance
        FROM imgsearch.embeddings e
        WHERE e.product_pk = f.product_pk AND e.model_id = (SELECT m.id FROM imgsearch.models m WHERE m.active)
        ORDER BY (e.image_id = f.semantic_image) DESC NULLS LAST, 2 LIMIT 1
    ) AS best
    ORDER BY f.relevance DESC, f.product_pk;
END
$fn$
"""

FACETS = """
CREATE FUNCTION imgsearch.facets(
    query text DEFAULT NULL, tenant text DEFAULT NULL, category text DEFAULT NULL,
    price_min numeric DEFAULT NULL, price_max numeric DEFAULT NULL
) RETURNS jsonb
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH matched AS MATERIALIZED (
        SELECT p.id, p.category, p.brand, p.price, p.attributes
        FROM imgsearch.products p
        WHERE (query IS NULL OR p.id IN (
                SELECT m.product_pk FROM imgsearch.lexical_match(query, lower(btrim(query)), btrim(query), NULL) AS m))
          AND (facets.tenant IS NULL OR p.tenant = facets.tenant)
          AND (facets.category IS NULL OR p.category = facets.category)
          AND (price_min IS NULL OR p.price >= price_min)
          AND (price_max IS NULL OR p.price <= price_max)
          AND EXISTS (SELECT 1 FROM imgsearch.embeddings e WHERE e.product_pk = p.id
                      AND e.model_id = (SELECT m.id FROM imgsearch.models m WHERE m.active))
    ), prices AS MATERIALIZED (  -- the width once, not inlined into every row's bucket
        SELECT CASE WHEN hi > lo THEN mag * CASE WHEN raw / mag <= 1 THEN 1 WHEN raw / mag <= 2 THEN 2
                                             WHEN raw / mag <= 5 THEN 5 ELSE 10 END
                    ELSE greatest(hi, 1) END AS width
        FROM (SELECT lo, hi, (hi - lo) / 5 AS raw,
                     power(10::numeric, floor(log(greatest((hi - lo) / 5, 0.0001)))) AS mag
              FROM (SELECT min(price) AS lo, max(price) AS hi FROM matched) AS r WHERE hi IS NOT NULL) AS sized
    )
    SELECT jsonb_build_object(
        'total', (SELECT count(*) FROM matched),
        'category', coalesce((SELECT jsonb_object_agg(c.category, c.n) FROM (
            SELECT m.category, count(*) AS n FROM matched m WHERE m.category IS NOT NULL
            GROUP BY m.category ORDER BY n DESC, m.category LIMIT 20) AS c), '{}'),
        'brand', coalesce((SELECT jsonb_object_agg(b.brand, b.n) FROM (
            SELECT m.brand, count(*) AS n FROM matched m WHERE m.brand IS NOT NULL
            GROUP BY m.brand ORDER BY n DESC, m.brand LIMIT 20) AS b), '{}'),
        'attributes', coalesce((SELECT jsonb_object_agg(v.key, v.top) FROM (
            SELECT placed.key, jsonb_object_agg(placed.value, placed.n) AS top FROM (
                SELECT a.key, a.value #>> '{}' AS value, count(*) AS n,
                       row_number() OVER (PARTITION BY a.key ORDER BY count(*) DESC, a.value #>> '{}') AS place
                FROM matched m CROSS JOIN LATERAL jsonb_each(m.attributes) AS a
                WHERE jsonb_typeof(a.value) IN ('string', 'number', 'boolean')
                GROUP BY a.key, a.value #>> '{}'
            ) AS placed WHERE placed.place <= 20 GROUP BY placed.key) AS v), '{}'),
        'price', coalesce((SELECT jsonb_agg(jsonb_build_object('from', trim_scale(low), 'to',
                                            trim_scale(low + width), 'count', n) ORDER BY low) FROM (
            SELECT floor(m.price / p.width) * p.width AS low, p.width, count(*) AS n
            FROM matched m, prices p WHERE m.price IS NOT NULL GROUP BY 1, 2) AS buckets), '[]')
    );
END
"""


def upgrade() -> None:
    op.execute(MATCHED)
    op.execute(HYBRID)
    op.execute(FACETS)
    op.execute(
        "COMMENT ON FUNCTION imgsearch.search_hybrid(text, int, text, text, numeric, numeric, double precision) "
        "IS 'Products for a text by its words and its images, fused by Reciprocal Rank Fusion; a worker embeds new texts'"
    )
    op.execute(
        "COMMENT ON FUNCTION imgsearch.facets(text, text, text, numeric, numeric) IS "
        "'The total and counts per category, brand, attribute value and price bucket of a search''s match set'"
    )
    for function in (
        "imgsearch._lexical(text, int, text, text, numeric, numeric)",
        "imgsearch.search_hybrid(text, int, text, text, numeric, numeric, double precision)",
        "imgsearch.facets(text, text, text, numeric, numeric)",
    ):
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {CALLERS}")


def downgrade() -> None:
    op.execute("DROP FUNCTION imgsearch.facets(text, text, text, numeric, numeric)")
    op.execute(
        "DROP FUNCTION imgsearch.search_hybrid(text, int, text, text, numeric, numeric, double precision)"
    )
    op.execute("DROP FUNCTION imgsearch._lexical(text, int, text, text, numeric, numeric)")
