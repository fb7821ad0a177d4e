"""The shop's own training pairs, read from the catalog, and their split by product.

* **products**: each product's title, then its whole text (title, brand, category, attribute
  values, description), each with each of its ready images;
* **events**: a text search's query with a product a shopper clicked, added to a cart or bought
  from its hits (the feedback log);
* **a pairs file** (JSON Lines): ``{"text": ..., "product_id": ...}`` (the text with each of the
  product's images), ``{"text": ..., "image_id": ...}`` (with that image), or ``{"image": PATH,
  "product_id" | "image_id": ...}`` (one more image of the product, with its texts). A relative
  ``PATH`` is read from the file's folder.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from imgsearch.access import tenancy
from imgsearch.errors import InvalidInput
from imgsearch.finetune.training import Pair
from imgsearch.ingest import checks
from imgsearch.ingest.downloads import Downloads
from imgsearch.learning.tuning import pairs_file_lines
from imgsearch.work import queue

HELD_OUT = 0.2
MIN_HELD_OUT_PRODUCTS = 5
MIN_PRODUCTS = 25

_PRODUCTS = """
SELECT p.tenant, p.id, p.product_id, p.title,
       concat_ws(' ', p.title, p.brand, p.category,
                 (SELECT string_agg(v.value, ' ' ORDER BY v.key) FROM jsonb_each_text(p.attributes) v),
                 p.description) AS whole,
       i.id AS image_id, i.content, i.uri
FROM imgsearch.products p
JOIN imgsearch.image_products ip ON ip.tenant = p.tenant AND ip.product_pk = p.id
JOIN imgsearch.images i ON i.tenant = ip.tenant AND i.id = ip.image_id
WHERE i.state = 'ready' AND (CAST(:tenant AS text) IS NULL OR p.tenant = :tenant)
ORDER BY p.tenant, p.id, i.id
"""

_EVENTS = """
SELECT DISTINCT q.user_query, e.tenant, e.product_pk
FROM imgsearch.search_events e
JOIN imgsearch.search_queries q ON q.tenant = e.tenant AND q.query_id = e.query_id
    AND q.searched_at = uuid_extract_timestamp(e.query_id)
WHERE e.action_name IN ('click', 'add_to_cart', 'purchase') AND q.user_query IS NOT NULL
    AND (CAST(:tenant AS text) IS NULL OR e.tenant = :tenant)
