"""No stored row can break a search: no all-zero embedding, no NaN price, query vectors normalised.

Before this, a vector of huge but finite values (every value 1e300) overflowed its norm in the
library and was stored as zeros; every search that reached it got NaN distances, which no JSON
encoder writes (the HTTP API answered 500). ``numeric`` also takes ``'NaN'``, which
``price >= 0`` lets through (NaN sorts above every number). This migration:

* repairs what is stored: an all-zero embedding is deleted, and its image goes back to
  ``pending`` when workers can embed it again (it has bytes or a URL), else to ``failed`` naming
  why; a NaN price becomes NULL (no price);
* refuses both from now on, whatever writes them (the library, Django, SQL): ``l2_norm(embedding)
  > 0`` on embeddings, ``price <> 'NaN'`` on products;
* makes ``imgsearch.search_vector`` search with its query at unit length (``l2_normalize``,
  computed in double precision), so a query of large values neither overflows halfvec nor gives
  NaN distances.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ZERO_EMBEDDING_ERROR = (
    "its embedding was stored as all zeros (a vector whose norm overflowed, before migration 0017); "
    "upload it again"
)

SEARCH_VECTOR = """
CREATE OR REPLACE FUNCTION imgsearch.search_vector(
    query vector, k int DEFAULT 10, tenant text DEFAULT NULL, category text DEFAULT NULL,
    price_min numeric DEFAULT NULL, price_max numeric DEFAULT NULL
) RETURNS TABLE (image_id bigint, product_id text, distance double precision)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM imgsearch._search({query}::halfvec, k, tenant, category, price_min, price_max, NULL);
END
"""


def upgrade() -> None:
    op.execute(
        f"""
        WITH zero AS (
            DELETE FROM imgsearch.embeddings e USING imgsearch.models m
            WHERE m.id = e.model_id AND l2_norm(e.embedding) = 0
            RETURNING e.image_id, m.active
        )
        UPDATE imgsearch.images i
        SET state = CASE WHEN i.content IS NOT NULL OR i.uri IS NOT NULL THEN 'pending' ELSE 'failed' END,
            error = CASE WHEN i.content IS NOT NULL OR i.uri IS NOT NULL THEN NULL
                ELSE '{ZERO_EMBEDDING_ERROR}' END,
            attempts = 0, lease_expires_at = NULL, retry_at = NULL, updated_at = now()
        FROM zero WHERE zero.active AND i.id = zero.image_id
        """
    )
    op.execute("UPDATE imgsearch.products SET price = NULL WHERE price = 'NaN'")
    op.execute(
        "ALTER TABLE imgsearch.embeddings ADD CONSTRAINT embeddings_not_zero_check "
        "CHECK (l2_norm(embedding) > 0)"
    )
    op.execute(
        "ALTER TABLE imgsearch.products ADD CONSTRAINT products_price_not_nan_check CHECK (price <> 'NaN')"
    )
    op.execute(SEARCH_VECTOR.format(query="l2_normalize(query)"))


def downgrade() -> None:
    op.execute(SEARCH_VECTOR.format(query="query"))
    op.execute("ALTER TABLE imgsearch.products DROP CONSTRAINT products_price_not_nan_check")
    op.execute("ALTER TABLE imgsearch.embeddings DROP CONSTRAINT embeddings_not_zero_check")
