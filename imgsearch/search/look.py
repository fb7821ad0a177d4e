"""Shop the look: a photo's objects, each searched with its own crop.

The photo is split by the catalog's region rule (:mod:`imgsearch.work.region_rules`): its
detector's objects, or, with a grid rule or none, the photo's quarters and its centre (a grid of
2). Each object is an image query of its box (``box=``, the crop embedded); where the detector's
label names one of the shop's categories, that category filters its hits as well.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from PIL import Image
from sqlalchemy import func, select

from imgsearch.access import tenancy
from imgsearch.db.models import Product
from imgsearch.embed.regions import Box, grid_boxes
from imgsearch.errors import InvalidQuery
from imgsearch.records import Look
from imgsearch.search import queries, service
from imgsearch.search.filters import Filters
from imgsearch.work import region_rules
from imgsearch.work.regions import detector_for

MAX_OBJECTS = 10
LOOK_GRID = 2  # without a detector: the photo's four quarters and its centre


def objects(
    searcher: service.Searcher, picture: Image.Image, limit: int
) -> list[tuple[Box, str | None, float | None]]:
    """The objects of the photo (decoded, upright) by the catalog's rule: (box, label, score),
    best first."""
    context = searcher.context
    with context.engine.begin() as conn:
        rule = region_rules.read(conn).get(region_rules.CATALOG)
    if rule is not None and rule.source == "detector":
        detector = detector_for(rule, context.image_embedder.device)
        assert detector is not None
        found = detector.detect(picture, replace(rule, max_regions=limit))
        return [(f.box, f.label, f.score) for f in found]
    width, height = picture.size
    return [(box, None, None) for box in grid_boxes(width, height, LOOK_GRID)[:limit]]


def _categories(searcher: service.Searcher, tenant: str | None) -> dict[str, str]:
    """The shop's categories by their lower-case name."""
    with searcher.context.engine.begin() as conn:
        shop = [] if tenant is None else [Product.tenant == tenancy.scope(conn, tenant)]
        names = conn.execute(select(func.distinct(Product.category)).where(Product.category.is_not(None), *shop))
        return {str(name).lower(): str(name) for name in names.scalars()}


def search_look(
    searcher: service.Searcher, image: Any, filters: Filters, k: int, limit: int = MAX_OBJECTS, **options: Any
) -> list[Look]:
    """Each object of the photo ``image`` with the hits of its crop (``filters`` and ``options``
    as :func:`service.search` takes them; a detector's label that names a category of the shop,
    and no category asked for, filters by that category)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_OBJECTS:
        raise InvalidQuery(f"objects must be a whole number from 1 to {MAX_OBJECTS}, got {limit!r}")
    if image is None:
        raise InvalidQuery("shop the look needs an image")
    filters.check()
    data = queries.image_bytes(searcher.context, image)
    embedder = searcher.context.image_embedder
    picture = embedder.decode(data)  # once: each object's crop is cut from it, all embedded at once
    found = objects(searcher, picture, limit)
    if not found:
        return []
    crops = embedder.embed_pictures([picture.crop(box) for box, _, _ in found])
    named = _categories(searcher, filters.tenant_name()) if any(label for _, label, _ in found) else {}
    looks = []
    for (box, label, score), vector in zip(found, crops, strict=True):
        own = filters
        category = named.get(label.lower()) if label else None
        if category is not None and filters.category is None:
            own = replace(filters, category=category)
        asked = service.Asked(queries.Query(image=data, box=box, embedded=vector), **options)
        hits = service.search(searcher, own, asked, k, 0, False, None, None, None)
        looks.append(Look(list(box), label, score, list(hits)))
    return looks
