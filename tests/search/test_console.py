"""The SQL console's search functions (imgsearch.search_vector, search_similar, ...): the same
hits as the library, its strategy (its very statements: imgsearch.search.console), and bad
arguments named."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from imgsearch import Catalog
from tests.search.conftest import Fixture, K, N, queries


def test_sql_functions_match_the_library(catalog: Catalog, data: Fixture) -> None:
    q = queries(data, 7, 1)[0]
    with catalog.engine.begin() as conn:
        rows = conn.execute(
            text(
                "SELECT image_id, product_id, distance FROM imgsearch.search_vector(CAST(:q AS vector), 7,"
                " category => 'c07', price_max => 75)"
            ),
            {"q": str(q.tolist())},
        ).all()
        similar = conn.execute(
            text("SELECT image_id FROM imgsearch.search_similar(:id, 3)"), {"id": int(data.ids[0])}
        ).all()
        tiny = conn.execute(
            text(
                "SELECT count(*) FROM imgsearch.search_vector(CAST(:q AS vector), 10, NULL, NULL, 70, 70.2)"
            ),
            {"q": str(q.tolist())},
        ).scalar_one()
    expected = catalog.search(vector=q, k=7, category="c07", price_max=75)
    assert [r.image_id for r in rows] == [h.image_id for h in expected]
    assert [r.product_id for r in rows] == [h.product_id for h in expected]
    assert [r.image_id for r in similar] == [
        h.image_id for h in catalog.search(similar_to=int(data.ids[0]), k=3)
    ]
    matching = sum(1 for r in data.rows if 70 <= r["price"] <= 70.2)
    assert tiny == min(10, matching)


@pytest.mark.parametrize("scale", [3e38, 7e4, 1e-30], ids=["float32 max", "past halfvec", "tiny"])
def test_sql_search_takes_a_query_of_any_scale(catalog: Catalog, data: Fixture, scale: float) -> None:
    """search_vector searches with its query at unit length: values past halfvec's range (65504)
    were an "out of range" error, and float32's largest gave NaN distances."""
    q = queries(data, 4, 1)[0].astype(np.float64)
    scaled = q / np.abs(q).max() * scale
    with catalog.engine.begin() as conn:
        rows = conn.execute(
            text("SELECT image_id, distance FROM imgsearch.search_vector(CAST(:q AS vector), 10)"),
            {"q": str(scaled.tolist())},
        ).all()
    assert [r.image_id for r in rows] == [h.image_id for h in catalog.search(vector=q, k=10)]
    assert all(np.isfinite(r.distance) for r in rows)


def test_sql_similar_product_matches_the_library(catalog: Catalog, data: Fixture) -> None:
    category = data.rows[10]["category"]
    for filters, sql in [
        ({}, ""),
        ({"category": category}, ", category => :c"),
        ({"price_max": 15}, ", price_max => 15"),
    ]:
        with catalog.engine.begin() as conn:
            rows = conn.execute(
                text(
                    f"SELECT image_id, product_id FROM imgsearch.search_similar_product('acme', 'p5', 10{sql})"
                ),
                {"c": category},
            ).all()
        hits = catalog.search(similar_to_product="p5", tenant="acme", k=10, **filters)
        assert [(r.image_id, r.product_id) for r in rows] == [(h.image_id, h.product_id) for h in hits]
        assert "p5" not in {r.product_id for r in rows} and rows
    evil = "p5'); DROP TABLE imgsearch.images; --"
    for sql, params, message in [
        ("SELECT * FROM imgsearch.search_similar_product(NULL, 'p5')", {}, "needs a tenant"),
        (
            "SELECT * FROM imgsearch.search_similar_product('globex', 'p5')",
            {},
            "tenant 'globex' has no product 'p5'",
        ),
        ("SELECT * FROM imgsearch.search_similar_product('acme', :p)", {"p": evil}, "has no product"),
        ("SELECT * FROM imgsearch.search_similar_product(:p, 'p5')", {"p": evil}, "has no product 'p5'"),
        ("SELECT * FROM imgsearch.search_similar_product('acme', 'p5', 0)", {}, "k must be from 1 to 1000"),
    ]:
        with pytest.raises(DBAPIError, match=message), catalog.engine.begin() as conn:
            conn.execute(text(sql), params)
    with catalog.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM imgsearch.images")).scalar_one() == N


def test_the_console_functions_are_written_from_the_librarys_statements() -> None:
    from imgsearch.search import console, plans

    written = console.files()
    assert set(written) == {"_search.sql", "_lexical.sql", "facets.sql", "search_hybrid.sql"}
    for name, body in written.items():
        assert (console.FOLDER / name).read_text() == body, "python -m imgsearch.search.console --write"
    assert console.main([]) == 0
    # the library's statements, compiled for the console's filters, are in them as they are
    for name, texts in [
        ("_search.sql", console.search_texts()),
        ("_lexical.sql", console.lexical_texts()),
        ("facets.sql", console.facets_texts()),
        ("search_hybrid.sql", console.hybrid_texts()),
    ]:
        for statement, sql in texts.items():
            assert f"$sql${sql}$sql$" in written[name], (name, statement)
            # the model's id, known when it runs, is format()'s
            assert "%1$s" in sql or statement in ("total", "bound"), (name, statement)
    assert "halfvec(%2$s)" in written["_search.sql"]
    # and the numbers are the plans'
    for number in (
        plans.EXACT_MAX_ROWS,
        plans.MAX_EF_SEARCH,
        plans.MIN_POOL,
        plans.MAX_POOL,
        plans.MAX_SCAN_TUPLES,
    ):
        assert str(number) in written["_search.sql"]


