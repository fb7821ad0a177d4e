"""An image belongs to every product that uploads it (migration 0019).

Its bytes are stored and embedded once; ``image_products`` links it to each product, and
``embeddings`` holds one row per model, image and product, so each product's row carries that
product's category and price and a filtered search stays a scan or index walk of one table.

Every write path goes through here:

- an upload or import that links a stored image to another product copies the image's
  embeddings (every model's) to the new product's rows (:func:`link`);
- a worker or a backfill that embeds an image writes a row for each of its products
  (:func:`embedding_rows`).

The two can't miss each other: :func:`link` takes a share lock on the linked images before it
copies, and a worker holds the image's row lock (``FOR UPDATE``) when it reads the links and
writes. Whichever commits second sees the other's rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import BigInteger, Connection, Text, any_, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from imgsearch.db.models import ImageProduct

Link = tuple[int, int, str]  # (image id, product key, tenant)

# one tenant's links at a time (a link stays within its tenant): on a Citus cluster, each
# statement runs on the tenant's node alone
_COPY = text(
    """
    INSERT INTO imgsearch.embeddings (model_id, image_id, product_pk, tenant, region, box, embedding)
    SELECT DISTINCT ON (e.model_id, n.image_id, n.product_pk, e.region) e.model_id, n.image_id, n.product_pk,
           e.tenant, e.region, e.box, e.embedding
    FROM unnest(:images, :products) AS n (image_id, product_pk)
    JOIN imgsearch.embeddings e ON e.tenant = :tenant AND e.image_id = n.image_id
    ORDER BY e.model_id, n.image_id, n.product_pk, e.region
    ON CONFLICT DO NOTHING
    """
).bindparams(
    bindparam("images", type_=ARRAY(BigInteger())),
    bindparam("products", type_=ARRAY(BigInteger())),
    bindparam("tenant", type_=Text()),
)
_LOCK = text(
    "SELECT 1 FROM imgsearch.images WHERE tenant = :tenant AND id = ANY(:ids) ORDER BY id FOR SHARE"
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())), bindparam("tenant", type_=Text()))


def link(conn: Connection, links: Iterable[Link]) -> list[Link]:
    """Link each image to its product (in the caller's transaction), and give every new link
    the embeddings its image already has. Returns the links that are new."""
    wanted = list(dict.fromkeys(links))
    if not wanted:
        return []
    stmt = (
        pg_insert(ImageProduct)
        .on_conflict_do_nothing()
        .returning(ImageProduct.image_id, ImageProduct.product_pk, ImageProduct.tenant)
    )
    added = [
        (int(r.image_id), int(r.product_pk), str(r.tenant))
        for r in conn.execute(stmt, [{"image_id": i, "product_pk": p, "tenant": t} for i, p, t in wanted])
    ]
    for tenant in sorted({t for _, _, t in added}):
        ours = [(i, p) for i, p, t in added if t == tenant]
        # a worker storing one of these images holds its row until it commits: wait for it, so
        # its embeddings are there to copy (and it, in turn, saw no link of ours to write)
        conn.execute(_LOCK, {"tenant": tenant, "ids": sorted({i for i, _ in ours})})
        conn.execute(_COPY, {"tenant": tenant, "images": [i for i, _ in ours], "products": [p for _, p in ours]})
    return added


def products_of(
    conn: Connection, image_ids: Sequence[int], tenant: str | None = None
) -> dict[int, list[tuple[int, str]]]:
    """Each image's (product key, tenant) links (``tenant``: its images'); an image without a
    link isn't there."""
    found: dict[int, list[tuple[int, str]]] = {}
    if not image_ids:
        return found
    rows = conn.execute(
        select(ImageProduct.image_id, ImageProduct.product_pk, ImageProduct.tenant)
        .where(
            ImageProduct.image_id == any_(bindparam("ids", sorted(set(image_ids)), type_=ARRAY(BigInteger()))),
            *([] if tenant is None else [ImageProduct.tenant == tenant]),
        )
        .order_by(ImageProduct.image_id, ImageProduct.product_pk)
    )
    for r in rows:
        found.setdefault(int(r.image_id), []).append((int(r.product_pk), str(r.tenant)))
    return found


def embedding_rows(
    conn: Connection, model_id: int, vectors: Mapping[int, Any], tenant: str | None = None
) -> list[dict[str, Any]]:
    """The embeddings rows of ``vectors`` (image id -> its vector under ``model_id``): one per
    product each image belongs to, read now (call it with the images' rows locked); ``tenant``:
    the images'."""
    return [
        {"model_id": model_id, "image_id": image_id, "product_pk": pk, "tenant": tenant, "embedding": vector}
        for image_id, products in products_of(conn, list(vectors), tenant).items()
        for pk, tenant in products
        for vector in (vectors[image_id],)
    ]
