"""A small shop whose search order is known: products p00, p01, ... at growing cosine distances
from the embedding of "red shoes" (by the tiny SigLIP), one image each, in tenant acme, and a
few products of globex; a new database per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgsearch import Catalog
from imgsearch.settings import Settings

QUERY = "Red Shoes"  # normalised: "red shoes"
PRODUCTS = 40


def graded(q: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` unit vectors whose cosine to ``q`` falls from 0.99 to 0.2, in order."""
    rng = np.random.default_rng(seed)
    q = q / np.linalg.norm(q)
    out = []
    for cos in np.linspace(0.99, 0.2, n):
        r = rng.standard_normal(len(q))
        r -= r.dot(q) * q
        r /= np.linalg.norm(r)
        out.append(cos * q + np.sqrt(1 - cos**2) * r)
    return np.array(out, dtype=np.float32)


def open_shop(url: str, model: str, **settings: Any) -> Catalog:
    return Catalog.open(url, model=model, settings=Settings(**settings))


@pytest.fixture(scope="module")
def shop_url(server_url: str, template_db: str, tiny_siglip: Path) -> str:
    from tests.conftest import new_database

    url = new_database(server_url, template_db)
    with Catalog.open(url, model=str(tiny_siglip)) as catalog:
        q = np.asarray(catalog.embedder.embed_text(QUERY), dtype=np.float32).reshape(-1)
        rows: list[dict[str, Any]] = []
        for i, vector in enumerate(graded(q, PRODUCTS, seed=1)):
            rows.append(
                {"tenant": "acme", "product_id": f"p{i:02d}", "title": f"Shoe {i}", "category": "footwear",
                 "price": 10 + i, "embedding": vector}
            )  # fmt: skip
        for i, vector in enumerate(graded(q, 5, seed=2)):
            rows.append({"tenant": "globex", "product_id": f"g{i}", "category": "footwear", "embedding": vector})
        catalog.add_many(rows)
    return url


@pytest.fixture
def shop(shop_url: str, tiny_siglip: Path) -> Iterator[Catalog]:
    with open_shop(shop_url, str(tiny_siglip)) as catalog:
        yield catalog


def query_vector(catalog: Catalog) -> np.ndarray:
    return np.asarray(catalog.embedder.embed_text(QUERY), dtype=np.float32).reshape(-1)
