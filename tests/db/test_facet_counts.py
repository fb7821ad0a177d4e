"""What facet counts move by (imgsearch._facet_counts_moved, migrations 0052 and 0055): the same
counts as expanding every product's values one by one (imgsearch._facet_values) and summing them,
once for its shop (category NULL) and once for its category."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb
from sqlalchemy import make_url

from tests.conftest import new_database

# each product's values, expanded one by one: in its shop's counts, and in its category's
EXPANDED = """
WITH m AS (
    SELECT * FROM unnest(%(tenants)s::text[], %(models)s::smallint[], %(categories)s::text[], %(brands)s::text[],
                         %(prices)s::numeric[], %(attributes)s::jsonb[], %(ns)s::integer[])
        AS m(tenant, model_id, category, brand, price, attributes, n)
    WHERE m.tenant IS NOT NULL
), expanded AS (
    SELECT m.tenant, m.model_id, NULL AS category, f.facet, f.key, f.value, m.n
    FROM m CROSS JOIN LATERAL imgsearch._facet_values(m.category, m.brand, m.price, m.attributes) f
    UNION ALL
    SELECT m.tenant, m.model_id, m.category, f.facet, f.key, f.value, m.n
    FROM m CROSS JOIN LATERAL imgsearch._facet_values(m.category, m.brand, m.price, m.attributes) f
    WHERE m.category IS NOT NULL
)
SELECT tenant, model_id, category, facet, key, value, sum(n) FROM expanded
GROUP BY 1, 2, 3, 4, 5, 6
HAVING sum(n) <> 0
"""
GROUPED = """
SELECT * FROM imgsearch._facet_counts_moved(
    %(tenants)s::text[], %(models)s::smallint[], %(categories)s::text[], %(brands)s::text[],
    %(prices)s::numeric[], %(attributes)s::jsonb[], %(ns)s::integer[])
"""

names = st.sampled_from(["red", "blue", "x y", "ü"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from([0.5, 1e20, -2.25]) | names,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(names, inner, max_size=2),
    max_leaves=4,
)
prices = st.decimals(min_value=0, max_value=Decimal("99999.9999"), places=4, allow_nan=False)
moves = st.lists(
    st.tuples(
        st.sampled_from(["acme", "bolt", None]),
        st.sampled_from([1, 2]),
        st.none() | names,
        st.none() | names,
        st.none() | prices | st.sampled_from([Decimal("0.0001"), Decimal("9.9999"), Decimal("10"), Decimal("0")]),
        st.none() | st.dictionaries(names, json_values, max_size=3) | st.lists(names, max_size=2),
        st.sampled_from([1, -1, 2]),
    ),
    max_size=25,
)


@pytest.fixture(scope="module")
def conn(server_url: str, template_db: str) -> Iterator[psycopg.Connection[Any]]:
    url = make_url(new_database(server_url, template_db))
    with psycopg.connect(host=url.query["host"], user="postgres", dbname=url.database, autocommit=True) as conn:
        yield conn


def counts(conn: psycopg.Connection[Any], statement: str, rows: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], int]:
    """(tenant, model, category, facet, key, value): what its count moves by."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * 7
    params = dict(zip(("tenants", "models", "categories", "brands", "prices", "attributes", "ns"), columns, strict=True))
    params = {name: list(values) for name, values in params.items()}
    params["attributes"] = [None if a is None else Jsonb(a) for a in params["attributes"]]
    rows = conn.execute(statement, params).fetchall()
    moved = {tuple(row[:6]): int(row[6]) for row in rows}
    assert len(moved) == len(rows)  # one row a count
    assert all(moved.values())  # a count moved by nothing isn't written
    return moved


@settings(max_examples=150, deadline=None)
@given(moves)
def test_grouped_counts_are_the_counts_of_each_product_expanded(
    conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]
) -> None:
    assert counts(conn, GROUPED, rows) == counts(conn, EXPANDED, rows)


def test_a_price_bucket_of_each_width_from_the_whole_units(conn: psycopg.Connection[Any]) -> None:
    """Prices of one whole unit share their buckets; a product counted on and off again moves nothing."""
    rows = [
        ("acme", 1, None, None, Decimal("12.9999"), None, 1),
        ("acme", 1, None, None, Decimal("12.0001"), None, 1),
        ("acme", 1, "shoes", None, Decimal("19.5"), {"colour": "red"}, 1),
        ("acme", 1, "shoes", None, Decimal("19.5"), {"colour": "red"}, -1),
    ]
    moved = counts(conn, GROUPED, rows)
    assert moved == counts(conn, EXPANDED, rows)
    assert moved[("acme", 1, None, "price", "0", "12")] == 2
    assert moved[("acme", 1, None, "price", "1", "1")] == 2
    assert moved[("acme", 1, None, "total", "", "")] == 2
    assert not any(value in ("shoes", "red", "19") or category for _, _, category, *_, value in moved)


def test_a_product_counts_in_its_shop_and_in_its_category(conn: psycopg.Connection[Any]) -> None:
    rows = [
        ("acme", 1, "shoes", "nike", Decimal("19.5"), {"colour": "red"}, 1),
        ("acme", 1, "shoes", None, Decimal("7"), None, 1),
        ("acme", 1, "hats", "nike", None, {"colour": "red"}, 1),
        ("acme", 1, None, "nike", None, None, 1),
    ]
    moved = counts(conn, GROUPED, rows)
    assert moved == counts(conn, EXPANDED, rows)
    assert {c: moved[("acme", 1, c, "total", "", "")] for c in (None, "shoes", "hats")} == {
        None: 4, "shoes": 2, "hats": 1,
    }
    assert moved[("acme", 1, None, "brand", "", "nike")] == 3
    assert moved[("acme", 1, "shoes", "brand", "", "nike")] == 1
    assert moved[("acme", 1, "shoes", "category", "", "shoes")] == 2
    assert ("acme", 1, "shoes", "category", "", "hats") not in moved
    assert moved[("acme", 1, "hats", "attribute", "colour", "red")] == 1
    assert moved[("acme", 1, "shoes", "price", "0", "7")] == 1
