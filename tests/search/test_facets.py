"""Facets and totals against counts made in Python from the rows written: more values than a
facet shows (the top 20 and their ties), missing values, attribute values that are not scalars,
products no search can return (nothing embedded) and another shop's products; each filter
(``where=`` on the search rows and on the images too), "more like this product", a text's match
set and an empty one; the library's counts and the SQL console's ``imgsearch.facets``
agree with the reference — against the real PostgreSQL + pgvector."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.db.models import Embedding, Image
from imgsearch.search.facets import PRICE_BUCKETS, TOP_KEYS, TOP_VALUES, Facets

Row = dict[str, Any]


def _products() -> list[Row]:
    rng = np.random.default_rng(11)
    rows: list[Row] = []
    for i in range(360):
        attributes: dict[str, Any] = {
            "colour": f"c{int(rng.integers(26)):02d}",  # 26 values: the facet keeps 20
            "size": int(rng.integers(36, 48)),  # numbers count by their text
            "organic": bool(rng.integers(2)),
            "tags": ["a", "b"],  # not a scalar: never a facet value
            "dims": {"w": 1},
        }
        for key in range(int(rng.integers(0, 24))):  # 23 rarer keys: the facets keep 20 of 26
            attributes[f"k{key:02d}"] = "x" if key % 2 else key
        price = None if i % 17 == 0 else Decimal(int(rng.integers(100, 98_000))) / 100
        if i % 50 == 1:
            price = Decimal(200)  # exactly on a bucket's edge
        rows.append(
            {
                "product_id": f"P{i:04d}",
                "title": "Red wool scarf" if i % 9 == 0 else f"Item {i}",
                "brand": None if i % 7 == 0 else f"b{int(rng.integers(30)):02d}",  # 30 brands
                "category": None if i % 13 == 0 else f"cat{int(rng.integers(24)):02d}",  # 24 categories
                "attributes": attributes,
                "price": price,
            }
        )
    return rows


PRODUCTS = _products()
UNEMBEDDED = {"P0003", "P0100", "P0250"}  # products written through SQL, no image: never counted


@pytest.fixture(scope="module")
def catalog(server_url: str, template_db: str, tiny_siglip: Path) -> Iterator[Catalog]:
    from tests.conftest import new_database

    url = new_database(server_url, template_db)
    rng = np.random.default_rng(5)
    with Catalog.open(url, model=str(tiny_siglip)) as catalog:
        embedded = [
            {**row, "tenant": "acme", "embedding": rng.standard_normal(catalog.dim)}
            for row in PRODUCTS
            if row["product_id"] not in UNEMBEDDED
        ]
        # a product with two photos counts once
        embedded.append({**embedded[0], "embedding": rng.standard_normal(catalog.dim)})
        embedded.append(
            {**PRODUCTS[5], "tenant": "globex", "embedding": rng.standard_normal(catalog.dim)}
        )  # another shop's
        catalog.add_many(embedded)
        with catalog.engine.begin() as conn:
            for row in PRODUCTS:
                if row["product_id"] in UNEMBEDDED:
                    conn.execute(
                        text(
                            "INSERT INTO imgsearch.products (tenant, product_id, title, brand, category, "
                            "attributes, price) VALUES ('acme', :product_id, :title, :brand, :category, "
                            "CAST(:attributes AS jsonb), :price)"
                        ),
                        {**row, "attributes": json.dumps(row["attributes"])},
                    )
        yield catalog


def _top(counts: Counter[str], n: int = TOP_VALUES) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]


def reference(
    rows: list[Row],
) -> tuple[int, list[Any], list[Any], list[Any], list[tuple[Decimal, Decimal, int]]]:
    """What the facets of ``rows`` must be: the module's rules, made in Python."""
    categories = Counter(r["category"] for r in rows if r["category"] is not None)
    brands = Counter(r["brand"] for r in rows if r["brand"] is not None)
    pairs: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        for key, value in r["attributes"].items():
            if isinstance(value, bool):
                pairs[key]["true" if value else "false"] += 1
            elif isinstance(value, str | int | float):
                pairs[key][str(value)] += 1
    keys = sorted(pairs, key=lambda k: (-sum(pairs[k].values()), k))[:TOP_KEYS]
    attributes = [(key, _top(pairs[key])) for key in keys]
    prices = [r["price"] for r in rows if r["price"] is not None]
    buckets: list[tuple[Decimal, Decimal, int]] = []
    if prices:
        lo, hi = min(prices), max(prices)
        if hi > lo:
            raw = (hi - lo) / PRICE_BUCKETS
            mag = Decimal(10) ** int(max(raw, Decimal("0.0001")).log10().to_integral_value(ROUND_FLOOR))
            width = mag * next((m for m in (1, 2, 5) if raw / mag <= m), 10)
        else:
            width = max(hi, Decimal(1))
        slots = Counter(p // width for p in prices)
        buckets = [(s * width, (s + 1) * width, n) for s, n in sorted(slots.items())]
    return len(rows), _top(categories), _top(brands), attributes, buckets


def counted(facets: Facets, total: int) -> tuple[int, list[Any], list[Any], list[Any], list[Any]]:
    return (
        total,
        list(facets.category.items()),
        list(facets.brand.items()),
        [(key, list(values.items())) for key, values in facets.attributes.items()],
        [(b.low, b.high, b.count) for b in facets.price],
    )


def console(result: dict[str, Any]) -> tuple[int, list[Any], list[Any], list[Any], list[Any]]:
    """The console's jsonb as :func:`reference` gives it, the attributes by key (a jsonb object
    keeps no order)."""
    return (
        result["total"],
        _top(Counter(result["category"])),
        _top(Counter(result["brand"])),
        {key: _top(Counter(values)) for key, values in result["attributes"].items()},
        [(Decimal(str(b["from"])), Decimal(str(b["to"])), b["count"]) for b in result["price"]],
    )


def searchable(keep: Callable[[Row], bool]) -> list[Row]:
    return [r for r in PRODUCTS if r["product_id"] not in UNEMBEDDED and keep(r)]


CASES: list[tuple[str, dict[str, Any], Callable[[Row], bool]]] = [
    ("the whole shop", {}, lambda r: True),
    ("a category", {"category": "cat03"}, lambda r: r["category"] == "cat03"),
    ("categories", {"category": ["cat01", "cat02"]}, lambda r: r["category"] in ("cat01", "cat02")),
    (
        "a price range",
        {"price_min": 150, "price_max": 700},
        lambda r: r["price"] is not None and 150 <= r["price"] <= 700,
    ),
    ("a brand", {"brand": "b04"}, lambda r: r["brand"] == "b04"),
    ("attributes", {"attributes": {"organic": True}}, lambda r: r["attributes"]["organic"] is True),
    (
        "where= on the search rows",
        {"where": Embedding.price < 500},
        lambda r: r["price"] is not None and r["price"] < 500,
    ),
    (
        "where= on the images",
        {"where": Image.id > 0, "category": "cat05"},
        lambda r: r["category"] == "cat05",
    ),
    ("nothing", {"category": "no-such-category"}, lambda r: False),
]


@pytest.mark.parametrize(("filters", "keep"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_facets_equal_the_counts_made_from_the_rows(
    catalog: Catalog, filters: dict[str, Any], keep: Callable[[Row], bool]
) -> None:
    result = catalog.search(vector=np.ones(catalog.dim), tenant="acme", facets=True, k=3, **filters)
    assert counted(result.facets, result.total) == reference(searchable(keep))
    total_only = catalog.search(vector=np.ones(catalog.dim), tenant="acme", total=True, k=3, **filters)
    assert total_only.total == result.total


def test_a_text_counts_the_products_its_words_match(catalog: Catalog) -> None:
    result = catalog.search(text="wool scarf", tenant="acme", mode="lexical", parse=False, facets=True)
    expected = reference(searchable(lambda r: r["title"] == "Red wool scarf"))
    assert expected[0] > 20 and counted(result.facets, result.total) == expected


def test_an_empty_match_set_has_a_zero_total_and_no_values(catalog: Catalog) -> None:
    result = catalog.search(vector=np.ones(catalog.dim), tenant="nobody", facets=True)
    assert (result.total, result.facets.category, result.facets.attributes, result.facets.price) == (
        0,
        {},
        {},
        [],
    )


@pytest.mark.parametrize(
    ("args", "keep"),
    [
        ({}, lambda r: True),
        ({"category": "cat03"}, lambda r: r["category"] == "cat03"),
        (
            {"price_min": 150, "price_max": 700},
            lambda r: r["price"] is not None and 150 <= r["price"] <= 700,
        ),
        ({"query": "wool scarf"}, lambda r: r["title"] == "Red wool scarf"),
        ({"category": "no-such-category"}, lambda r: False),
    ],
    ids=["the whole shop", "a category", "a price range", "a text", "nothing"],
)
def test_the_console_counts_as_the_reference(
    catalog: Catalog, args: dict[str, Any], keep: Callable[[Row], bool]
) -> None:
    names = ", ".join(f"{name} => :{name}" for name in args)
    with catalog.engine.begin() as conn:
        result = conn.execute(
            text(f"SELECT imgsearch.facets(tenant => 'acme'{', ' if names else ''}{names})"), args
        ).scalar_one()
    total, categories, brands, attributes, prices = reference(searchable(keep))
    assert console(result) == (total, categories, brands, dict(attributes), prices)
    assert result["total_relation"] == "eq"  # facets read the whole match set


def test_more_like_a_product_counts_every_other_product(catalog: Catalog) -> None:
    result = catalog.search(similar_to_product="P0010", tenant="acme", facets=True)
    assert counted(result.facets, result.total) == reference(searchable(lambda r: r["product_id"] != "P0010"))
