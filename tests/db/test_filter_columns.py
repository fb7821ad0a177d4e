"""Embeddings carry their product's category and price (migration 0004), the price also in units
(migration 0030): the copies follow every change of the product, can't be set apart from it, and
searches filter on them."""

from __future__ import annotations

import re
import warnings
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError, SAWarning

from imgsearch import Catalog
from imgsearch.db.models import Image, Product

DIM = 32


@pytest.fixture
def catalog(server_url: str, template_db: str, tiny_siglip: Path) -> Catalog:
    from tests.conftest import new_database

    url = new_database(server_url, template_db)
    return Catalog.open(url, model=str(tiny_siglip))


def vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def copies(catalog: Catalog) -> list[tuple[str, str | None, Decimal | None, str | None, Decimal | None]]:
    with catalog.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT p.product_id, e.category, e.price, p.category, p.price, e.price_units"
                " FROM imgsearch.embeddings e"
                " JOIN imgsearch.products p ON p.id = e.product_pk ORDER BY e.image_id"
            )
        ).all()
    # the price in units follows the price, always (generated from it)
    assert all(r.price_units == (None if r[4] is None else int(r[4] * 10000)) for r in rows)
    return [tuple(r)[:5] for r in rows]  # type: ignore[misc]


def test_new_embeddings_copy_their_product(catalog: Catalog) -> None:
    vs = vectors(4, 1)
    catalog.add_many(
        [
            {"embedding": vs[0], "tenant": "acme", "product_id": "a", "category": "shoes", "price": 10},
            {"embedding": vs[1], "tenant": "acme", "product_id": "a", "category": "shoes", "price": 10},
            {"embedding": vs[2], "tenant": "acme", "product_id": "b", "category": None, "price": None},
            {"embedding": vs[3], "tenant": "globex", "product_id": "a", "category": "hats", "price": 3.5},
        ]
    )
    rows = copies(catalog)
    assert len(rows) == 4
    assert all(r[1] == r[3] and r[2] == r[4] for r in rows)
    assert [r[1] for r in rows] == ["shoes", "shoes", None, "hats"]


def test_a_product_change_reaches_its_embeddings_and_searches(catalog: Catalog) -> None:
    vs = vectors(3, 2)
    catalog.add_many(
        [
            {"embedding": vs[0], "tenant": "acme", "product_id": "a", "category": "shoes", "price": 10},
            {"embedding": vs[1], "tenant": "acme", "product_id": "a", "category": "shoes", "price": 10},
            {"embedding": vs[2], "tenant": "acme", "product_id": "b", "category": "shoes", "price": 20},
        ]
    )
    assert len(catalog.search(vector=vs[0], category="shoes", tenant="acme")) == 3
    # the same product uploaded again with new values: add_many upserts the product
    catalog.add_many(
        [{"embedding": vs[0], "tenant": "acme", "product_id": "a", "category": "boots", "price": 12.5}]
    )
    rows = copies(catalog)
    assert all(r[1] == r[3] and r[2] == r[4] for r in rows)
    assert {r[0]: r[1] for r in rows} == {"a": "boots", "b": "shoes"}
    boots = catalog.search(vector=vs[0], category="boots", tenant="acme")
    assert {h.product_id for h in boots} == {"a"} and len(boots) >= 2
    assert all(h.category == "boots" and h.price == Decimal("12.5") for h in boots)
    assert {h.product_id for h in catalog.search(vector=vs[0], category="shoes", tenant="acme")} == {"b"}
    assert {h.product_id for h in catalog.search(vector=vs[0], price_min=12, price_max=13)} == {"a"}
    # a direct change by SQL works the same way
    with catalog.engine.begin() as conn:
        conn.execute(text("UPDATE imgsearch.products SET price = 99 WHERE product_id = 'b'"))
    assert {h.product_id for h in catalog.search(vector=vs[0], price_min=90)} == {"b"}


def test_copies_cannot_be_set_apart_from_the_product(catalog: Catalog) -> None:
    catalog.add_many(
        [
            {
                "embedding": vectors(1, 3)[0],
                "tenant": "acme",
                "product_id": "a",
                "category": "shoes",
                "price": 10,
            }
        ]
    )
    with catalog.engine.begin() as conn:
        conn.execute(text("UPDATE imgsearch.embeddings SET category = 'fake', price = 0"))
    assert copies(catalog)[0][1:3] == ("shoes", Decimal("10.0000"))
    # a row inserted with values of its own (the bulk import gives them, and no row trigger looks
    # its product up then, migration 0048) takes its product's where they differ
    for given in ("'fake', NULL", "NULL, 0", "'fake', 0"):
        with catalog.engine.begin() as conn:
            conn.execute(
                text(
                    "WITH gone AS (DELETE FROM imgsearch.embeddings RETURNING *)"
                    " INSERT INTO imgsearch.embeddings (model_id, image_id, product_pk, tenant, category, price,"
                    f" embedding) SELECT model_id, image_id, product_pk, tenant, {given}, embedding FROM gone"
                )
            )
        assert copies(catalog)[0][1:3] == ("shoes", Decimal("10.0000")), given
    assert [h.product_id for h in catalog.search(vector=vectors(1, 3)[0], category="shoes", price_min=9)] == ["a"]
    # the price in units is PostgreSQL's to write: a write names the column, and nothing changed
    with pytest.raises(ProgrammingError, match="price_units"), catalog.engine.begin() as conn:
        conn.execute(text("UPDATE imgsearch.embeddings SET price_units = 1"))
    assert copies(catalog)[0][1:3] == ("shoes", Decimal("10.0000"))