def test_a_console_filter_left_null_reads_no_condition() -> None:
    """A NULL filter's condition folds away when PL/pgSQL plans the statement for its values:
    each is "value IS NULL OR condition" (a NULL price bound included)."""
    from imgsearch.search import console

    exact = console.search_texts()["exact"]
    for column, n in [("tenant", 4), ("category", 5), ("price_units >=", 6), ("price_units <=", 7)]:
        assert f"(${n} IS NULL OR imgsearch.embeddings.{column}" in exact, column
    for body in console.files().values():
        assert "units_min bigint := CASE WHEN price_min IS NOT NULL" in body


@pytest.mark.parametrize(
    ("name", "filters", "k"),
    [
        ("200 rows: exact", {"category": "c00"}, K),
        ("none: one pass", {}, K),
        ("2,000 rows around the query: one pass", {"price_max": 100}, K),
        ("1,600 rows away from it: iterative scan", {"price_min": 250, "price_max": 330}, K),
        ("k past the one pass: iterative scan", {}, 600),
        ("k past the one pass, 2,000 rows: exact", {"price_max": 100}, 600),
        ("k past the one pass, a shop's 1,000 rows: exact", {"tenant": "globex"}, 600),
    ],
)
def test_sql_functions_take_the_librarys_strategy(
    catalog: Catalog, data: Fixture, name: str, filters: dict[str, Any], k: int
) -> None:
    from imgsearch import search as search_mod

    q = queries(data, 0, 1)[0]
    notices: list[str] = []
    with catalog.engine.begin() as conn:
        library = search_mod.search_vector(conn, catalog.active_model, q, search_mod.Filters(**filters), k)
    with catalog.engine.begin() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.add_notice_handler(lambda diagnostic: notices.append(diagnostic.message_primary or ""))
        conn.execute(text("SET LOCAL client_min_messages = debug1"))
        rows = conn.execute(
            text(
                "SELECT image_id FROM imgsearch.search_vector(CAST(:q AS vector), :k, tenant => :tenant,"
                " category => :category, price_min => :price_min, price_max => :price_max)"
            ),
            {
                "q": str(q.tolist()), "k": k, "tenant": None, "category": None, "price_min": None,
                "price_max": None, **filters,
            },
        ).all()  # fmt: skip
    taken = [n.split(": ", 1)[1] for n in notices if n.startswith("imgsearch._search: ")]
    assert [t.split(" ")[0] for t in taken] == [library.plan.strategy], (name, notices)
    if library.plan.strategy == "hnsw_iterative":  # the same pool, at the same ef_search
        assert taken == [f"hnsw_iterative (pool {library.plan.pool}, ef_search {library.plan.ef_search})"]
    with catalog.engine.begin() as conn:
        exact = search_mod.search_vector(
            conn, catalog.active_model, q, search_mod.Filters(**filters), k, exact_max_rows=10**6
        )
    assert (
        [r.image_id for r in rows] == [h.image_id for h in library.hits] == [h.image_id for h in exact.hits]
    )


def test_sql_functions_report_bad_arguments(catalog: Catalog) -> None:
    for sql, message in [
        (
            "SELECT * FROM imgsearch.search_vector(CAST('[1,2,3]' AS vector))",
            "query vector has 3 dimensions, expected 32",
        ),
        (
            "SELECT * FROM imgsearch.search_vector(CAST(array_fill(0.1, ARRAY[32]) AS vector), 0)",
            "k must be from 1 to 1000",
        ),
        # an int still, but twice it is not: named as out of range, not an integer overflow
        (
            "SELECT * FROM imgsearch.search_vector(CAST(array_fill(0.1, ARRAY[32]) AS vector), 2000000000)",
            "k must be from 1 to 1000, got 2000000000",
        ),
        ("SELECT * FROM imgsearch.search_similar(1, 2147483647)", "k must be from 1 to 1000, got 2147483647"),
        (
            "SELECT * FROM imgsearch.search_similar_product('acme', 'p1', 1073741824)",
            "k must be from 1 to 1000, got 1073741824",
        ),
        ("SELECT * FROM imgsearch.search_similar(987654321)", "no embedded image with id 987654321"),
        (
            "SELECT * FROM imgsearch.search_vector(CAST(array_fill(0, ARRAY[32]) AS vector))",
            "query vector is all zeros",
        ),
        (
            "SELECT * FROM imgsearch.search_vector(CAST(array_fill(0.1, ARRAY[32]) AS vector), 5, NULL, NULL, 'NaN')",
            "price_min must be finite, got NaN",
        ),
        (
            "SELECT * FROM imgsearch.search_vector(CAST(array_fill(0.1, ARRAY[32]) AS vector), 5, NULL, NULL,"
            " NULL, '-Infinity')",
            "price_max must be finite, got -Infinity",
        ),
        (
            "SELECT * FROM imgsearch.search_vector(CAST(array_fill(0.1, ARRAY[32]) AS vector), 5, NULL, NULL, 10, 5)",
            "price_min 10 is above price_max 5",
        ),
        (
            "SELECT * FROM imgsearch.search_similar(1, 5, NULL, NULL, 10, 5)",
            "price_min 10 is above price_max 5",
        ),
    ]:
        with pytest.raises(DBAPIError, match=message), catalog.engine.begin() as conn:
            conn.execute(text(sql))
