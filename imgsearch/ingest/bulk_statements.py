"""The bulk import's SQL statements (imgsearch/ingest/bulk.py runs them, in this order): the
temporary table its rows are staged in and their ``COPY``, the check that a product's rows agree,
and the writes of its one transaction.

Each statement that reads the catalog's tables joins them to the staged rows and nothing else: a
Citus coordinator ships the staged rows to the shards.
"""

from __future__ import annotations

from imgsearch.db.models import SCHEMA

# never below the server's own setting (for this transaction only)
# a setting in bytes for this transaction, never below the server's own (the server refuses a
# change of temp_buffers after the session's first use of a temporary table: the caller's savepoint)
RAISE_SETTING = (
    "SELECT set_config(%(name)s, "
    "greatest(pg_size_bytes(current_setting(%(name)s)), %(bytes)s) / 1024 || 'kB', true)"
)

STAGE = """CREATE TEMPORARY TABLE imgsearch_import (
    ord bigint, tenant text, product_id text, category text, price numeric(14, 4), currency text,
    attributes jsonb, uri text, content bytea, sha256 bytea, width integer, height integer,
    format text, byte_size bigint, embedding halfvec({dim}), origin text, title text, description text,
    brand text
) ON COMMIT DROP"""

COPY = (
    "COPY imgsearch_import (ord, tenant, product_id, category, price, currency, attributes, uri, content, "
    "sha256, width, height, format, byte_size, embedding, origin, title, description, brand) "
    "FROM STDIN (FORMAT BINARY)"
)
TYPES = [
    "bigint", "text", "text", "text", "numeric", "text", "jsonb", "text", "bytea", "bytea", "int4", "int4",
    "text", "int8", "halfvec", "text", "text", "text", "text",
]  # fmt: skip

# the first row giving a product another value of a field (or attribute) than its first row: both origins
DISAGREEING = """
SELECT ord, origin, first_origin, product_id, tenant, field, value, first_value FROM (
    SELECT s.ord, s.origin, s.product_id, s.tenant, v.field, v.value,
           first_value(v.value) OVER w AS first_value, first_value(s.origin) OVER w AS first_origin
    FROM imgsearch_import s
    JOIN (SELECT tenant, product_id FROM imgsearch_import GROUP BY 1, 2 HAVING count(*) > 1) AS r
        ON r.tenant = s.tenant AND r.product_id = s.product_id  -- a product of one row agrees
    CROSS JOIN LATERAL (
        VALUES ('category', to_jsonb(s.category)), ('price', to_jsonb(s.price)), ('currency', to_jsonb(s.currency)),
               ('title', to_jsonb(s.title)), ('description', to_jsonb(s.description)), ('brand', to_jsonb(s.brand))
        UNION ALL
        SELECT 'attributes.' || a.key, a.value FROM jsonb_each(coalesce(s.attributes, '{}')) AS a
    ) AS v (field, value)
    WHERE v.value IS NOT NULL AND (v.value <> 'null'::jsonb OR v.field LIKE 'attributes.%')
    WINDOW w AS (PARTITION BY s.tenant, s.product_id, v.field ORDER BY s.ord)
) AS given
WHERE value IS DISTINCT FROM first_value
ORDER BY ord, field
LIMIT 1
"""

# the staged contents each tenant has already (an inner join: a Citus coordinator sends the
# staged keys to the shards; it runs no subquery of the shards correlated with a local table)
EXISTING = f"""
CREATE TEMPORARY TABLE imgsearch_existing ON COMMIT DROP AS
SELECT DISTINCT i.tenant, i.sha256 FROM imgsearch_import s
JOIN {SCHEMA}.images i ON i.tenant = s.tenant AND i.sha256 = s.sha256
"""

# how many contents the tenant doesn't have yet: what the index would take in
NEW_CONTENTS = """
SELECT count(*) FROM (
    SELECT DISTINCT s.tenant, s.sha256 FROM imgsearch_import s
    WHERE NOT EXISTS (SELECT FROM imgsearch_existing i WHERE i.tenant = s.tenant AND i.sha256 = s.sha256)
) AS fresh
"""

# a product's rows merge as add_many merges them: each field is the value its rows give (they give
# one value: DISAGREEING), its attributes those of all its rows; stored values stay where none gives
# one. A product of one row (most) takes its attributes as they are. In key order, byte by byte, as
# every writer of products locks them (imgsearch.ingest.rows: Python's sorted)
PRODUCTS = f"""
INSERT INTO {SCHEMA}.products AS p (tenant, product_id, category, price, currency, attributes, title,
                                   description, brand)
SELECT tenant COLLATE "C", product_id COLLATE "C", max(category), max(price), max(currency),
       CASE WHEN count(*) = 1 THEN coalesce((array_agg(attributes))[1], '{{}}'::jsonb)
            ELSE (SELECT coalesce(jsonb_object_agg(a.key, a.value), '{{}}'::jsonb)
                  FROM unnest(array_agg(attributes)) AS r (attributes), jsonb_each(r.attributes) AS a)
       END,
       max(title), max(description), max(brand)
FROM imgsearch_import GROUP BY 1, 2 ORDER BY 1, 2  -- one sort (1M products: 1.3 s, 1.0 s when it took the last row)
ON CONFLICT (tenant, product_id) DO UPDATE SET
    category = coalesce(excluded.category, p.category),
    price = coalesce(excluded.price, p.price),
    currency = coalesce(excluded.currency, p.currency),
    title = coalesce(excluded.title, p.title),
    description = coalesce(excluded.description, p.description),
    brand = coalesce(excluded.brand, p.brand),
    attributes = p.attributes || excluded.attributes,
    updated_at = excluded.updated_at  -- its default, now() (Citus takes no stable function here)
"""

