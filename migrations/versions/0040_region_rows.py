"""Region rows: an image's objects searched beside the whole image (issue 71).

* ``embeddings.region``: 0 for the whole image, 1, 2, ... for its regions; ``embeddings.box``:
  a region's ``[x0, y0, x1, y1]`` in the image's pixels (NULL for the whole image). The primary
  key takes ``region``: an image has a row per (model, product, region), each with the product's
  filter columns, in the model's one HNSW graph.
* ``region_rules``: where regions come from, for the catalog (``category`` '') and per category:
  a grid (``grid``: its largest scale) or a detector (``detector``: a checkpoint; ``labels``:
  the names it looks for), with the least score and area a box keeps and the most regions an
  image gets; ``off`` for none.
* The console's stored vectors (``_similar_source``, ``_product_source``) read whole rows: an
  image's vector is its whole row's, a product's the mean of its images'. Each definition is
  held whole (imgsearch/db/sql/).

Revision ID: 0040
Revises: 0039
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import citus, definitions

revision: str = "0040"
down_revision: str | None = "0039"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# one subcommand a statement, each sent alone: Citus runs no ADD CONSTRAINT beside others on a
# distributed table, and propagates a DDL statement with the whole query string it came in
COLUMNS = (
    "ALTER TABLE imgsearch.embeddings ADD COLUMN region smallint NOT NULL DEFAULT 0",
    "ALTER TABLE imgsearch.embeddings ADD COLUMN box integer[]",
    """ALTER TABLE imgsearch.embeddings ADD CONSTRAINT embeddings_region_box_check CHECK (
    region >= 0 AND (region = 0) = (box IS NULL) AND (box IS NULL OR cardinality(box) = 4)
)""",
)

RULES = """
CREATE TABLE imgsearch.region_rules (
    category text PRIMARY KEY,
    source text NOT NULL,
    grid smallint,
    detector text,
    labels text[],
    min_score real NOT NULL DEFAULT 0.3,
    min_area real NOT NULL DEFAULT 0.02,
    max_regions smallint NOT NULL DEFAULT 18,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT region_rules_source_known_check CHECK (source IN ('grid', 'detector', 'off')),
    CONSTRAINT region_rules_grid_check CHECK ((source = 'grid') = (grid IS NOT NULL) AND grid BETWEEN 2 AND 4),
    CONSTRAINT region_rules_detector_check CHECK ((source = 'detector') = (detector IS NOT NULL)),
    CONSTRAINT region_rules_limits_check CHECK (
        min_score BETWEEN 0 AND 1 AND min_area BETWEEN 0 AND 1 AND max_regions BETWEEN 1 AND 64
    )
);
"""

# each function alone: Citus sends a distributed function's whole query string to its workers
SOURCES = r"""
CREATE OR REPLACE FUNCTION imgsearch._similar_source(p_image_id bigint, p_tenant text)
 RETURNS halfvec
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    source halfvec;
    model smallint := imgsearch._image_model_id();
BEGIN
    -- the model read first: a function called in a query Citus sends to the shards can't read the cluster
    SELECT e.embedding INTO source FROM imgsearch.embeddings e
        WHERE e.model_id = model AND e.image_id = p_image_id AND e.region = 0
          AND (p_tenant IS NULL OR e.tenant = p_tenant);
    IF source IS NULL THEN
        RAISE EXCEPTION 'no embedded image with id %', p_image_id USING ERRCODE = 'no_data_found';
    END IF;
    RETURN source;
END
$function$;

CREATE OR REPLACE FUNCTION imgsearch._product_source(p_tenant text, p_product_id text, OUT source halfvec, OUT pk bigint)
 RETURNS record
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    model smallint := imgsearch._image_model_id();  -- read first: see _similar_source
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
    -- the unit mean of the product's images (their whole rows), as the library computes it
    SELECT l2_normalize(avg(l2_normalize(e.embedding::vector)))::halfvec INTO source
        FROM imgsearch.embeddings e
        WHERE e.model_id = model AND e.tenant = p_tenant AND e.product_pk = pk AND e.region = 0;
    IF source IS NULL THEN
        RAISE EXCEPTION 'product % of tenant % has no embedded image yet',
            quote_literal(p_product_id), quote_literal(p_tenant) USING ERRCODE = 'no_data_found';
    END IF;
