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
    distance: float
    score: float
    probability: float | None = None


@dataclass(frozen=True)
class ModelInfo:
    """An embedding model of the catalog. ``id`` 0: not registered yet (a new catalog registers
    its model at the first embedding); ``external``: its vectors come from elsewhere
    (``imgsearch model add``), imgsearch never loads it."""

    id: int
    name: str
    dim: int
    active: bool
    external: bool = False

    @property
    def registered(self) -> bool:
        return self.id != UNREGISTERED


UNREGISTERED = 0  # the id of a model not registered yet (model ids start at 1): matches no row