@pytest.mark.parametrize("on", ["library", "console"])
def test_price_bounds_select_exactly_the_prices_they_name(catalog: Catalog, on: str) -> None:
    """Searches, totals and facets filter the price in units: a bound with more than four
    decimals, one past numeric(14, 4)'s range, and a negative one select the rows the price
    itself would."""
    prices = ["0", "10", "10.0001", "10.0002", "99999.9999", "9999999999.9999"]
    vs = vectors(len(prices), 5)
    catalog.add_many(
        [
            {"embedding": v, "tenant": "acme", "product_id": f"p{i}", "category": "c", "price": Decimal(price)}
            for i, (v, price) in enumerate(zip(vs, prices, strict=True))
        ]
    )
    bounds = [
        ("10.00005", None),
        (None, "10.00015"),
        ("10.0001", "10.0001"),
        ("-5", "0"),
        ("1e30", None),
        (None, "1e30"),
        ("-1e30", "1e-30"),
        ("9999999999.99991", None),
        ("1e-30", "1e-29"),
    ]
    for low, high in bounds:
        want = {
            f"p{i}"
            for i, price in enumerate(prices)
            if (low is None or Decimal(price) >= Decimal(low)) and (high is None or Decimal(price) <= Decimal(high))
        }
        if on == "library":  # the hits over embeddings, the total over products
            hits = catalog.search(vector=vs[0], k=10, tenant="acme", price_min=low, price_max=high, total=True)
            got, total = {h.product_id for h in hits}, hits.total
        else:
            bounds = {"q": str(vs[0].tolist()), "low": low, "high": high}
            typed = "price_min => CAST(:low AS numeric), price_max => CAST(:high AS numeric)"
            with catalog.engine.connect() as conn:
                got = set(
                    conn.execute(
                        text(
                            "SELECT product_id FROM imgsearch.search_vector(CAST(:q AS vector), 10,"
                            f" tenant => 'acme', {typed})"
                        ),
                        bounds,
                    ).scalars()
                )
                total = conn.execute(
                    text(f"SELECT (imgsearch.facets(tenant => 'acme', {typed}) ->> 'total')::int"), bounds
                ).scalar_one()
        assert got == want and total == len(want), (low, high)


def test_where_over_products_and_images_joins_them(catalog: Catalog) -> None:
    vs = vectors(4, 4)
    ids = catalog.add_many(
        [
            {"embedding": v, "tenant": "acme", "product_id": f"p{i}", "category": "c", "price": i}
            for i, v in enumerate(vs)
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", SAWarning)  # a missing join would be a cartesian product
        by_image = catalog.search(vector=vs[0], where=Image.id.in_(ids[:2]), category="c")
        by_product = catalog.search(vector=vs[0], where=Product.product_id == "p3")
    assert sorted(h.image_id for h in by_image) == sorted(ids[:2])
    assert [h.product_id for h in by_product] == ["p3"]


def test_console_functions_filter_the_price_in_units(catalog: Catalog) -> None:
    """Migration 0030 rewrote each console function's price conditions: none compares the
    numeric price any more."""
    with catalog.engine.connect() as conn:
        sources = dict(
            conn.execute(
                text(
                    "SELECT proname, prosrc FROM pg_proc WHERE pronamespace = 'imgsearch'::regnamespace"
                    " AND proname IN ('_search', '_lexical', 'facets')"
                )
            ).all()
        )
    assert len(sources) == 3
    for name, source in sources.items():
        assert "price_units >= " in source and "price_units <= " in source, name
        assert "ceil(" in source and "floor(" in source, name  # the bounds rounded inwards
        assert not re.search(r"\.price [<>]=", source), name


@pytest.mark.parametrize("first", ["product change", "embedding"])
def test_an_embedding_written_beside_a_change_of_its_product_takes_the_new_values(catalog: Catalog, first: str) -> None:
    """A worker's row and a change of its product, each in flight while the other is written:
    whichever commits second, the row ends with the product's new category and price (the
    change can't see a row not yet committed, and the row read the product before the change
    committed; migration 0046)."""
    from tests.helpers import first_row_again, written_beside

    catalog.add_many([{"embedding": vectors(1, 6)[0], "tenant": "acme", "product_id": "a", "category": "shoes", "price": 10}])
    insert = first_row_again(catalog)
    change = (text("UPDATE imgsearch.products SET category = 'boots', price = 12.5 WHERE product_id = 'a'"), {})
    statements = {"product change": change, "embedding": insert}
    second = "embedding" if first == "product change" else "product change"
    written_beside(catalog.engine.url, statements[first], statements[second])  # waits, or has committed
    assert copies(catalog) == [("a", "boots", Decimal("12.5000"), "boots", Decimal("12.5000"))]
    hits = catalog.search(vector=vectors(1, 6)[0], tenant="acme", category="boots", price_min=12, price_max=13)
    assert [h.product_id for h in hits] == ["a"]
