"""Near-duplicate groups of a tenant: a sweep of every pair of its images by perceptual hash,
confirmed by embedding distance (:mod:`imgsearch.ingest.duplicates` has the rule and the check at
upload), and the report of what it found: a summary line and an HTML page of the groups."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, and_, func, select

from imgsearch.access import tenancy
from imgsearch.db import links
from imgsearch.db.models import Embedding, Image, Product
from imgsearch.errors import InvalidImage
from imgsearch.ingest import checks, images
from imgsearch.ingest.duplicates import (
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MAX_HAMMING,
    UNSET,
    Unset,
    as_int,
    check_limits,
    cosine_distance,
    set_where_unset,
)
from imgsearch.records import ModelInfo

if TYPE_CHECKING:
    from imgsearch.context import Context

SWEEP_BLOCK = 2048  # images compared with all others at once in a sweep (2048 x n uint64s)
HASH_BATCH = 200  # images hashed per round trip when a sweep fills in missing hashes


def find_groups(
    context: Context,
    tenant: str,
    *,
    max_hamming: int | None = None,
    max_distance: float | Unset | None = UNSET,
    progress: bool | None = None,
) -> Report:
    """:meth:`imgsearch.Catalog.duplicates`: the thresholds checked (the settings' by default), then
    a :func:`sweep` of the tenant's images under its row-level security, with a progress bar per
    stage."""
    from tqdm import tqdm

    settings = context.settings
    hamming, within = check_limits(
        settings.duplicate_max_hamming if max_hamming is None else max_hamming,
        settings.duplicate_max_distance if isinstance(max_distance, Unset) else max_distance,
    )
    show = sys.stderr.isatty() if progress is None else progress
    bars: dict[str, Any] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="img", disable=not show)
        bar.update(done - bar.n)

    try:
        with context.engine.begin() as conn:
            return sweep(
                conn,
                context.active_model,
                context.limits,
                tenancy.scope(conn, checks.identifier(tenant, "tenant")),
                max_hamming=hamming,
                max_distance=within,
                progress=on_progress,
            )
    finally:
        for bar in bars.values():
            bar.close()


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
    conn: Connection, limits: images.Limits, tenant: str, on_progress: Callable[[int], None] | None = None
) -> int:
    """Hash ``tenant``'s images that have bytes (or a thumbnail) but no hash yet; returns how many."""
    done = 0
    last = 0
    while True:
        rows = conn.execute(
            select(Image.id, func.coalesce(Image.content, Image.thumbnail).label("shown"))
            .where(Image.tenant == tenant, Image.phash.is_(None), Image.id > last)
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
        set_where_unset(conn, "phash", values, dict.fromkeys(values, tenant))
        done += len(values)
        if on_progress is not None:
            on_progress(len(rows))


def _pairs(
    hashes: npt.NDArray[np.uint64],
    products: npt.NDArray[np.int64],
    max_hamming: int,
    on_progress: Callable[[int], None] | None = None,
) -> list[tuple[int, int, int]]:
    """Every (i, j, bits) with i < j, different products (``products``: a number per set of
    products) and at most ``max_hamming`` bits apart."""
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
    tenant: str,
    *,
    max_hamming: int = DEFAULT_MAX_HAMMING,
    max_distance: float | None = DEFAULT_MAX_DISTANCE,
    progress: Callable[[str, int, int], None] | None = None,
) -> Report:
    """Near-duplicate groups among ``tenant``'s images (the connection scoped to it: row-level
    security; every statement names it too, a query of its node on a Citus cluster): all pairs by
    hash, exactly, then each pair confirmed by embedding."""
    report = Report()
    todo = conn.execute(
        select(func.count()).where(
            Image.tenant == tenant, Image.phash.is_(None), (Image.content.is_not(None)) | (Image.thumbnail.is_not(None))
        )
    ).scalar_one()
    if todo:
        hashed = 0

        def hashed_some(n: int) -> None:
            nonlocal hashed
            hashed += n
            if progress is not None:
                progress("hashing", hashed, todo)

        report.hashed_now = fill_hashes(conn, limits, tenant, hashed_some)
    rows = conn.execute(
        select(Image.id, Image.product_pk, Product.product_id, Image.phash)
        .join(Product, and_(Product.tenant == Image.tenant, Product.id == Image.product_pk))
        .where(Image.tenant == tenant, Image.phash.is_not(None))
        .order_by(Image.id)
    ).all()
    report.unhashed = conn.execute(
        select(func.count()).where(Image.tenant == tenant, Image.phash.is_(None))
    ).scalar_one()
    report.images = len(rows)
    if len(rows) < 2:
        return report
    hashes = np.array([as_int(r.phash) for r in rows], dtype=np.uint64)
    # two images are compared when their products differ: each image's set of products (a photo
    # shared by variants is theirs alike: imgsearch.db.links) numbered, one number per set
    owners = links.products_of(conn, [r.id for r in rows], tenant)
    sets: dict[frozenset[int], int] = {}
    products = np.array(
        [
            sets.setdefault(frozenset(pk for pk, _ in owners.get(r.id, [(r.product_pk, "")])), len(sets))
            for r in rows
        ],
        dtype=np.int64,
    )
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
                        Embedding.tenant == tenant, Embedding.model_id == model.id, Embedding.image_id.in_(part),
                        Embedding.region == 0,
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
        distance = None if a is None or b is None else cosine_distance(a, b)
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
        if len({int(products[k]) for k in positions}) < 2:
            continue
        first = positions[0]
        group = []
        for k in positions:
            bits = int(np.bitwise_count(hashes[k] ^ hashes[first]))
            a, b = vectors.get(rows[k].id), vectors.get(rows[first].id)
            distance = None if a is None or b is None else round(cosine_distance(a, b), 4)
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