# the staged products' keys, then which rows become images: the first of each content the tenant
# doesn't have yet, each with its image id drawn now (narrow rows: the vectors stay in
# imgsearch_import until the insert). Each statement that reads the catalog's tables joins them
# to the staged rows and nothing else: a Citus coordinator ships the staged rows to the shards.
KEEP = f"""
CREATE TEMPORARY TABLE imgsearch_products ON COMMIT DROP AS
SELECT DISTINCT p.tenant, p.product_id, p.id, p.category, p.price FROM imgsearch_import s
JOIN {SCHEMA}.products p ON p.tenant = s.tenant AND p.product_id = s.product_id;
CREATE TEMPORARY TABLE imgsearch_keep ON COMMIT DROP AS
SELECT DISTINCT ON (s.tenant, s.sha256) s.ord, s.tenant, s.sha256, p.id AS product_pk, p.category, p.price,
       nextval(pg_get_serial_sequence('{SCHEMA}.images', 'id')) AS image_id
FROM imgsearch_import s
JOIN imgsearch_products p ON p.tenant = s.tenant AND p.product_id = s.product_id
WHERE NOT EXISTS (SELECT FROM imgsearch_existing i WHERE i.tenant = s.tenant AND i.sha256 = s.sha256)
ORDER BY s.tenant, s.sha256, s.ord
"""

# the new images; one another upload stored meanwhile is left out
WRITE = f"""
INSERT INTO {SCHEMA}.images (id, product_pk, tenant, sha256, uri, content, width, height, format, byte_size, state)
SELECT k.image_id, k.product_pk, k.tenant, k.sha256, s.uri, s.content, s.width, s.height, s.format, s.byte_size,
       'ready'
FROM imgsearch_keep k JOIN imgsearch_import s ON s.ord = k.ord
ORDER BY k.image_id
ON CONFLICT (tenant, sha256) DO NOTHING
"""

# each row's image linked to its product (imgsearch.db.links): the links made now, to images stored
# before or to new ones of other products (a new image's link to its first product was made by the
# images' trigger: left out, rather than each looked up as a conflict); and those of them to images
# stored before (imgsearch_gained: locked, then their embeddings copied)
LINK = f"""
CREATE TEMPORARY TABLE imgsearch_images ON COMMIT DROP AS
SELECT DISTINCT i.tenant, i.sha256, i.id FROM imgsearch_import s
JOIN {SCHEMA}.images i ON i.tenant = s.tenant AND i.sha256 = s.sha256;
CREATE TEMPORARY TABLE imgsearch_links ON COMMIT DROP AS SELECT image_id, product_pk, tenant FROM {SCHEMA}.image_products
WITH NO DATA;
WITH linked AS (
    INSERT INTO {SCHEMA}.image_products (image_id, product_pk, tenant)
    SELECT DISTINCT i.id, p.id, s.tenant
    FROM imgsearch_import s
    JOIN imgsearch_products p ON p.tenant = s.tenant AND p.product_id = s.product_id
    JOIN imgsearch_images i ON i.tenant = s.tenant AND i.sha256 = s.sha256
    WHERE NOT EXISTS (SELECT FROM imgsearch_keep k WHERE k.image_id = i.id AND k.product_pk = p.id)
    ON CONFLICT DO NOTHING
    RETURNING image_id, product_pk, tenant
)
INSERT INTO imgsearch_links SELECT * FROM linked;
CREATE TEMPORARY TABLE imgsearch_gained ON COMMIT DROP AS
SELECT l.* FROM imgsearch_links l WHERE NOT EXISTS (SELECT FROM imgsearch_keep k WHERE k.image_id = l.image_id)
"""

# a new image's vector for each of its products; a stored image's embeddings (every model's) for
# the products it gains, once a worker storing it has committed (it holds the image's row). A new
# image's first product gives its row the filter columns it was read with (after its upsert, which
# holds it until commit: no change of it is in flight), so the row trigger that would look the
# product up is skipped (migration 0048); its other products' rows are looked up
EMBED = f"""
INSERT INTO {SCHEMA}.embeddings (model_id, image_id, product_pk, tenant, category, price, embedding)
SELECT %(model)s, l.image_id, l.product_pk, l.tenant,
       CASE WHEN l.product_pk = k.product_pk THEN k.category END,
       CASE WHEN l.product_pk = k.product_pk THEN k.price END, s.embedding
FROM {SCHEMA}.image_products l JOIN imgsearch_keep k ON k.image_id = l.image_id JOIN imgsearch_import s ON s.ord = k.ord
ORDER BY l.image_id;
INSERT INTO {SCHEMA}.embeddings (model_id, image_id, product_pk, tenant, region, box, embedding)
SELECT DISTINCT ON (e.model_id, l.image_id, l.product_pk, e.region) e.model_id, l.image_id, l.product_pk, l.tenant,
       e.region, e.box, e.embedding
FROM imgsearch_gained l JOIN {SCHEMA}.embeddings e ON e.tenant = l.tenant AND e.image_id = l.image_id
ORDER BY e.model_id, l.image_id, l.product_pk, e.region
ON CONFLICT DO NOTHING
"""