"""


@dataclass(frozen=True)
class Gathered:
    pairs: list[Pair]
    sources: dict[str, int]  # pairs from each source
    skipped_images: int  # ready images whose bytes couldn't be had (dropped, or a failed download)


def _key(tenant: str, product_pk: int) -> str:
    return f"{tenant}/{product_pk}"


def gather(
    engine: Engine,
    downloads: Downloads,
    *,
    tenant: str | None = None,
    pairs_file: Path | None = None,
    events: bool = True,
) -> Gathered:
    """Every training pair of the catalog (of ``tenant`` only, when given)."""
    if tenant is not None:
        tenant = checks.identifier(tenant, "tenant")
    with tenancy.begin(engine, tenant) as conn:
        if tenant is None:
            tenancy.run_as_worker(conn)
        rows = conn.execute(text(_PRODUCTS), {"tenant": tenant}).all()
        clicked = conn.execute(text(_EVENTS), {"tenant": tenant}).all() if events else []
    texts: dict[str, list[str]] = {}
    images: dict[str, list[bytes]] = {}
    stored = _Stored({}, {}, {})
    claims = [queue.Claim(r.image_id, r.tenant, r.id, r.content, r.uri, 0, None) for r in rows]  # type: ignore[arg-type]
    datas = queue.read_claims(claims, downloads)
    skipped = 0
    for row, data in zip(rows, datas, strict=True):
        key = _key(row.tenant, row.id)
        stored.owner.setdefault(row.image_id, key)
        stored.products.setdefault(row.product_id, []).append(key)
        if key not in texts:
            texts[key] = [t for t in dict.fromkeys((row.title, row.whole)) if t and t.strip()]
        if isinstance(data, bytes):
            images.setdefault(key, []).append(data)
            stored.content[row.image_id] = data
        else:
            skipped += 1
    sources = {"products": 0, "events": 0, "file": 0}
    extra: list[tuple[str, str, bytes | None]] = []  # (product, text, image or None: each of its images)
    for query, row_tenant, product_pk in clicked:
        key = _key(row_tenant, product_pk)
        if key in texts:
            extra.append((key, query, None))
            sources["events"] += 1
    if pairs_file is not None:
        for key, pair_text, image in _read_file(pairs_file, stored):
            if pair_text is None:
                assert image is not None
                images.setdefault(key, []).append(image)
            else:
                extra.append((key, pair_text, image))
            sources["file"] += 1
    pairs: list[Pair] = []
    for key, product_texts in texts.items():
        for product_text in product_texts:
            for image in images.get(key, []):
                pairs.append(Pair(key, product_text, image))
                sources["products"] += 1
    for key, pair_text, image in extra:
        pairs.extend(Pair(key, pair_text, i) for i in ([image] if image is not None else images.get(key, [])))
    return Gathered(pairs, sources, skipped)


@dataclass
class _Stored:
    owner: dict[int, str]  # image id -> its (first) product's key
    products: dict[str, list[str]]  # product id -> the keys of the products of that id (one a tenant)
    content: dict[int, bytes]  # image id -> its bytes, when they could be had


def _read_file(path: Path, stored: _Stored) -> Iterator[tuple[str, str | None, bytes | None]]:
    """Each line as (product, text or None, image or None)."""
    for number, pair in pairs_file_lines(path):
        where = f"{path}, line {number}"
        if (
            not isinstance(pair, dict)
            or set(pair) - {"text", "image", "product_id", "image_id"}
            or ("text" in pair) == ("image" in pair)
            or ("product_id" in pair) == ("image_id" in pair)
        ):
            raise InvalidInput(
                f'{where}: a pair is one of "text" and "image", with one of "product_id" and "image_id"'
            )
        key = _file_product(pair, stored, where)
        if "text" in pair:
            if not isinstance(pair["text"], str) or not pair["text"].strip():
                raise InvalidInput(f'{where}: "text" must be a non-empty string')
            image = None
            if "image_id" in pair:
                image = stored.content.get(pair["image_id"])
                if image is None:
                    raise InvalidInput(f"{where}: image {pair['image_id']} has no stored bytes nor a readable URI")
            yield key, pair["text"], image
        else:
            yield key, None, _image_file(path, pair["image"], where)


def _file_product(pair: dict[str, Any], stored: _Stored, where: str) -> str:
    if "image_id" in pair:
        image_id = pair["image_id"]
        if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id not in stored.owner:
            raise InvalidInput(f"{where}: no ready image {image_id!r} in the catalog (or the tenant)")
        return stored.owner[image_id]
    product_id = pair["product_id"]
    if not isinstance(product_id, str):
        raise InvalidInput(f'{where}: "product_id" must be a string, got {product_id!r}')
    found = stored.products.get(product_id, [])
    if not found:
        raise InvalidInput(f"{where}: no product {product_id!r} with a ready image in the catalog (or the tenant)")
    if len(set(found)) > 1:
        raise InvalidInput(f"{where}: product {product_id!r} is in several tenants; pass --tenant")
    return found[0]


def _image_file(path: Path, name: Any, where: str) -> bytes:
    if not isinstance(name, str) or not name:
        raise InvalidInput(f'{where}: "image" must be a path to an image file')
    file = Path(name) if Path(name).is_absolute() else path.parent / name
    try:
        return file.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{where}: image {name!r}: {exc.strerror or exc}") from exc


def split(pairs: Sequence[Pair], *, held_out: float = HELD_OUT, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Training and held-out pairs, split by product (never by pair: a product's texts and
    images are all on one side)."""
    products = sorted({p.product for p in pairs})
    if len(products) < MIN_PRODUCTS:
        raise InvalidInput(
            f"fine-tuning needs pairs of at least {MIN_PRODUCTS} products with a ready image "
            f"({MIN_HELD_OUT_PRODUCTS} or more held out to judge the result), got {len(products)}"
        )
    rng = random.Random(seed)
    rng.shuffle(products)
    count = max(MIN_HELD_OUT_PRODUCTS, round(held_out * len(products)))
    kept = set(products[:count])
    return [p for p in pairs if p.product not in kept], [p for p in pairs if p.product in kept]
