"""The SQL console's "more like this item": ``imgsearch.search_similar_product``.

``catalog.search(similar_to_product=..., tenant=...)`` searches with the mean of a product's
image embeddings and leaves every image of the product out of the hits (``search_similar`` leaves
out only its one image, so a product's other photos come first). The console gets the same:

    SELECT * FROM imgsearch.search_similar_product('acme', 'sku-1', 10, category => 'shoes');

``imgsearch._search`` gains an eighth argument, ``exclude_product`` (a ``products.id`` whose
images are left out), as one more filter of the same kind as ``exclude``: the body is migration
0007's with that filter added, nothing else. The seven-argument function, which ``search_vector``
and ``search_similar`` call (``BEGIN ATOMIC``: PostgreSQL tracks the dependency, so its signature
stays), now calls the eight-argument one with ``NULL``. ``imgsearch._product_source`` reads the
query: the product's id and the unit mean of its images' embeddings under the active model, with
the library's errors for a missing tenant, an unknown product and a product with no embedded image.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# each edit of 0007's body: (old, new, how many times old occurs there)
EDITS = [
    (
        "price_min numeric, price_max numeric, exclude bigint\n)",
        "price_min numeric, price_max numeric, exclude bigint,\n    exclude_product bigint\n)",
        1,
    ),
    (
        "num_nulls(tenant, category, price_min, price_max, exclude) < 5",
        "num_nulls(tenant, category, price_min, price_max, exclude, exclude_product) < 6",
        1,
    ),
    (
        "        ' AND ($5::bigint IS NULL OR e.image_id <> $5)';",
        "        ' AND ($5::bigint IS NULL OR e.image_id <> $5)'\n"
        "        ' AND ($7::bigint IS NULL OR e.product_pk <> $7)';",
        1,
    ),
    # the counts pass the query too, unused, so that $7 is the same argument in every statement
    (
        "USING tenant, category, price_min, price_max, exclude;",
        "USING tenant, category, price_min, price_max, exclude, query, exclude_product;",
        2,
    ),
    (
        "USING tenant, category, price_min, price_max, exclude, query;",
        "USING tenant, category, price_min, price_max, exclude, query, exclude_product;",
        3,
    ),
]

WRAPPER = """
CREATE OR REPLACE FUNCTION imgsearch._search(
    query halfvec, k int, tenant text, category text, price_min numeric, price_max numeric, exclude bigint
) RETURNS TABLE (image_id bigint, product_id text, distance double precision)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM imgsearch._search(query, k, tenant, category, price_min, price_max, exclude, NULL::bigint);
END
"""

PRODUCT_SOURCE = r"""
CREATE FUNCTION imgsearch._product_source(
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
        WHERE m.active AND e.product_pk = pk;
    IF source IS NULL THEN
        RAISE EXCEPTION 'product % of tenant % has no embedded image yet',
            quote_literal(p_product_id), quote_literal(p_tenant) USING ERRCODE = 'no_data_found';
    END IF;
END
$fn$
"""

# A SQL function: its parameter product_id may share the name of the result column product_id.
SEARCH_SIMILAR_PRODUCT = """
CREATE FUNCTION imgsearch.search_similar_product(
    tenant text, product_id text, k int DEFAULT 10, category text DEFAULT NULL,
    price_min numeric DEFAULT NULL, price_max numeric DEFAULT NULL
) RETURNS TABLE (image_id bigint, product_id text, distance double precision)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT s.* FROM imgsearch._product_source($1, $2) AS src,
        imgsearch._search(src.source, $3, $1, $4, $5, $6, NULL, src.pk) AS s;
END
"""


def _search_0007() -> str:
    """Migration 0007's ``_search``: 0006's body with 0007's checks."""
    path = Path(__file__).with_name("0007_console_search_checks.py")
    spec = importlib.util.spec_from_file_location("imgsearch_migration_0007", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    search: str = module.search_with_checks()
    return search


def search_with_product_filter() -> str:
    search = _search_0007()
    for old, new, count in EDITS:
        assert search.count(old) == count, f"migration 0007's body changed: {old!r}"
        search = search.replace(old, new)
    return search


def upgrade() -> None:
    op.execute(search_with_product_filter())
    op.execute(WRAPPER)
    op.execute(PRODUCT_SOURCE)
    op.execute(SEARCH_SIMILAR_PRODUCT)


def downgrade() -> None:
    op.execute("DROP FUNCTION imgsearch.search_similar_product(text, text, int, text, numeric, numeric)")
    op.execute("DROP FUNCTION imgsearch._product_source(text, text)")
    op.execute(_search_0007())  # the seven-argument body again, no longer calling the eighth
    op.execute("DROP FUNCTION imgsearch._search(halfvec, int, text, text, numeric, numeric, bigint, bigint)")
