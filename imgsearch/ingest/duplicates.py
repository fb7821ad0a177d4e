"""Near-duplicate images across products: by perceptual hash first, confirmed by embedding distance.

Two images are near-duplicates when their 64-bit pHashes (:func:`imgsearch.ingest.images.perceptual_hash`)
differ in at most ``max_hamming`` bits *and* their embeddings under the active model lie within
``max_distance`` (cosine distance) of each other. The hash alone confuses distinct products shot
the same way (two mugs on white differ in a few bits); the embedding alone confuses a product with
its other colours. Both together keep the copies: re-encoded, resized, watermarked, recoloured.

Two uses:

- at upload (``on_duplicate="link"|"reject"``), here: :func:`find` checks each row against the
  tenant's other products through the hash's HNSW index, and against the other rows of the same call;
- a sweep (:mod:`imgsearch.quality.duplicates`, ``catalog.duplicates``, ``imgsearch duplicates``):
  every pair of a tenant's images, compared exactly in blocks, grouped into connected groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
from sqlalchemy import Connection, Float, Table, and_, bindparam, func, select, text, update

from imgsearch.db.models import Embedding, Image, ImageProduct, Product
from imgsearch.errors import InvalidImage, InvalidInput
from imgsearch.records import ModelInfo

OnDuplicate = Literal["keep", "link", "reject"]
ON_DUPLICATE: tuple[str, ...] = ("keep", "link", "reject")
DEFAULT_MAX_HAMMING = 10  # of 64 bits (bench/ingest/duplicates.py measures the choice)
DEFAULT_MAX_DISTANCE = 0.1  # cosine distance between the two embeddings
CANDIDATES = 16  # nearest hashes an upload is compared with


class Unset:
    """The default of an argument whose None means something (``max_distance=None``: no check)."""


UNSET = Unset()

Embed = Callable[[list[bytes]], list[Any]]  # bytes -> unit vectors or the InvalidImage each raised


def set_where_unset(
    conn: Connection, column: str, by_id: Mapping[int, Any], tenants: Mapping[int, str] | None = None
) -> None:
    """Set ``images.<column>`` (``phash``, ``duplicate_of``) of the images in ``by_id`` to their
    value there, in one statement; an image whose column is already set keeps it. ``tenants``
    (by image id) names each row's tenant too (a Citus cluster then writes it on its shop's node
    alone)."""
    if not by_id:
        return
    table = cast(Table, Image.__table__)
    where = [table.c.id == bindparam("b_id"), table.c[column].is_(None)]
    rows = [{"b_id": image_id, "b_value": value} for image_id, value in by_id.items()]
    if tenants is not None:
        where.append(table.c.tenant == bindparam("b_tenant"))
        rows = [{**row, "b_tenant": tenants[row["b_id"]]} for row in rows]
    conn.execute(update(table).where(*where).values({column: bindparam("b_value")}), rows)


def check_policy(value: Any) -> str:
    if value not in ON_DUPLICATE:
        raise InvalidInput(f"on_duplicate must be one of {', '.join(ON_DUPLICATE)}, got {value!r}")
    return str(value)


def check_limits(max_hamming: Any, max_distance: Any) -> tuple[int, float | None]:
    if isinstance(max_hamming, bool) or not isinstance(max_hamming, int) or not 0 <= max_hamming <= 32:
        raise InvalidInput(f"max_hamming must be a whole number of bits from 0 to 32, got {max_hamming!r}")
    if max_distance is None:
        return max_hamming, None
    if isinstance(max_distance, bool) or not isinstance(max_distance, int | float):
        raise InvalidInput(
            f"max_distance must be a number from 0 to 2 (cosine distance), got {max_distance!r}"
        )
    if not math.isfinite(max_distance) or not 0 <= max_distance <= 2:
        raise InvalidInput(
            f"max_distance must be a number from 0 to 2 (cosine distance), got {max_distance!r}"
        )
    return max_hamming, float(max_distance)


def as_int(phash: str) -> int:
    return int(phash, 2)


def cosine_distance(a: Any, b: Any) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    return max(0.0, 1.0 - float(x @ y) / float(np.linalg.norm(x) * np.linalg.norm(y)))


# -- at upload ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """What an upload copies: a stored image (``image_id``) or an earlier row of the same call
    (``row``), of ``product_id``, ``hamming`` bits and ``distance`` away (None: not confirmed by
    embedding, ``max_distance=None``)."""

    product_id: str
    hamming: int
    distance: float | None
    image_id: int | None = None
    row: int | None = None

    def describe(self) -> str:
        what = f"image {self.image_id}" if self.image_id is not None else f"row {self.row}"
        close = f"{self.hamming} of 64 hash bits differ"
        if self.distance is not None:
            close += f", embedding distance {self.distance:.3f}"
        return f"a near-copy of {what} of product {self.product_id!r} ({close})"


@dataclass
class Upload:
    """The part of an upload row the check needs (:class:`imgsearch.ingest.rows.PreparedRow` has it)."""

    product_id: str
    phash: str | None
    content: bytes | None
    embedding: Any  # a unit vector, or None until embedded


def _stored_candidates(
    conn: Connection, tenant: str, phash: str, product_id: str, max_hamming: int
) -> list[tuple[int, str, int]]:
    """(image id, product id, hamming) of the tenant's images of other products whose hash is at
    most ``max_hamming`` bits away, nearest first, through the hash's HNSW index (an image the
    product shares with another is its own, not a copy)."""
    conn.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
    conn.execute(text("SET LOCAL hnsw.ef_search = 64"))
    distance = Image.phash.op("<~>", return_type=Float)(bindparam("h", phash, type_=Image.phash.type))
    rows = conn.execute(
        select(Image.id, Product.product_id, distance.label("hamming"))
        .join(Product, and_(Product.tenant == Image.tenant, Product.id == Image.product_pk))
        .where(
            Image.tenant == tenant, Image.phash.is_not(None), Image.id.not_in(_images_of(tenant, product_id))
        )
        .order_by(distance)
        .limit(CANDIDATES)
    )
    return [(r.id, r.product_id, int(r.hamming)) for r in rows if r.hamming <= max_hamming]


def _images_of(tenant: str, product_id: str) -> Any:
    """The ids of the product's images, shared ones included (:mod:`imgsearch.db.links`)."""
    return (
        select(ImageProduct.image_id)
        .join(Product, and_(Product.tenant == ImageProduct.tenant, Product.id == ImageProduct.product_pk))
        .where(ImageProduct.tenant == tenant, Product.tenant == tenant, Product.product_id == product_id)
    )


