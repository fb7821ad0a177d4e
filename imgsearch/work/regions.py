"""Region rows: the vectors of an image's regions, written beside its whole row.

Workers embed a claimed image's regions with the image (:func:`embed_regions`, its rule read
with the claim) and write them in the same transaction as the whole row
(:func:`imgsearch.work.queue.store`). :func:`backfill` gives the images already stored the
regions their rule now asks for, batch by batch, each its own transaction under the images' row
locks: searches go on meanwhile, and an image's regions appear all at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import BigInteger, Connection, Engine, bindparam, delete, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from imgsearch.access import tenancy
from imgsearch.db import links, statistics
from imgsearch.db.models import Embedding
from imgsearch.embed.regions import MAX_GRID, Box, Detector, Rule, boxes_for, grid_size
from imgsearch.errors import InvalidImage, InvalidRegions
from imgsearch.ingest.downloads import PUBLIC_ONLY, Downloads
from imgsearch.records import ModelInfo
from imgsearch.work import region_rules

if TYPE_CHECKING:
    from imgsearch.context import Context
    from imgsearch.embed.model import Embedder

log = logging.getLogger(__name__)

RegionVectors = dict[int, list[tuple[Box, Any]]]  # by image id: each region's box and unit vector
_DETECTORS: dict[tuple[str, str], Detector] = {}


def detector_for(rule: Rule, device: str = "cpu") -> Detector | None:
    """The rule's detector, loaded once per process."""
    if rule.source != "detector":
        return None
    assert rule.detector is not None
    key = (rule.detector, device)
    if key not in _DETECTORS:
        _DETECTORS[key] = Detector(rule.detector, device=device)
    return _DETECTORS[key]


def embed_regions(
    embedder: Embedder, rules: Mapping[int, Rule], datas: Mapping[int, bytes | Exception]
) -> RegionVectors:
    """Each image's regions (``rules``: by image id, the rule of each image that has one on;
    ``datas``: its bytes) with their vectors, the crops of the whole batch embedded together. An
    image its detector can't read gets none (logged; :func:`backfill` can add them later)."""
    boxes: dict[int, list[Box]] = {}
    crops: list[Any] = []
    for image_id, rule in rules.items():
        data = datas.get(image_id)
        if not isinstance(data, bytes):
            continue
        try:
            picture = embedder.decode(data)
            found = boxes_for(picture, rule, detector_for(rule, embedder.device))
        except InvalidImage:
            continue  # the whole image fails with the same error
        except InvalidRegions as exc:
            log.warning("image %d keeps no regions: %s", image_id, exc)
            continue
        boxes[image_id] = found
        crops.extend(picture.crop(box) for box in found)
    vectors = embedder.embed_pictures(crops) if crops else np.zeros((0, 0), dtype=np.float32)
    found_regions: RegionVectors = {}
    row = 0
    for image_id, image_boxes in boxes.items():
        found_regions[image_id] = [(box, vectors[row + i]) for i, box in enumerate(image_boxes)]
        row += len(image_boxes)
    return found_regions


def region_rows(conn: Connection, model_id: int, regions: RegionVectors) -> list[dict[str, Any]]:
    """The embeddings rows of ``regions``: one per region and product the image belongs to
    (read now: call it with the images' rows locked)."""
    products = links.products_of(conn, list(regions))
    return [
        {
            "model_id": model_id,
            "image_id": image_id,
            "product_pk": pk,
            "tenant": tenant,
            "region": number,
            "box": list(box),
            "embedding": vector,
        }
        for image_id, found in regions.items()
        for pk, tenant in products.get(image_id, [])
        for number, (box, vector) in enumerate(found, start=1)
    ]


def replace_regions(conn: Connection, model_id: int, regions: RegionVectors) -> int:
    """Write ``regions`` (their images' earlier region rows under the model go); the rows written."""
    if not regions:
        return 0
    conn.execute(
        delete(Embedding).where(
            Embedding.model_id == model_id, Embedding.image_id.in_(list(regions)), Embedding.region > 0
        )
    )
    rows = region_rows(conn, model_id, regions)
    if rows:
        conn.execute(pg_insert(Embedding).on_conflict_do_nothing(), rows)
    return len(rows)


@dataclass
class Backfilled:
    images: int = 0  # images given regions
    rows: int = 0  # region rows written
    skipped: int = 0  # images whose bytes couldn't be read (logged)


_WAITING = text(
    """
    SELECT i.id, i.tenant, i.content, i.uri FROM imgsearch.images i
    WHERE i.state = 'ready' AND i.id > :after
      AND EXISTS (SELECT 1 FROM imgsearch.embeddings e
                  WHERE e.model_id = :model AND e.tenant = i.tenant AND e.image_id = i.id AND e.region = 0)
      AND NOT EXISTS (SELECT 1 FROM imgsearch.embeddings e
                      WHERE e.model_id = :model AND e.tenant = i.tenant AND e.image_id = i.id AND e.region > 0)
    ORDER BY i.id LIMIT :n
    """
)
# a tenant's at a time: Citus locks rows only in a statement of one tenant
_LOCK = text(
    "SELECT id FROM imgsearch.images WHERE tenant = :tenant AND id = ANY(:ids) AND state = 'ready' "
    "ORDER BY id FOR UPDATE"
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())))


