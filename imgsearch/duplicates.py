"""Near-duplicate images across products: by perceptual hash first, confirmed by embedding distance.

Two images are near-duplicates when their 64-bit pHashes (:func:`imgsearch.images.perceptual_hash`)
differ in at most ``max_hamming`` bits *and* their embeddings under the active model lie within
``max_distance`` (cosine distance) of each other. The hash alone confuses distinct products shot
the same way (two mugs on white differ in a few bits); the embedding alone confuses a product with
its other colours. Both together keep the copies: re-encoded, resized, watermarked, recoloured.

Two uses:

- at upload (``on_duplicate="link"|"reject"``): :func:`find` checks each row against the tenant's
  other products through the hash's HNSW index, and against the other rows of the same call;
- a sweep (:func:`sweep`, ``catalog.duplicates``, ``imgsearch duplicates``): every pair of a
  tenant's images, compared exactly in blocks, grouped into connected groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Float, Table, bindparam, func, select, text, update

from imgsearch import images
from imgsearch.db.models import Embedding, Image, Product
from imgsearch.errors import InvalidImage, InvalidInput
from imgsearch.records import ModelInfo

OnDuplicate = Literal["keep", "link", "reject"]
ON_DUPLICATE: tuple[str, ...] = ("keep", "link", "reject")
DEFAULT_MAX_HAMMING = 10  # of 64 bits (bench/duplicates.py measures the choice)
DEFAULT_MAX_DISTANCE = 0.1  # cosine distance between the two embeddings
CANDIDATES = 16  # nearest hashes an upload is compared with
SWEEP_BLOCK = 2048  # images compared with all others at once in a sweep (2048 x n uint64s)
HASH_BATCH = 200  # images hashed per round trip when a sweep fills in missing hashes


class Unset:
    """The default of an argument whose None means something (``max_distance=None``: no check)."""


UNSET = Unset()

Embed = Callable[[list[bytes]], list[Any]]  # bytes -> unit vectors or the InvalidImage each raised


def set_where_unset(conn: Connection, column: str, by_id: Mapping[int, Any]) -> None:
    """Set ``images.<column>`` (``phash``, ``duplicate_of``) of the images in ``by_id`` to their
    value there, in one statement; an image whose column is already set keeps it."""
    if not by_id:
        return
    table = cast(Table, Image.__table__)
    conn.execute(
        update(table)
        .where(table.c.id == bindparam("b_id"), table.c[column].is_(None))
        .values({column: bindparam("b_value")}),
        [{"b_id": image_id, "b_value": value} for image_id, value in by_id.items()],
    )


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


def _distance(a: Any, b: Any) -> float:
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
    """The part of an upload row the check needs (``ingest.PreparedRow`` has it)."""

    product_id: str
    phash: str | None
    content: bytes | None
    embedding: Any  # a unit vector, or None until embedded


def _stored_candidates(
    conn: Connection, tenant: str, phash: str, product_id: str, max_hamming: int
) -> list[tuple[int, str, int]]:
    """(image id, product id, hamming) of the tenant's images of other products whose hash is at
    most ``max_hamming`` bits away, nearest first, through the hash's HNSW index."""
    conn.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
    conn.execute(text("SET LOCAL hnsw.ef_search = 64"))
    distance = Image.phash.op("<~>", return_type=Float)(bindparam("h", phash, type_=Image.phash.type))
    rows = conn.execute(
        select(Image.id, Product.product_id, distance.label("hamming"))
        .join(Product, Product.id == Image.product_pk)
        .where(Image.tenant == tenant, Image.phash.is_not(None), Product.product_id != product_id)
        .order_by(distance)
        .limit(CANDIDATES)
    )
    return [(r.id, r.product_id, int(r.hamming)) for r in rows if r.hamming <= max_hamming]