def _stored_embeddings(conn: Connection, tenant: str, model: ModelInfo, ids: Iterable[int]) -> dict[int, Any]:
    """The active model's embeddings of ``ids``; an image not embedded yet is embedded from its
    stored bytes (or thumbnail) by the caller, so these come back as bytes."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    found: dict[int, Any] = {
        r.image_id: r.embedding
        for r in conn.execute(
            select(Embedding.image_id, Embedding.embedding).where(
                Embedding.tenant == tenant, Embedding.model_id == model.id, Embedding.image_id.in_(wanted),
                Embedding.region == 0,
            )
        )
    }
    missing = [i for i in wanted if i not in found]
    if missing:
        for r in conn.execute(
            select(Image.id, func.coalesce(Image.content, Image.thumbnail).label("shown")).where(
                Image.tenant == tenant, Image.id.in_(missing)
            )
        ):
            if r.shown is not None:
                found[r.id] = bytes(r.shown)
    return found


def find(
    conn: Connection,
    tenant: str,
    uploads: Sequence[Upload],
    model: ModelInfo,
    embed: Embed,
    *,
    max_hamming: int = DEFAULT_MAX_HAMMING,
    max_distance: float | None = DEFAULT_MAX_DISTANCE,
) -> list[Match | None]:
    """For each upload of one tenant (in the caller's transaction, scoped to it): the image of
    another product it is a near-copy of, stored or earlier in ``uploads``, or None.

    Uploads are embedded (``embed``) only when their hash has a candidate, and the embedding is
    left on the :class:`Upload`, so the caller can store it as ready. An upload without a hash
    (no bytes) is never a match."""
    stored: list[list[tuple[int, str, int]]] = []
    for upload in uploads:
        if upload.phash is None:
            stored.append([])
        else:
            stored.append(_stored_candidates(conn, tenant, upload.phash, upload.product_id, max_hamming))
    earlier: list[list[tuple[int, int]]] = []  # per upload: (row, hamming) of earlier rows
    hashes = [None if u.phash is None else as_int(u.phash) for u in uploads]
    for i, upload in enumerate(uploads):
        close = []
        for j in range(i):
            hi, hj = hashes[i], hashes[j]
            if hi is None or hj is None or uploads[j].product_id == upload.product_id:
                continue
            bits = (hi ^ hj).bit_count()
            if bits <= max_hamming:
                close.append((j, bits))
        earlier.append(close)
    if max_distance is None:
        return [_first_unconfirmed(stored[i], earlier[i], uploads) for i in range(len(uploads))]

    # embeddings: the uploads with a candidate (and the earlier rows they match), and the candidates
    involved = {i for i in range(len(uploads)) if stored[i] or earlier[i]}
    involved |= {j for i in involved for j, _ in earlier[i]}
    to_embed = [
        i for i in sorted(involved) if uploads[i].embedding is None and uploads[i].content is not None
    ]
    embedded = embed([uploads[i].content for i in to_embed]) if to_embed else []  # type: ignore[misc]
    for i, vector in zip(to_embed, embedded, strict=True):
        if not isinstance(vector, InvalidImage):
            uploads[i].embedding = vector
    others = _stored_embeddings(conn, tenant, model, (c[0] for cands in stored for c in cands))
    raw = [image_id for image_id, value in others.items() if isinstance(value, bytes)]
    for image_id, vector in zip(raw, embed([others[i] for i in raw]) if raw else [], strict=True):
        others[image_id] = None if isinstance(vector, InvalidImage) else vector

    matches: list[Match | None] = []
    for i, upload in enumerate(uploads):
        best: Match | None = None
        if upload.embedding is not None:
            for image_id, product_id, bits in stored[i]:
                if others.get(image_id) is None:
                    continue
                d = cosine_distance(upload.embedding, others[image_id])
                if d <= max_distance and (best is None or (bits, d) < (best.hamming, best.distance or 0.0)):
                    best = Match(product_id, bits, d, image_id=image_id)
            for j, bits in earlier[i]:
                if uploads[j].embedding is None:
                    continue
                d = cosine_distance(upload.embedding, uploads[j].embedding)
                if d <= max_distance and (best is None or (bits, d) < (best.hamming, best.distance or 0.0)):
                    best = Match(uploads[j].product_id, bits, d, row=j)
        matches.append(best)
    return matches


def _first_unconfirmed(
    stored: list[tuple[int, str, int]], earlier: list[tuple[int, int]], uploads: Sequence[Upload]
) -> Match | None:
    options = [Match(p, bits, None, image_id=i) for i, p, bits in stored]
    options += [Match(uploads[j].product_id, bits, None, row=j) for j, bits in earlier]
    return min(options, key=lambda m: m.hamming, default=None)