def backfill(
    engine: Engine,
    model: ModelInfo,
    embedder: Embedder,
    *,
    batch_size: int = 32,
    downloads: Downloads = PUBLIC_ONLY,
    on_batch: Callable[[Backfilled], None] | None = None,
) -> Backfilled:
    """Give every ready image whose rule is on, and that has no region rows under ``model``, its
    regions. Each batch is read, embedded outside any transaction, then written in one under the
    images' locks (an image deleted or re-queued meanwhile is left alone)."""
    done = Backfilled()
    after = 0
    while True:
        with engine.begin() as conn:
            tenancy.run_as_worker(conn)
            found = conn.execute(_WAITING, {"after": after, "model": model.id, "n": batch_size}).all()
            if not found:
                return done
            after = int(found[-1].id)
            rules = region_rules.rules_for_images(conn, [int(r.id) for r in found])
        wanted = [r for r in found if int(r.id) in rules]
        datas = _bytes(wanted, downloads)
        done.skipped += sum(1 for r in wanted if not isinstance(datas.get(int(r.id)), bytes))
        regions = embed_regions(embedder, {i: rules[i] for i in datas}, datas)
        with engine.begin() as conn:
            tenancy.run_as_worker(conn)
            tenant_of = {int(r.id): str(r.tenant) for r in wanted}
            held: set[int] = set()
            for tenant in sorted({tenant_of[i] for i in regions}):
                ids = sorted(i for i in regions if tenant_of[i] == tenant)
                held.update(conn.execute(_LOCK, {"tenant": tenant, "ids": ids}).scalars())
            kept = {i: found_ for i, found_ in regions.items() if i in held and found_}
            written = replace_regions(conn, model.id, kept)
            done.rows += written
            done.images += len(kept)
        # the planner's row counts follow (a category's rows grow several-fold: statistics)
        statistics.after_write(engine, written, ("embeddings",))
        if on_batch is not None:
            on_batch(done)


def _bytes(rows: Sequence[Any], downloads: Downloads) -> dict[int, bytes | Exception]:
    """Each image's stored bytes, or its URL's (downloaded together)."""
    uris = [r.uri for r in rows if r.content is None and r.uri is not None]
    fetched = iter(downloads.fetch_all(uris))
    datas: dict[int, bytes | Exception] = {}
    for r in rows:
        if r.content is not None:
            datas[int(r.id)] = bytes(r.content)
        elif r.uri is not None:
            datas[int(r.id)] = next(fetched)
    for image_id, data in datas.items():
        if not isinstance(data, bytes):
            log.warning("image %d gets no regions: %s", image_id, data)
    return datas


class Regions:
    """A catalog's regions (``catalog.regions``): its rules, set and shown, and the backfill that
    gives stored images the regions a rule asks for (:mod:`imgsearch.work.regions`)."""

    def __init__(self, context: Context, on_change: Callable[[], None] | None = None) -> None:
        self._context, self._on_change = context, on_change

    def set(
        self, *, grid: int | None = None, detector: str | None = None, off: bool = False,
        category: str | None = None, labels: Sequence[str] = (), min_score: float = 0.3,
        min_area: float = 0.02, max_regions: int | None = None,
    ) -> Rule:  # fmt: skip
        """Where regions come from, for the catalog or ``category``: ``grid`` (its largest scale),
        ``detector`` (a checkpoint; ``labels``: the names it looks for) or ``off`` (one of the
        three). Images stored already get them from :meth:`backfill`; ``off`` deletes them."""
        if sum((grid is not None, detector is not None, bool(off))) != 1:
            raise InvalidRegions("say where regions come from: one of grid, detector or off")
        source = "grid" if grid is not None else "detector" if detector is not None else "off"
        if max_regions is None:
            max_regions = grid_size(grid) if isinstance(grid, int) and 2 <= grid <= MAX_GRID else 18
        rule = Rule(source, grid, detector, tuple(labels), min_score, min_area, max_regions)
        found = detector_for(rule, self._context.settings.device or "cpu")
        if found is not None:
            found.load()  # a checkpoint that won't load is refused now, not by every worker later
        with self._context.engine.begin() as conn:
            dropped = region_rules.set_rule(conn, rule, category)
        statistics.after_write(self._context.engine, dropped, ("embeddings",))
        if self._on_change is not None:
            self._on_change()  # the catalog's searches read the rules again
        return rule

    def rules(self) -> dict[str, Rule]:
        """Every rule by category (``''``: the catalog's)."""
        with self._context.engine.begin() as conn:
            return region_rules.read(conn)

    def counts(self) -> dict[str, int]:
        """The active model's images with regions and its region rows."""
        model = self._context.active_model
        with self._context.engine.begin() as conn:
            row = conn.execute(_COUNTS, {"model": model.id}).one()
        return {"images": int(row.images), "rows": int(row.rows)}

    def backfill(self, *, batch_size: int = 32, on_batch: Callable[[Backfilled], None] | None = None) -> Backfilled:
        """Give the stored images whose rule is on their regions (:func:`backfill`)."""
        self._context.follow_model_switch()
        return backfill(
            self._context.engine, self._context.registered_model(), self._context.embedder,
            batch_size=batch_size, on_batch=on_batch,
        )  # fmt: skip


_COUNTS = text(
    "SELECT count(DISTINCT image_id) AS images, count(*) AS rows FROM imgsearch.embeddings "
    "WHERE model_id = :model AND region > 0"
)