def _stored_embeddings(conn: Connection, model: ModelInfo, ids: Iterable[int]) -> dict[int, Any]:
    """The active model's embeddings of ``ids``; an image not embedded yet is embedded from its
    stored bytes (or thumbnail) by the caller, so these come back as bytes."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    found: dict[int, Any] = {
        r.image_id: r.embedding
        for r in conn.execute(
            select(Embedding.image_id, Embedding.embedding).where(
                Embedding.model_id == model.id, Embedding.image_id.in_(wanted)
            )
        )
    }
    missing = [i for i in wanted if i not in found]
    if missing:
        for r in conn.execute(
            select(Image.id, func.coalesce(Image.content, Image.thumbnail).label("shown")).where(
                Image.id.in_(missing)
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
    others = _stored_embeddings(conn, model, (c[0] for cands in stored for c in cands))
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
                d = _distance(upload.embedding, others[image_id])
                if d <= max_distance and (best is None or (bits, d) < (best.hamming, best.distance or 0.0)):
                    best = Match(product_id, bits, d, image_id=image_id)
            for j, bits in earlier[i]:
                if uploads[j].embedding is None:
                    continue
                d = _distance(upload.embedding, uploads[j].embedding)
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


# -- a sweep of a tenant ----------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    image_id: int
    product_id: str
    hamming: int  # to the group's first image
    distance: float | None  # to the group's first image; None where one of them has no embedding


@dataclass
class Group:
    """Images of different products that copy each other (directly or through other members)."""

    members: list[Member]

    @property
    def image_ids(self) -> list[int]:
        return [m.image_id for m in self.members]

    @property
    def product_ids(self) -> list[str]:
        return sorted({m.product_id for m in self.members})


@dataclass
class Report:
    groups: list[Group] = field(default_factory=list)
    images: int = 0  # images of the tenant with a hash, all compared with each other
    unhashed: int = 0  # images without bytes to hash (a URL not fetched yet, an embedding only)
    hashed_now: int = 0  # images hashed by this sweep (uploaded before hashes existed)
    hash_pairs: int = 0  # pairs within max_hamming of different products
    # the pairs found (confirmed by embedding unless max_distance is None): image ids a < b, the
    # bits their hashes differ in and their embeddings' distance; groups join pairs that share an image
    pairs: list[tuple[int, int, int, float | None]] = field(default_factory=list)
    unconfirmed: int = 0  # of those, pairs left out because one image has no embedding yet


def fill_hashes(
    conn: Connection, limits: images.Limits, on_progress: Callable[[int], None] | None = None
) -> int:
    """Hash the images in scope that have bytes (or a thumbnail) but no hash yet; returns how many."""
    done = 0
    last = 0
    while True:
        rows = conn.execute(
            select(Image.id, func.coalesce(Image.content, Image.thumbnail).label("shown"))
            .where(Image.phash.is_(None), Image.id > last)
            .where((Image.content.is_not(None)) | (Image.thumbnail.is_not(None)))
            .order_by(Image.id)
            .limit(HASH_BATCH)
        ).all()
        if not rows:
            return done
        last = rows[-1].id
        values: dict[int, str] = {}
        for r in rows:
            try:
                values[r.id] = images.perceptual_hash(bytes(r.shown), limits)
            except InvalidImage:
                continue  # a failed image keeps no hash; it is never ready either
        set_where_unset(conn, "phash", values)
        done += len(values)
        if on_progress is not None:
            on_progress(len(rows))


def _pairs(
    hashes: npt.NDArray[np.uint64],
    products: npt.NDArray[np.int64],
    max_hamming: int,
    on_progress: Callable[[int], None] | None = None,
) -> list[tuple[int, int, int]]:
    """Every (i, j, bits) with i < j, different products and at most ``max_hamming`` bits apart."""
    found: list[tuple[int, int, int]] = []
    n = len(hashes)
    for start in range(0, n, SWEEP_BLOCK):
        block = hashes[start : start + SWEEP_BLOCK]
        bits = np.bitwise_count(block[:, None] ^ hashes[None, start:])
        close = bits <= max_hamming
        close &= products[start : start + SWEEP_BLOCK, None] != products[None, start:]
        rows, cols = np.nonzero(close)
        keep = cols > rows  # the block against itself: each pair once
        for r, c in zip(rows[keep].tolist(), cols[keep].tolist(), strict=True):
            found.append((start + r, start + c, int(bits[r, c])))
        if on_progress is not None:
            on_progress(len(block))
    return found


def sweep(
    conn: Connection,
    model: ModelInfo,
    limits: images.Limits,
    *,
    max_hamming: int = DEFAULT_MAX_HAMMING,
    max_distance: float | None = DEFAULT_MAX_DISTANCE,
    progress: Callable[[str, int, int], None] | None = None,
) -> Report:
    """Near-duplicate groups among the images in the connection's scope (one tenant's, under
    row-level security): all pairs by hash, exactly, then each pair confirmed by embedding."""
    report = Report()
    todo = conn.execute(
        select(func.count()).where(
            Image.phash.is_(None), (Image.content.is_not(None)) | (Image.thumbnail.is_not(None))
        )
    ).scalar_one()
    if todo:
        hashed = 0

        def hashed_some(n: int) -> None:
            nonlocal hashed
            hashed += n
            if progress is not None:
                progress("hashing", hashed, todo)

        report.hashed_now = fill_hashes(conn, limits, hashed_some)
    rows = conn.execute(
        select(Image.id, Image.product_pk, Product.product_id, Image.phash)
        .join(Product, Product.id == Image.product_pk)
        .where(Image.phash.is_not(None))
        .order_by(Image.id)
    ).all()
    report.unhashed = conn.execute(select(func.count()).where(Image.phash.is_(None))).scalar_one()
    report.images = len(rows)
    if len(rows) < 2:
        return report
    hashes = np.array([as_int(r.phash) for r in rows], dtype=np.uint64)
    products = np.array([r.product_pk for r in rows], dtype=np.int64)
    compared = 0

    def compared_some(n: int) -> None:
        nonlocal compared
        compared += n
        if progress is not None:
            progress("comparing", compared, len(rows))

    pairs = _pairs(hashes, products, max_hamming, compared_some)
    report.hash_pairs = len(pairs)
    vectors: dict[int, Any] = {}  # the pairs' embeddings: to confirm, and to report distances
    if pairs:
        involved = sorted({rows[i].id for p in pairs for i in p[:2]})
        for start in range(0, len(involved), 5000):
            part = involved[start : start + 5000]
            vectors.update(
                (r.image_id, np.asarray(r.embedding, dtype=np.float64))
                for r in conn.execute(
                    select(Embedding.image_id, Embedding.embedding).where(
                        Embedding.model_id == model.id, Embedding.image_id.in_(part)
                    )
                )
            )
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, bits in pairs:
        a, b = vectors.get(rows[i].id), vectors.get(rows[j].id)
        distance = None if a is None or b is None else _distance(a, b)
        if max_distance is not None:
            if distance is None:
                report.unconfirmed += 1
                continue
            if distance > max_distance:
                continue
        report.pairs.append((rows[i].id, rows[j].id, bits, None if distance is None else round(distance, 4)))
        parent[root(i)] = root(j)
    members: dict[int, list[int]] = {}
    for k in range(len(rows)):
        members.setdefault(root(k), []).append(k)
    for positions in members.values():
        if len({rows[k].product_pk for k in positions}) < 2:
            continue
        first = positions[0]
        group = []
        for k in positions:
            bits = int(np.bitwise_count(hashes[k] ^ hashes[first]))
            a, b = vectors.get(rows[k].id), vectors.get(rows[first].id)
            distance = None if a is None or b is None else round(_distance(a, b), 4)
            group.append(Member(rows[k].id, rows[k].product_id, bits, distance))
        report.groups.append(Group(group))
    report.groups.sort(key=lambda g: (-len(g.members), g.members[0].image_id))
    return report


def summary(report: Report) -> str:
    """One line for a person: what was found and what couldn't be compared."""
    in_groups = sum(len(g.members) for g in report.groups)
    line = (
        f"{len(report.groups)} group{'s' if len(report.groups) != 1 else ''}, {in_groups} images in them; "
        f"{report.images} images compared"
    )
    if report.hashed_now:
        line += f" ({report.hashed_now} hashed now)"
    if report.unhashed:
        line += f", {report.unhashed} without bytes to hash"
    if report.unconfirmed:
        line += f", {report.unconfirmed} hash-close pairs not confirmed yet (an image not embedded)"
    return line


