"""Plain result types returned by the public API."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class ImageRecord:
    """One stored image with its product, as :meth:`Catalog.get` returns it."""

    image_id: int
    tenant: str
    product_id: str
    category: str | None
    price: Decimal | None
    currency: str | None
    attributes: dict[str, Any]
    state: str
    error: str | None
    attempts: int
    sha256: str | None
    width: int | None
    height: int | None
    format: str | None
    byte_size: int | None
    uri: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    has_embedding: bool
    phash: str | None = None  # the perceptual hash, 64 '0'/'1' (imgsearch.ingest.duplicates)
    duplicate_of: int | None = None  # the image of another product this upload copies (on_duplicate="link")
    # every product the image belongs to (a photo shared by variants), ``product_id`` first; the
    # product fields above are ``product_id``'s: the product that uploaded it first
    product_ids: list[str] = field(default_factory=list)
    title: str | None = None  # the product text of ``product_id`` (migration 0020)
    description: str | None = None
    brand: str | None = None


@dataclass(frozen=True)
class Hit:
    """One search result, nearest first.

    ``distance`` is cosine distance (0 = same direction, 2 = opposite); ``score`` is cosine
    similarity, ``1 - distance``. ``probability`` is set for text queries on SigLIP models: the
    model's calibrated match probability, ``sigmoid(exp(logit_scale) * score + logit_bias)``, the
    value to threshold for "is this relevant at all".
    """

    image_id: int
    product_id: str
    tenant: str
    category: str | None
    price: Decimal | None
    distance: float | None  # None: a lexical search's hit (no query vector)
    score: float | None
    probability: float | None = None
    title: str | None = None
    brand: str | None = None
    currency: str | None = None
    # which side of the search found it, and at what rank (1 = first): {"semantic": 3,
    # "lexical": 1}; a hybrid hit's ``relevance`` is its fused score (Reciprocal Rank Fusion)
    matched_by: dict[str, int] = field(default_factory=dict)
    relevance: float | None = None
    # the learned boost blended into its place (0: none; None: the search blended none), from 0
    # to 1: a hit rises at most the boost's lift of places (imgsearch.search.boosting)
    boost: float | None = None
    # the region that matched, [x0, y0, x1, y1] in the image's pixels; None: the whole image
    # (imgsearch.work.regions: an image is ranked by the closer of its whole row and its regions)
    region: list[int] | None = None


@dataclass(frozen=True)
class Look:
    """One object of a "shop the look" photo (:meth:`imgsearch.Catalog.search_look`): its box
    ``[x0, y0, x1, y1]`` in the photo's pixels, the detector's label and score (None for a grid's
    cell), and the hits of its crop."""

    box: list[int]
    label: str | None
    score: float | None
    hits: list[Hit]


class SearchResult(list[Hit]):
    """:meth:`Catalog.search`'s answer: the hits, as a list, with what the search also found.

    ``total``: how many products match (its whole match set, not just the page; None when the
    search didn't count); ``total_relation``: ``"eq"`` when ``total`` is exact, ``"gte"`` when the
    count stopped at its bound (at least that many; None without a total); ``facets``: counts by category, brand, attribute and price
    (:class:`imgsearch.search.facets.Facets`, with ``facets=True``); ``understood``: the filters
    read from the query's words and the text left (:class:`imgsearch.search.understanding.Understood`).
    ``mode``: how the text was searched (``semantic``, ``lexical`` or ``hybrid``); ``query_id``:
    the search's id, for the events on its hits (:meth:`Catalog.record_events`); ``notice``: what
    the search did otherwise than asked, in a sentence (a text matched lexically because the
    model embeds no text), else None.
    """

    def __init__(
        self, hits: Any = (), *, total: int | None = None, facets: Any = None, understood: Any = None,
        mode: str = "semantic", query_id: str | None = None, total_relation: str | None = None,
    ) -> None:
        super().__init__(hits)
        self.total, self.facets, self.understood, self.mode = total, facets, understood, mode
        self.total_relation = total_relation if total_relation is not None or total is None else "eq"
        self.query_id = query_id
        self.notice: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """An embedding model of the catalog. ``id`` 0: not registered yet (a new catalog registers
    its model at the first embedding); ``external``: its vectors come from elsewhere
    (``imgsearch model add``), imgsearch never loads it; ``serves_images``: image queries and "more
    like this" use it instead of the active model (``imgsearch model activate NAME --for image``)."""

    id: int
    name: str
    dim: int
    active: bool
    external: bool = False
    serves_images: bool = False

    @property
    def registered(self) -> bool:
        return self.id != UNREGISTERED


UNREGISTERED = 0  # the id of a model not registered yet (model ids start at 1): matches no row
