"""Changing products' fields: checked first, all or nothing, per tenant, and searches filter on
the new values at once (the embeddings' copies follow in the same transaction)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.errors import InvalidInput, NotFound
from imgsearch.ingest import updates
from tests.helpers import clustered, exact_similarities, locks_in_key_order, unit


@pytest.fixture
def catalog(database_url: str) -> Iterator[Catalog]:
    with Catalog.open(database_url) as cat:
        yield cat


def product(catalog: Catalog, product_id: str, tenant: str = "acme") -> dict[str, Any]:
    with catalog.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT category, price, currency, attributes, updated_at FROM imgsearch.products"
                " WHERE tenant = :t AND product_id = :p"
            ),
            {"t": tenant, "p": product_id},
        ).one()
    return row._asdict()


def embedding_versions(catalog: Catalog) -> list[tuple[int, str]]:
    """Each embedding row's id and transaction id: a new row version (and a new HNSW index entry)
    changes the second."""
    with catalog.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(text("SELECT image_id, xmin::text FROM imgsearch.embeddings ORDER BY 1"))
        ]


def test_update_sets_the_given_fields_and_keeps_the_rest(catalog: Catalog) -> None:
    catalog.add(
        embedding=unit(768, 1),
        tenant="acme",
        product_id="mug",
        category="kitchen",
        price=10,
        currency="EUR",
        attributes={"color": "red", "size": "L"},
    )
    assert catalog.update_product("mug", tenant="acme", price="8.50") is True
    assert product(catalog, "mug") | {"updated_at": None} == {
        "category": "kitchen",
        "price": Decimal("8.5"),
        "currency": "EUR",
        "attributes": {"color": "red", "size": "L"},
        "updated_at": None,
    }
    # attributes are replaced, not merged (re-uploading merges); None clears a field
    assert catalog.update_product("mug", tenant="acme", attributes={"color": "blue"}, currency=None)
    assert catalog.update_product("mug", tenant="acme", category=None, price=None)
    stored = product(catalog, "mug")
    assert (stored["category"], stored["price"], stored["currency"]) == (None, None, None)
    assert stored["attributes"] == {"color": "blue"}
    assert catalog.update_product("mug", tenant="acme", attributes=None)
    assert product(catalog, "mug")["attributes"] == {}


def test_searches_filter_on_the_new_values_at_once(catalog: Catalog) -> None:
    vec = unit(768, 1)
    mug = catalog.add(embedding=vec, tenant="acme", product_id="mug", category="kitchen", price=10)
    catalog.add(embedding=unit(768, 2), tenant="acme", product_id="cup", category="kitchen", price=10)
    catalog.update_products(
        [
            {"tenant": "acme", "product_id": "mug", "price": 55, "category": "gifts"},
            {"tenant": "acme", "product_id": "cup", "price": 12},
        ]
    )
    assert catalog.search(vector=vec, price_max=20, k=5)[0].product_id == "cup"
    hits = catalog.search(vector=vec, category="gifts", price_min=50, k=5)
    assert [(h.image_id, h.category, h.price) for h in hits] == [(mug, "gifts", Decimal("55"))]
    with catalog.engine.connect() as conn:  # the SQL console's search reads the same copies
        rows = conn.execute(
            text("SELECT image_id FROM imgsearch.search_vector(CAST(:q AS vector), 5, category => 'gifts')"),
            {"q": str(vec.tolist())},
        ).all()
    assert [r.image_id for r in rows] == [mug]


def test_values_already_stored_write_nothing(catalog: Catalog) -> None:
    catalog.add_many(
        {"embedding": unit(768, i), "tenant": "acme", "product_id": f"p{i}", "category": "c", "price": 5}
        for i in range(3)
    )
    before, stamp = embedding_versions(catalog), product(catalog, "p0")["updated_at"]
    feed = [{"tenant": "acme", "product_id": f"p{i}", "price": "5.00", "category": "c"} for i in range(3)]
    assert catalog.update_products(feed) == 0
    assert catalog.update_product("p0", tenant="acme", attributes={}) is False
    assert embedding_versions(catalog) == before  # no new row versions, no HNSW insertions
    assert product(catalog, "p0")["updated_at"] == stamp

    feed[1]["price"] = 6
    assert catalog.update_products(feed) == 1
    after = embedding_versions(catalog)
    assert [a == b for a, b in zip(before, after, strict=True)] == [True, False, True]
    # attributes live on products only: changing them leaves the embeddings alone
    assert catalog.update_product("p2", tenant="acme", attributes={"new": True}) is True
    assert embedding_versions(catalog) == after


def test_rows_of_one_product_merge_unless_they_disagree(catalog: Catalog) -> None:
    """A feed may list a product twice: fields given once or alike merge; values that differ
    are an error naming both rows, and nothing is written."""
    catalog.add(embedding=unit(768, 1), tenant="acme", product_id="p0", category="c", price=5)
    feed = [
        {"tenant": "acme", "product_id": "p0", "price": "7.50"},
        {"tenant": "acme", "product_id": "p0", "category": "sale", "price": 7.5},
    ]
    assert catalog.update_products(feed) == 1
    assert (product(catalog, "p0")["category"], product(catalog, "p0")["price"]) == ("sale", Decimal("7.5"))
    feed[1]["category"] = None
    feed.append({"tenant": "acme", "product_id": "p0", "category": "shoes"})
    with pytest.raises(
        InvalidInput,
        match=r"^row 2: category of product 'p0' of tenant 'acme' is \"shoes\" here, but null in row 1$",
    ):
        catalog.update_products(feed)
    assert product(catalog, "p0")["category"] == "sale"


def test_an_unknown_product_fails_the_whole_call(catalog: Catalog) -> None:
    catalog.add_many(
        {"embedding": unit(768, i), "tenant": t, "product_id": "p1", "price": 5}
        for i, t in enumerate(("acme", "other"))
    )
    feed = [
        {"tenant": "acme", "product_id": "p1", "price": 7},
        {"tenant": "other", "product_id": "p1", "price": 7},
        {"tenant": "other", "product_id": "p2", "price": 7},
        {"tenant": "other", "product_id": "p3", "price": 7},
    ]
    with pytest.raises(
        NotFound, match=r"row 2: tenant 'other' has no product 'p2' \(and 1 more\); nothing updated"
    ):
        catalog.update_products(feed)
    assert product(catalog, "p1")["price"] == product(catalog, "p1", "other")["price"] == Decimal(5)
    with pytest.raises(NotFound, match=r"^tenant 'acme' has no product 'nope'; nothing updated$"):
        catalog.update_product("nope", tenant="acme", price=1)
    with pytest.raises(InvalidInput, match=r"^price must not be negative, got -1$"):
        catalog.update_product("p1", tenant="acme", price=-1)  # one product: no row number


def test_another_tenants_product_is_not_found_and_not_changed(catalog: Catalog) -> None:
    catalog.add(embedding=unit(768, 1), tenant="shop_b", product_id="sku", price=5)
    with pytest.raises(NotFound, match="tenant 'shop_a' has no product 'sku'"):
        catalog.update_product("sku", tenant="shop_a", price=1)
    for attack in ("sku' OR '1'='1", "x'; UPDATE imgsearch.products SET price = 0; --", "%"):
        with pytest.raises(NotFound):
            catalog.update_product(attack, tenant="shop_b", price=1)
        with pytest.raises(NotFound):
            catalog.update_product("sku", tenant=attack, price=1)
    assert product(catalog, "sku", "shop_b")["price"] == Decimal(5)
    # a value that looks like SQL is stored as it is
    catalog.update_product("sku", tenant="shop_b", category="'; DROP TABLE imgsearch.products; --")
    assert product(catalog, "sku", "shop_b")["category"] == "'; DROP TABLE imgsearch.products; --"


def test_names_are_read_as_uploads_store_them(catalog: Catalog) -> None:
    catalog.add(embedding=unit(768, 1), tenant="acme", product_id=42, category="7")
    assert catalog.update_product(42, tenant=" acme ", category=8, price=3)  # type: ignore[arg-type]
    assert (product(catalog, "42")["category"], product(catalog, "42")["price"]) == ("8", Decimal(3))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"price": float("nan")}, "row 1: price must be finite"),
        ({"price": -1}, "row 1: price must not be negative"),
        ({"price": "cheap"}, "row 1: price must be a number"),
        ({"price": 10**12}, "row 1: price .* is too large"),
        ({"price": 4.8e307}, "row 1: price .* is too large"),  # Schemathesis: quantize overflowed, a 500
        ({"price": "9999999999.99999"}, "row 1: price .* is too large"),  # rounds up to 1e10
        ({"currency": "EURO"}, "row 1: currency must be a three-letter ISO 4217 code"),
        ({"category": ""}, "row 1: category must not be empty"),
        ({"category": "a\x00b"}, "row 1: category .* contains control characters"),
        ({"attributes": ["red"]}, "row 1: attributes must be a mapping"),
        ({"attributes": {"x": float("inf")}}, "row 1: .* must not hold NaN or infinity"),
        ({"colour": "red"}, r"row 1: unknown keys \['colour'\]"),
        ({}, "row 1: nothing to change"),
        ({"tenant": None, "price": 1}, "row 1: tenant is required"),
        (
            {"product_id": "p0", "price": 2},
            "row 1: price of product 'p0' of tenant 'acme' is 2 here, but 9 in row 0",
        ),
    ],
)
def test_bad_rows_are_one_clear_error_and_nothing_is_written(
    catalog: Catalog, row: dict[str, Any], message: str
) -> None:
    catalog.add_many(
        {"embedding": unit(768, i), "tenant": "acme", "product_id": f"p{i}", "price": 5} for i in range(2)
    )
    feed = [{"tenant": "acme", "product_id": "p0", "price": 9}, {"tenant": "acme", "product_id": "p1", **row}]
    with pytest.raises(InvalidInput, match=message):
        catalog.update_products(feed)
    assert product(catalog, "p0")["price"] == Decimal(5)


def test_a_row_that_is_not_a_mapping_is_refused(catalog: Catalog) -> None:
    with pytest.raises(InvalidInput, match="row 0: a row must be a mapping of fields, got str"):
        catalog.update_products(["p0"])  # type: ignore[list-item]
    assert catalog.update_products([]) == 0


def test_rows_can_be_named_by_where_they_come_from(catalog: Catalog) -> None:
    """``names`` (a feed's file and line) replace "row i" in every error."""
    catalog.add(embedding=unit(768, 1), tenant="acme", product_id="p0", price=5)
    rows = [
        {"tenant": "acme", "product_id": "p0", "price": 1},
        {"tenant": "acme", "product_id": "p9", "price": 1},
    ]
    with pytest.raises(NotFound, match=r"^feed.csv:3: tenant 'acme' has no product 'p9'; nothing updated$"):
        catalog.update_products(rows, names=["feed.csv:2", "feed.csv:3"])
    with pytest.raises(
        InvalidInput,
        match=r"^feed.csv:3: price of product 'p0' of tenant 'acme' is 2 here, but 1 in feed.csv:2$",
    ):
        catalog.update_products([rows[0], {**rows[0], "price": 2}], names=["feed.csv:2", "feed.csv:3"])
    with pytest.raises(InvalidInput, match=r"^names must name every row: got 1 names for 2 rows$"):
        catalog.update_products(rows, names=["feed.csv:2"])
    # a one-row feed still names its row: the caller asked for names
    with pytest.raises(NotFound, match=r"^row 0: tenant 'acme' has no product 'p9'"):
        catalog.update_products(rows[1:])
    assert product(catalog, "p0")["price"] == Decimal(5)


def test_price_filtered_searches_return_the_exact_top_k_after_a_price_feed(catalog: Catalog) -> None:
    """A sale moves a fifth of the catalog into a price range; searches in that range right after
    (dead HNSW entries for the old row versions included, no vacuum) return the exact top-10."""
    vectors, _ = clustered(2000, 768, clusters=20, seed=5)
    ids = catalog.add_many(
        {"embedding": v, "tenant": "acme", "product_id": f"p{i}", "price": 100} for i, v in enumerate(vectors)
    )
    on_sale = np.random.default_rng(1).choice(len(ids), size=400, replace=False)
    catalog.update_products({"tenant": "acme", "product_id": f"p{i}", "price": 49} for i in on_sale)
    sale_ids = np.array(ids)[on_sale]
    for seed in range(5):
        query = unit(768, 100 + seed)
        expected = sale_ids[np.argsort(-exact_similarities(vectors[on_sale], query))[:10]]
        hits = catalog.search(vector=query, tenant="acme", price_max=50, k=10)
        assert [h.image_id for h in hits] == list(expected)
        assert {h.price for h in hits} == {Decimal(49)}


def test_large_feeds_are_written_in_chunks_with_progress(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(updates, "CHUNK", 3)
    catalog.add_many(
        {"embedding": unit(768, i), "tenant": "acme", "product_id": f"p{i}", "price": 5} for i in range(7)
    )
    feed = [
        {"tenant": "acme", "product_id": f"p{i}", "price": 5 if i in (2, 4) else 10 + i} for i in range(7)
    ]
    assert catalog.update_products(feed, progress=True) == 5
    assert [product(catalog, f"p{i}")["price"] for i in range(7)] == [
        Decimal(5 if i in (2, 4) else 10 + i) for i in range(7)
    ]
    err = capsys.readouterr().err
    assert "updating: 100%" in err and "7/7" in err


def test_an_update_locks_its_products_in_key_order_as_uploads_do(catalog: Catalog) -> None:
    def update(product_ids: list[str]) -> None:
        rows = [{"tenant": "acme", "product_id": p, "category": "moved"} for p in reversed(product_ids)]
        assert catalog.update_products(rows, progress=False) == 2

    locks_in_key_order(catalog, update)
    assert {product(catalog, p)["category"] for p in ("a-first", "b-second")} == {"moved"}