def html_page(report: Report, tenant: str, previews: dict[int, bytes | None], limits: images.Limits) -> str:
    """A page of the groups, each image as a small JPEG inline, with its product and its hash and
    embedding distance to the group's first image; every value escaped."""
    import base64
    import html

    parts = [
        "<!DOCTYPE html><html lang='en'><meta charset='utf-8'><title>imgsearch duplicates</title>",
        "<style>body{font-family:sans-serif;margin:2em}section{border-bottom:1px solid #ddd;padding:1em 0}"
        "figure{display:inline-block;margin:0 1em 0 0;text-align:center;font-size:90%}"
        "img{width:160px;height:160px;object-fit:contain;background:#f4f4f4}</style>",
        f"<h1>Near-duplicates of {html.escape(tenant)}</h1><p>{html.escape(summary(report))}</p>",
    ]
    for number, group in enumerate(report.groups, 1):
        parts.append(f"<section><h2>Group {number}: {len(group.members)} images</h2>")
        for m in group.members:
            data = previews.get(m.image_id)
            picture = "<div>(no image stored)</div>"
            if data is not None:
                try:
                    small = images.thumbnail(data, 160, limits)
                    picture = f"<img alt='' src='data:image/jpeg;base64,{base64.b64encode(small).decode()}'>"
                except InvalidImage:
                    picture = "<div>(unreadable)</div>"
            distance = "" if m.distance is None else f", distance {m.distance:.3f}"
            parts.append(
                f"<figure>{picture}<figcaption>product {html.escape(m.product_id)}<br>image {m.image_id}"
                f"<br>{m.hamming} bits{distance}</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</html>")
    return "\n".join(parts)
