"""The SQL console's far filters read the binary codes as the library's do (migration 0044):
``imgsearch._search`` takes the codes' part where the model's codes passed their check, with the
library's hits, and keeps its exact scans where they didn't."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.db import binary_codes
from imgsearch.search.plans import Plan

DIM = 768
CATEGORIES, PER_CATEGORY = 7, 3100  # the console's bound, 15% of 21,700 rows: 3,255


@pytest.fixture
def shop(database_url: str) -> Iterator[tuple[Catalog, np.ndarray, np.ndarray]]:
    """Seven categories of 3,100 rows, each a cluster in a few strong directions turned off the
    axes (as image embeddings are), bulk imported (which checks the codes)."""
    rng = np.random.default_rng(8)
    basis = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0]
    scales = np.arange(1, DIM + 1) ** -1.0
    centres = rng.standard_normal((CATEGORIES, DIM)) * scales
    labels = np.repeat(np.arange(CATEGORIES), PER_CATEGORY)
    vectors = (centres[labels] + rng.standard_normal((len(labels), DIM)) * scales * 0.35) @ basis.T
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    rows = [
        {"embedding": v, "tenant": "acme", "product_id": f"p{i}", "category": f"c{c}", "price": 10 + i % 90}
        for i, (v, c) in enumerate(zip(vectors, labels, strict=True))
    ]
    with Catalog.open(database_url) as catalog:
        assert catalog.import_vectors(rows, progress=False) == len(rows)
        with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE imgsearch.embeddings"))
        yield catalog, vectors, labels


def console(catalog: Catalog, q: np.ndarray, category: str, **filters: Any) -> tuple[list[int], list[str]]:
    """The console's hits and the strategy its debug line names."""
    notices: list[str] = []
    with catalog.engine.begin() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.add_notice_handler(lambda diagnostic: notices.append(diagnostic.message_primary or ""))
        conn.execute(text("SET LOCAL client_min_messages = debug1"))
        rows = conn.execute(
            text(
                "SELECT image_id FROM imgsearch.search_vector(CAST(:q AS vector), 10, tenant => :tenant,"
                " category => :category, price_min => :price_min)"
            ),
            {"q": str(q.tolist()), "category": category, "tenant": None, "price_min": None, **filters},
        ).scalars()
        hits = list(rows)
    return hits, [n.split(": ", 1)[1] for n in notices if n.startswith("imgsearch._search: ")]


def far_category(vectors: np.ndarray, labels: np.ndarray, q: np.ndarray) -> str:
    return f"c{int(np.argmin([vectors[labels == c].mean(axis=0) @ q for c in range(CATEGORIES)]))}"


def test_a_far_category_reads_the_codes_with_the_librarys_hits(
    shop: tuple[Catalog, np.ndarray, np.ndarray],
) -> None:
    catalog, vectors, labels = shop
    with catalog.engine.connect() as conn:
        assert binary_codes.usable(conn, catalog.active_model.id)  # the import checked them
    for source in (5, 7000, 15000):
        q = vectors[source]
        far = far_category(vectors, labels, q)
        plans: list[Plan] = []
        catalog.on_search_plan = plans.append
        library = [h.image_id for h in catalog.search(vector=q, k=10, category=far)]
        shop_library = [
            h.image_id for h in catalog.search(vector=q, k=10, category=far, tenant="acme", price_min=11)
        ]
        catalog.on_search_plan = None
        assert [p.strategy for p in plans] == ["codes", "codes"]
        hits, taken = console(catalog, q, far)
        assert taken == [f"codes ({PER_CATEGORY} rows match)"] and hits == library
        # price_min 11 keeps 3,065 of the 3,100 rows: still past binary_codes.MIN_ROWS
        hits, taken = console(catalog, q, far, tenant="acme", price_min=11)
        assert [t.split(" ")[0] for t in taken] == ["codes"] and hits == shop_library


def test_codes_below_their_check_keep_the_consoles_exact_scan(
    shop: tuple[Catalog, np.ndarray, np.ndarray],
) -> None:
    catalog, vectors, labels = shop
    q = vectors[5]
    far = far_category(vectors, labels, q)
    with_codes, _ = console(catalog, q, far)
    with catalog.engine.begin() as conn:
        conn.execute(text("UPDATE imgsearch.binary_code_checks SET recall = 0.97"))
        assert (
            conn.execute(
                text("SELECT imgsearch._binary_codes_on(CAST(:m AS smallint))"),
                {"m": catalog.active_model.id},
            ).scalar_one()
            is False
        )
    hits, taken = console(catalog, q, far)
    assert taken == [f"exact ({PER_CATEGORY} rows match)"] and hits == with_codes
    with catalog.engine.begin() as conn:  # the function's threshold is the library's
        conn.execute(
            text("UPDATE imgsearch.binary_code_checks SET recall = :r"), {"r": binary_codes.MIN_RECALL}
        )
        conn.execute(text("SET LOCAL ROLE imgsearch_console"))  # any role may ask
        assert (
            conn.execute(
                text("SELECT imgsearch._binary_codes_on(CAST(:m AS smallint))"),
                {"m": catalog.active_model.id},
            ).scalar_one()
            is True
        )
