"""The search package's shared catalog: 10,000 rows of clustered 32-d vectors, two photos a
product, in two tenants, with categories, prices and attributes; built once for the package."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, create_engine, event, text

from imgsearch import Catalog
from imgsearch.settings import Settings
from tests.helpers import clustered

N, DIM, CLUSTERS, K = 10_000, 32, 50, 10


@dataclass
class Fixture:
    url: str
    model: str
    vectors: np.ndarray
    labels: np.ndarray
    rows: list[dict[str, Any]]
    ids: np.ndarray


@pytest.fixture(scope="package")
def data(server_url: str, template_db: str, tiny_siglip: Path) -> Fixture:
    from tests.conftest import new_database

    url = new_database(server_url, template_db)
    vectors, labels = clustered(N, DIM, CLUSTERS, seed=3)
    rng = np.random.default_rng(4)
    # products of two photos each: the second a near copy of the first (another angle); category,
    # price, tenant and attributes belong to the product
    odd = np.arange(1, N, 2)
    vectors[odd] = vectors[odd - 1] + rng.standard_normal((len(odd), DIM)).astype(np.float32) * 0.3 / np.sqrt(
        DIM
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels[odd] = labels[odd - 1]
    rows: list[dict[str, Any]] = []
    for i, (vec, label) in enumerate(zip(vectors, labels, strict=True)):
        if i % 2:
            rows.append({**rows[-1], "embedding": vec})
            continue
        rows.append(
            {
                "embedding": vec,
                "tenant": "globex" if (i // 2) % 10 == 0 else "acme",
                "product_id": f"p{i // 2}",
                "category": f"c{label:02d}",
                "price": round(10 * label + float(rng.uniform(0, 10)), 2),
                "attributes": {"bucket": int(rng.integers(0, 1000))},
            }
        )
    rows[4321] = {**rows[4321], "product_id": "solo", "attributes": {"bucket": -1, "tag": "unique"}}
    with Catalog.open(url, model=str(tiny_siglip)) as catalog:
        ids = np.array(catalog.add_many(rows))
        with catalog.engine.begin() as conn:
            conn.execute(text("ANALYZE imgsearch.embeddings"))
    return Fixture(url, str(tiny_siglip), vectors, labels, rows, ids)


@pytest.fixture(scope="module")
def catalog(data: Fixture) -> Iterator[Catalog]:
    with Catalog.open(data.url) as cat:
        yield cat


def queries(data: Fixture, cluster: int, count: int = 8) -> np.ndarray:
    rng = np.random.default_rng(cluster)
    centre = data.vectors[data.labels == cluster].mean(axis=0)
    qs = centre + rng.standard_normal((count, DIM)) * 0.3 / np.sqrt(DIM)
    return qs / np.linalg.norm(qs, axis=1, keepdims=True)


@contextmanager
def one_connection(url: str, settings: Settings) -> Iterator[Catalog]:
    """A catalog whose searches and other statements all take the same pooled connection."""
    with Catalog.open(url, settings=settings) as opened:
        engine = create_engine(opened.engine.url, pool_size=1, max_overflow=0)
        try:
            yield Catalog(engine, opened.active_model, settings)
        finally:
            engine.dispose()


def recorded_statements(engine: Engine) -> list[str]:
    """Every SQL statement ``engine`` sends from now on, in order."""
    statements: list[str] = []
    event.listen(
        engine, "before_cursor_execute", lambda conn, cursor, statement, *args: statements.append(statement)
    )
    return statements


def stored_mean(data: Fixture, rows: list[int]) -> np.ndarray:
    """The unit mean of rows' embeddings as stored (halfvec), as a product query computes it."""
    stored = data.vectors[rows].astype(np.float16).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    mean = stored.mean(axis=0)
    return mean / np.linalg.norm(mean)
