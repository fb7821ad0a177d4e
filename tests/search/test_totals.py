"""Totals that cost about a search: counted up to a bound and then reported as a lower bound
(``total=N``, the HTTP API's default of 10,000), exact on request, and planned well right after
a shop's first upload, when PostgreSQL's statistics still count empty tables."""

from __future__ import annotations

import statistics as stats
import time
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.errors import InvalidQuery
from imgsearch.search.facets import MAX_TRACK_TOTAL

CATEGORIES = ("shoes", "bags", "hats")


def _shop(catalog: Catalog, products: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((products, catalog.dim)).astype(np.float32)
    catalog.add_many(
        {"embedding": v, "tenant": "acme", "product_id": f"p{i}", "category": CATEGORIES[i % 3], "price": i % 100}
        for i, v in enumerate(vectors)
    )
    return vectors


@pytest.fixture
def catalog(database_url: str) -> Any:
    with Catalog.open(database_url) as opened:
        opened.add_model("shop-vectors", 32, activate=True)
    with Catalog.open(database_url) as opened:
        yield opened


def test_a_bounded_total_counts_up_to_its_bound(catalog: Catalog) -> None:
    _shop(catalog, 300)
    query: dict[str, Any] = {"vector": np.ones(catalog.dim), "tenant": "acme", "category": "shoes", "k": 3}
    exact = catalog.search(**query, total=True)
    assert (exact.total, exact.total_relation) == (100, "eq")
    bounded = catalog.search(**query, total=40)
    assert (bounded.total, bounded.total_relation) == (40, "gte")
    assert [h.image_id for h in bounded] == [h.image_id for h in exact]  # the hits don't change
    at_bound = catalog.search(**query, total=100)  # exactly as many as the bound: exact
    assert (at_bound.total, at_bound.total_relation) == (100, "eq")
    roomy = catalog.search(**query, total=10_000)
    assert (roomy.total, roomy.total_relation) == (100, "eq")
    none = catalog.search(**query, total=False)
    assert (none.total, none.total_relation) == (None, None)
    with_facets = catalog.search(**query, total=40, facets=True)  # facets read everything: exact
    assert (with_facets.total, with_facets.total_relation, with_facets.facets.category) == (100, "eq", {"shoes": 100})
    lexical = catalog.search(text="nothing", tenant="acme", mode="lexical", total=5)
    assert (lexical.total, lexical.total_relation) == (0, "eq")


@pytest.mark.parametrize("bad", [0, -1, MAX_TRACK_TOTAL + 1, 2.5, "10", None, float("nan")])
def test_a_bad_bound_is_named(catalog: Catalog, bad: Any) -> None:
    with pytest.raises(InvalidQuery, match=r"total must be true, false or a whole number from 1 to 1,000,000"):
        catalog.search(vector=np.ones(catalog.dim), total=bad)


def test_a_total_right_after_the_first_upload_costs_about_a_search(catalog: Catalog) -> None:
    """The case of ../shared/FINDINGS.md: 3,000 products, then at once a category's total (347 ms
    against 1.8 ms for its search, from a plan made for statistics of empty tables)."""
    with catalog.engine.connect() as conn:
        before = conn.execute(
            text("SELECT last_analyze FROM pg_stat_user_tables WHERE relid = 'imgsearch.embeddings'::regclass")
        ).scalar()
    assert before is None  # a fresh catalog: never analysed
    vectors = _shop(catalog, 3000)
    with catalog.engine.connect() as conn:
        counted = conn.execute(
            text("SELECT reltuples FROM pg_class WHERE oid = 'imgsearch.embeddings'::regclass")
        ).scalar()
    assert counted == 3000  # the upload left statistics that count its rows

    def median_ms(total: bool) -> float:
        times = []
        for i in range(7):
            started = time.perf_counter()
            catalog.search(vector=vectors[i], tenant="acme", category="shoes", k=10, total=total)
            times.append(time.perf_counter() - started)
        return stats.median(times) * 1000

    median_ms(True)  # the statements' texts made once
    with_total, without = median_ms(True), median_ms(False)
    assert with_total <= 3 * without, (with_total, without)
    result = catalog.search(vector=vectors[0], tenant="acme", category="shoes", total=True)
    assert (result.total, result.total_relation) == (1000, "eq")
