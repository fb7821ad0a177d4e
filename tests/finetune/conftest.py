"""A shop of drawn products (:mod:`imgsearch.samples.dataset`) on the small SigLIP with random
weights (``untrained_small``): the model a fine-tune starts from."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from imgsearch import Catalog
from imgsearch.samples import dataset

PRODUCTS = 160


def drawn_rows(count: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    items = dataset.draw(count, seed=seed, size=64)
    return [{"tenant": "acme", **dataset.product_row(item, i, rng)} for i, item in enumerate(items)]


@pytest.fixture
def drawn_shop(server_url: str, template_db: str, untrained_small: Path) -> Iterator[Catalog]:
    """:data:`PRODUCTS` drawn products of tenant acme, embedded (ready) by the untrained model."""
    from tests.conftest import new_database

    url = new_database(server_url, template_db)
    with Catalog.open(url, model=str(untrained_small)) as catalog:
        rows = drawn_rows(PRODUCTS, seed=7)
        vectors = catalog.embedder.embed_images([r["image"] for r in rows])  # type: ignore[misc]
        catalog.add_many([{**row, "embedding": np.asarray(v)} for row, v in zip(rows, vectors, strict=True)])
        yield catalog