END
$function$;
"""

PREVIOUS_SOURCES = r"""
CREATE OR REPLACE FUNCTION imgsearch._similar_source(p_image_id bigint, p_tenant text)
 RETURNS halfvec
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    source halfvec;
    model smallint := imgsearch._image_model_id();
BEGIN
    -- the model read first: a function called in a query Citus sends to the shards can't read the cluster
    SELECT e.embedding INTO source FROM imgsearch.embeddings e
        WHERE e.model_id = model AND e.image_id = p_image_id AND (p_tenant IS NULL OR e.tenant = p_tenant);
    IF source IS NULL THEN
        RAISE EXCEPTION 'no embedded image with id %', p_image_id USING ERRCODE = 'no_data_found';
    END IF;
    RETURN source;
END
$function$;

CREATE OR REPLACE FUNCTION imgsearch._product_source(p_tenant text, p_product_id text, OUT source halfvec, OUT pk bigint)
 RETURNS record
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    model smallint := imgsearch._image_model_id();  -- read first: see _similar_source
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
        FROM imgsearch.embeddings e
        WHERE e.model_id = model AND e.tenant = p_tenant AND e.product_pk = pk;
    IF source IS NULL THEN
        RAISE EXCEPTION 'product % of tenant % has no embedded image yet',
            quote_literal(p_product_id), quote_literal(p_tenant) USING ERRCODE = 'no_data_found';
    END IF;
END
$function$;
"""


def _key(distributed: bool, region: bool) -> None:
    """The embeddings' primary key, with ``region`` or without (on a Citus cluster: the tenant last).
    With regions it leads with the image (an image's rows together; a search's ``model_id = ...``
    is served by the filter indexes, not by a key of every row)."""
    columns = "image_id, product_pk, model_id, region" if region else "model_id, image_id, product_pk"
    columns += ", tenant" if distributed else ""
    op.execute("ALTER TABLE imgsearch.embeddings DROP CONSTRAINT embeddings_pkey")
    op.execute(f"ALTER TABLE imgsearch.embeddings ADD CONSTRAINT embeddings_pkey PRIMARY KEY ({columns})")


def upgrade() -> None:
    conn = op.get_bind()
    for statement in COLUMNS:
        op.execute(statement)
    _key(citus.is_distributed(conn), region=True)
    definitions.run(conn, RULES)
    op.execute("REVOKE ALL ON imgsearch.region_rules FROM PUBLIC")
    op.execute("GRANT SELECT ON imgsearch.region_rules TO imgsearch_worker, imgsearch_admin, imgsearch_app")
    for function in _each(SOURCES):
        definitions.run(conn, function)


def _each(functions: str) -> list[str]:
    """The definitions of ``functions``, one by one."""
    return [f"CREATE OR REPLACE FUNCTION{part}" for part in functions.split("CREATE OR REPLACE FUNCTION")[1:]]


def downgrade() -> None:
    conn = op.get_bind()
    for function in _each(PREVIOUS_SOURCES):
        definitions.run(conn, function)
    op.execute("DROP TABLE imgsearch.region_rules")
    op.execute("DELETE FROM imgsearch.embeddings WHERE region <> 0")
    _key(citus.is_distributed(conn), region=False)
    op.execute("ALTER TABLE imgsearch.embeddings DROP CONSTRAINT embeddings_region_box_check")
    op.execute("ALTER TABLE imgsearch.embeddings DROP COLUMN box")
    op.execute("ALTER TABLE imgsearch.embeddings DROP COLUMN region")
