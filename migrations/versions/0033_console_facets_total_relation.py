"""The console's ``imgsearch.facets`` says its total is exact (``"total_relation": "eq"``), as the
library's and the HTTP API's answers do now that a total alone may be a bounded count ("gte").

Each definition is held whole (imgsearch/db/sql/functions/facets.sql, docs/architecture.md "Where
a console function lives").

Revision ID: 0033
Revises: 0032
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import definitions

revision: str = "0033"
down_revision: str | None = "0032"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FACETS = r"""CREATE OR REPLACE FUNCTION imgsearch.facets(query text DEFAULT NULL::text, tenant text DEFAULT NULL::text, category text DEFAULT NULL::text, price_min numeric DEFAULT NULL::numeric, price_max numeric DEFAULT NULL::numeric)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    shop text := imgsearch._shop(facets.tenant);
    matches bigint[];
    counted jsonb;
BEGIN
    IF query IS NOT NULL THEN  -- first: lexical_match reads the products itself
        matches := ARRAY(SELECT m.product_pk
                         FROM imgsearch.lexical_match(query, lower(btrim(query)), btrim(query), NULL,
                                                      shop) AS m);
    END IF;
    -- grouping(category, brand, price, attributes): 15 the total, 7 a category, 11 a brand,
    -- 13 a price, 14 an attributes object
    WITH grouped AS MATERIALIZED (
        SELECT grouping(p.category, p.brand, p.price, p.attributes) AS g,
               p.category, p.brand, p.price, p.attributes, count(*) AS n
        FROM imgsearch.products p
        WHERE (query IS NULL OR p.id = ANY (matches))
          AND (shop IS NULL OR p.tenant = shop)
          AND (facets.category IS NULL OR p.category = facets.category)
          AND (price_min IS NULL OR p.price_units >= ceil(least(greatest(price_min, -1e10), 1e10) * 10000)::bigint)
          AND (price_max IS NULL OR p.price_units <= floor(least(greatest(price_max, -1e10), 1e10) * 10000)::bigint)
          AND EXISTS (SELECT 1 FROM imgsearch.embeddings e WHERE e.tenant = p.tenant AND e.product_pk = p.id
                      AND e.model_id = (SELECT m.id FROM imgsearch.models m WHERE m.active))
        GROUP BY GROUPING SETS ((), (p.category), (p.brand), (p.price), (p.attributes))
    ), prices AS MATERIALIZED (  -- the width once, not inlined into every price's bucket
        SELECT CASE WHEN hi > lo THEN mag * CASE WHEN raw / mag <= 1 THEN 1 WHEN raw / mag <= 2 THEN 2
                                             WHEN raw / mag <= 5 THEN 5 ELSE 10 END
                    ELSE greatest(hi, 1) END AS width
        FROM (SELECT lo, hi, (hi - lo) / 5 AS raw,
                     power(10::numeric, floor(log(greatest((hi - lo) / 5, 0.0001)))) AS mag
              FROM (SELECT min(o.price) AS lo, max(o.price) AS hi FROM grouped o WHERE o.g = 13) AS r
              WHERE hi IS NOT NULL) AS sized
    )
    SELECT jsonb_build_object(
        'total', (SELECT o.n FROM grouped o WHERE o.g = 15),
        'total_relation', 'eq',  -- facets read the whole match set: their total is exact
        'category', coalesce((SELECT jsonb_object_agg(c.category, c.n) FROM (
            SELECT o.category, o.n FROM grouped o WHERE o.g = 7 AND o.category IS NOT NULL
            ORDER BY o.n DESC, o.category LIMIT 20) AS c), '{}'),
        'brand', coalesce((SELECT jsonb_object_agg(b.brand, b.n) FROM (
            SELECT o.brand, o.n FROM grouped o WHERE o.g = 11 AND o.brand IS NOT NULL
            ORDER BY o.n DESC, o.brand LIMIT 20) AS b), '{}'),
        'attributes', coalesce((SELECT jsonb_object_agg(v.key, v.top) FROM (
            SELECT placed.key, jsonb_object_agg(placed.value, placed.n) AS top FROM (
                SELECT a.key, a.value #>> '{}' AS value, sum(o.n) AS n,
                       row_number() OVER (PARTITION BY a.key ORDER BY sum(o.n) DESC, a.value #>> '{}') AS place,
                       sum(sum(o.n)) OVER (PARTITION BY a.key) AS key_n
                FROM grouped o CROSS JOIN LATERAL jsonb_each(o.attributes) AS a
                WHERE o.g = 14 AND jsonb_typeof(a.value) IN ('string', 'number', 'boolean')
                GROUP BY a.key, a.value #>> '{}'
            ) AS placed WHERE placed.place <= 20 GROUP BY placed.key
            ORDER BY max(placed.key_n) DESC, placed.key LIMIT 20) AS v), '{}'),
        'price', coalesce((SELECT jsonb_agg(jsonb_build_object('from', trim_scale(low), 'to',
                                            trim_scale(low + width), 'count', n) ORDER BY low) FROM (
            SELECT div(o.price, w.width) * w.width AS low, w.width, sum(o.n) AS n
            FROM grouped o, prices w WHERE o.g = 13 AND o.price IS NOT NULL GROUP BY 1, 2) AS buckets), '[]')
    ) INTO counted;
    RETURN counted;
END
$function$;"""

PREVIOUS_FACETS = r"""CREATE OR REPLACE FUNCTION imgsearch.facets(query text DEFAULT NULL::text, tenant text DEFAULT NULL::text, category text DEFAULT NULL::text, price_min numeric DEFAULT NULL::numeric, price_max numeric DEFAULT NULL::numeric)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    shop text := imgsearch._shop(facets.tenant);
    matches bigint[];
    counted jsonb;
BEGIN
    IF query IS NOT NULL THEN  -- first: lexical_match reads the products itself
        matches := ARRAY(SELECT m.product_pk
                         FROM imgsearch.lexical_match(query, lower(btrim(query)), btrim(query), NULL,
                                                      shop) AS m);
    END IF;
    -- grouping(category, brand, price, attributes): 15 the total, 7 a category, 11 a brand,
    -- 13 a price, 14 an attributes object
    WITH grouped AS MATERIALIZED (
        SELECT grouping(p.category, p.brand, p.price, p.attributes) AS g,
               p.category, p.brand, p.price, p.attributes, count(*) AS n
        FROM imgsearch.products p
        WHERE (query IS NULL OR p.id = ANY (matches))
          AND (shop IS NULL OR p.tenant = shop)
          AND (facets.category IS NULL OR p.category = facets.category)
          AND (price_min IS NULL OR p.price_units >= ceil(least(greatest(price_min, -1e10), 1e10) * 10000)::bigint)
          AND (price_max IS NULL OR p.price_units <= floor(least(greatest(price_max, -1e10), 1e10) * 10000)::bigint)
          AND EXISTS (SELECT 1 FROM imgsearch.embeddings e WHERE e.tenant = p.tenant AND e.product_pk = p.id
                      AND e.model_id = (SELECT m.id FROM imgsearch.models m WHERE m.active))
        GROUP BY GROUPING SETS ((), (p.category), (p.brand), (p.price), (p.attributes))
    ), prices AS MATERIALIZED (  -- the width once, not inlined into every price's bucket
        SELECT CASE WHEN hi > lo THEN mag * CASE WHEN raw / mag <= 1 THEN 1 WHEN raw / mag <= 2 THEN 2
                                             WHEN raw / mag <= 5 THEN 5 ELSE 10 END
                    ELSE greatest(hi, 1) END AS width
        FROM (SELECT lo, hi, (hi - lo) / 5 AS raw,
                     power(10::numeric, floor(log(greatest((hi - lo) / 5, 0.0001)))) AS mag
              FROM (SELECT min(o.price) AS lo, max(o.price) AS hi FROM grouped o WHERE o.g = 13) AS r
              WHERE hi IS NOT NULL) AS sized
    )
    SELECT jsonb_build_object(
        'total', (SELECT o.n FROM grouped o WHERE o.g = 15),
        'category', coalesce((SELECT jsonb_object_agg(c.category, c.n) FROM (
            SELECT o.category, o.n FROM grouped o WHERE o.g = 7 AND o.category IS NOT NULL
            ORDER BY o.n DESC, o.category LIMIT 20) AS c), '{}'),
        'brand', coalesce((SELECT jsonb_object_agg(b.brand, b.n) FROM (
            SELECT o.brand, o.n FROM grouped o WHERE o.g = 11 AND o.brand IS NOT NULL
            ORDER BY o.n DESC, o.brand LIMIT 20) AS b), '{}'),
        'attributes', coalesce((SELECT jsonb_object_agg(v.key, v.top) FROM (
            SELECT placed.key, jsonb_object_agg(placed.value, placed.n) AS top FROM (
                SELECT a.key, a.value #>> '{}' AS value, sum(o.n) AS n,
                       row_number() OVER (PARTITION BY a.key ORDER BY sum(o.n) DESC, a.value #>> '{}') AS place,
                       sum(sum(o.n)) OVER (PARTITION BY a.key) AS key_n
                FROM grouped o CROSS JOIN LATERAL jsonb_each(o.attributes) AS a
                WHERE o.g = 14 AND jsonb_typeof(a.value) IN ('string', 'number', 'boolean')
                GROUP BY a.key, a.value #>> '{}'
            ) AS placed WHERE placed.place <= 20 GROUP BY placed.key
            ORDER BY max(placed.key_n) DESC, placed.key LIMIT 20) AS v), '{}'),
        'price', coalesce((SELECT jsonb_agg(jsonb_build_object('from', trim_scale(low), 'to',
                                            trim_scale(low + width), 'count', n) ORDER BY low) FROM (
            SELECT div(o.price, w.width) * w.width AS low, w.width, sum(o.n) AS n
            FROM grouped o, prices w WHERE o.g = 13 AND o.price IS NOT NULL GROUP BY 1, 2) AS buckets), '[]')
    ) INTO counted;
    RETURN counted;
END
$function$;"""


def upgrade() -> None:
    definitions.run(op.get_bind(), FACETS)


def downgrade() -> None:
    definitions.run(op.get_bind(), PREVIOUS_FACETS)
