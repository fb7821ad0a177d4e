"""A shop's attribute filter: the keys of its matching products read through the attributes' index
(``imgsearch._shop_products``, migration 0042), for the caller's shop only, and searches that keep
those products' rows with the same hits as before."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import make_url, text

from imgsearch import Catalog
from imgsearch.access import tenancy
from imgsearch.db.models import Embedding
from imgsearch.errors import InvalidQuery
from imgsearch.search import Filters, exact_statement, shop_filters
from tests.helpers import explain_generic, unit
from tests.search.conftest import recorded_statements

DIM = 768
SHOP_PRODUCTS = 3000  # enough rows that PostgreSQL prefers an index to reading them all


@pytest.fixture
def catalog(database_url: str) -> Iterator[Catalog]:
    """Two shops with the same attributes: ``bucket`` i % 100 and ``tone`` i % 2 in shop_a,
    a few of the same in shop_b, nearer the queries than any of shop_a's."""
    with Catalog.open(database_url) as catalog:
        catalog.add_many(
            {"embedding": unit(DIM, i), "tenant": "shop_a", "product_id": f"a{i}", "category": "shoes",
             "attributes": {"bucket": i % 100, "tone": i % 2}} for i in range(SHOP_PRODUCTS)
        )  # fmt: skip
        catalog.add_many(
            {"embedding": unit(DIM, 7), "tenant": "shop_b", "product_id": f"b{i}", "category": "shoes",
             "attributes": {"bucket": 7, "tone": 1}} for i in range(5)
        )  # fmt: skip
        with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE imgsearch.embeddings, imgsearch.products"))
        yield catalog


def shop_products(catalog: Catalog, wanted: dict[str, Any], most: int, tenant: str | None) -> Any:
    with catalog.engine.begin() as conn:
        if tenant is not None:
            tenancy.scope(conn, tenant)
        else:
            conn.execute(text("SET LOCAL ROLE imgsearch_app"))
        return conn.execute(
            text("SELECT imgsearch._shop_products(CAST(:w AS jsonb), :most)"),
            {"w": json.dumps(wanted), "most": most},
        ).scalar()


def keys(catalog: Catalog, tenant: str, **attributes: Any) -> set[int]:
    with catalog.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id FROM imgsearch.products WHERE tenant = :t AND attributes @> CAST(:a AS jsonb)"),
            {"t": tenant, "a": json.dumps(attributes)},
        )
        return {r[0] for r in rows}


def as_array(keys: list[int]) -> str:
    return "{" + ",".join(map(str, keys)) + "}"


def test_the_lookup_lists_the_callers_shops_matching_products_or_none_past_its_most(catalog: Catalog) -> None:
    found = shop_products(catalog, {"bucket": 7}, 100, "shop_a")
    assert set(found) == keys(catalog, "shop_a", bucket=7) and len(found) == SHOP_PRODUCTS // 100
    assert set(shop_products(catalog, {"bucket": 7}, 100, "shop_b")) == keys(catalog, "shop_b", bucket=7)
    assert shop_products(catalog, {"bucket": 7}, 29, "shop_a") is None  # 30 match: broad
    assert shop_products(catalog, {"bucket": 7}, 30, "shop_a") is not None
    assert shop_products(catalog, {"bucket": 1000}, 100, "shop_a") == []  # none match
    assert shop_products(catalog, {"bucket": 7}, 100, None) is None  # no shop: nothing to list


def test_the_lookup_is_the_apps_alone_and_a_console_login_gets_its_own_shop(
    catalog: Catalog, database_url: str
) -> None:
    login = f"console_{make_url(database_url).database}"
    tenancy.create_login(catalog.engine, login, "shop_b", password="s3cret")
    url = make_url(database_url)
    try:
        with (
            psycopg.connect(
                host=url.query["host"], user=login, password="s3cret", dbname=url.database, autocommit=True
            ) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="_shop_products"),
        ):
            conn.execute("""SELECT imgsearch._shop_products('{"bucket": 7}', 100)""")
        with catalog.engine.begin() as conn:
            # a console login's shop is its own, whatever imgsearch.tenant says (were it granted)
            conn.execute(
                text(f'GRANT EXECUTE ON FUNCTION imgsearch._shop_products(jsonb, integer) TO "{login}"')
            )
        with psycopg.connect(
            host=url.query["host"], user=login, password="s3cret", dbname=url.database, autocommit=True
        ) as conn:
            conn.execute("SET imgsearch.tenant = 'shop_a'")
            found = conn.execute("""SELECT imgsearch._shop_products('{"bucket": 7}', 100)""").fetchone()
            assert found is not None and set(found[0]) == keys(catalog, "shop_b", bucket=7)
    finally:
        with catalog.engine.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{login}"'))
            conn.execute(text(f'DROP ROLE "{login}"'))


def test_a_shops_attribute_search_keeps_its_listed_products_rows_with_the_same_hits(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = recorded_statements(catalog.search_engine)
    monkeypatch.setattr(shop_filters, "BROAD_SECONDS", 0.0)  # each search looks up (see below)
    q, most_products = unit(DIM, 7), shop_filters.MOST_PRODUCTS
    for attributes in ({"bucket": 7}, {"bucket": 7, "tone": 1}, {"tone": 1}, {"bucket": 1000}):
        # the catalog's own search of the shop's rows: no policy, no list
        expected = catalog.search(vector=q, k=20, attributes=attributes, where=Embedding.tenant == "shop_a")
        for most in (most_products, -1):
            monkeypatch.setattr(shop_filters, "MOST_PRODUCTS", most)
            sent.clear()
            hits = catalog.search(vector=q, k=20, tenant="shop_a", attributes=attributes)
            assert [h.image_id for h in hits] == [h.image_id for h in expected], (attributes, most)
            assert {h.tenant for h in hits} <= {"shop_a"}
            assert any("imgsearch._shop_products" in s for s in sent), (attributes, most)
            # a list of the shop's matching products (none, 30, or 1,500 of them), unless there is no most
            assert any("product_pk = ANY" in s for s in sent) == (most > 0), (attributes, most)
    # a broad filter (1,500 products, past a most of 100) is searched as before, with the same hits
    monkeypatch.setattr(shop_filters, "MOST_PRODUCTS", 100)
    sent.clear()
    broad = catalog.search(vector=q, k=20, tenant="shop_a", attributes={"tone": 1})
    assert not any("product_pk = ANY" in s for s in sent)
    expected = catalog.search(vector=q, k=20, attributes={"tone": 1}, where=Embedding.tenant == "shop_a")
    assert [h.image_id for h in broad] == [h.image_id for h in expected]


def test_a_shops_listed_products_are_an_index_condition_under_its_policy(catalog: Catalog) -> None:
    """The reason for the list: under the shop's row-level security the attributes' ``@>``
    filters every row of the shop, while ``product_pk = ANY(...)`` is an index condition."""
    q, model = unit(DIM, 7), catalog.active_model
    listed = sorted(keys(catalog, "shop_a", bucket=7))
    plans = {}
    with catalog.engine.begin() as conn:
        tenancy.scope(conn, "shop_a")
        plans["attributes"] = explain_generic(
            conn, exact_statement(model, q, Filters(tenant="shop_a", attributes={"bucket": 7}), 10)
        )
        plans["listed"] = explain_generic(
            conn,
            exact_statement(
                model, q, Filters(tenant="shop_a", attributes={"bucket": 7}, products=as_array(listed)), 10
            ),
        )
    listed_conds = [line for line in plans["listed"].splitlines() if "Index Cond" in line]
    assert any("product_pk = ANY" in c for c in listed_conds), plans["listed"]
    assert not any("Seq Scan on products" in line for line in plans["listed"].splitlines())
    attribute_filters = [line for line in plans["attributes"].splitlines() if "Filter" in line]
    assert any("attributes @>" in line for line in attribute_filters), plans["attributes"]


@pytest.mark.parametrize(
    "bad", ["{1,2", "1,2", "{1;2}", "{1,-2}", "{1,2}; DROP TABLE x", "{a}", "{1,,2}", ["{1}"], 5]
)
def test_a_list_of_products_that_is_no_array_of_keys_is_refused(bad: Any) -> None:
    with pytest.raises(InvalidQuery, match="products must be an array of product keys"):
        Filters(tenant="shop_a", products=bad).check()


def test_a_shops_listed_attribute_filter_keeps_its_other_filters(catalog: Catalog) -> None:
    """Brand (on products, joined), category and price (on the search rows) beside the list."""
    catalog.add_many(
        {"embedding": unit(DIM, 7), "tenant": "shop_a", "product_id": f"c{i}", "category": "bags",
         "brand": "acme" if i % 2 else "other", "price": i, "attributes": {"bucket": 7}} for i in range(8)
    )  # fmt: skip
    q = unit(DIM, 7)
    for others in (
        {"brand": "acme"},
        {"category": "bags"},
        {"price_min": 3, "price_max": 6},
        {"category": "shoes"},
    ):
        hits = catalog.search(vector=q, k=50, tenant="shop_a", attributes={"bucket": 7}, **others)
        expected = catalog.search(
            vector=q, k=50, attributes={"bucket": 7}, where=Embedding.tenant == "shop_a", **others
        )
        assert hits and [h.image_id for h in hits] == [h.image_id for h in expected], others


def test_a_filter_found_broad_skips_the_lookup_for_a_while(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = recorded_statements(catalog.search_engine)
    q = unit(DIM, 7)
    monkeypatch.setattr(shop_filters, "MOST_PRODUCTS", 100)  # tone=1: 1,500 products, broad

    def search(tenant: str, **attributes: Any) -> tuple[bool, bool]:
        """Whether the search looked its products up, and whether it kept a list of them."""
        sent.clear()
        hits = catalog.search(vector=q, k=10, tenant=tenant, attributes=attributes)
        expected = catalog.search(vector=q, k=10, attributes=attributes, where=Embedding.tenant == tenant)
        assert [h.image_id for h in hits] == [h.image_id for h in expected]
        return any("_shop_products" in s for s in sent), any("product_pk = ANY" in s for s in sent)

    monkeypatch.setattr(shop_filters, "BROAD_SECONDS", 0.0)
    assert search("shop_a", tone=1) == (True, False)
    assert search("shop_a", tone=1) == (True, False)  # forgotten at once
    monkeypatch.setattr(shop_filters, "BROAD_SECONDS", 60.0)
    assert search("shop_a", tone=1) == (True, False)
    assert search("shop_a", tone=1) == (False, False)  # known broad: no lookup
    assert search("shop_b", tone=1) == (True, True)  # another shop's is its own (5 products)
    assert search("shop_a", bucket=7) == (True, True)  # another filter: 30 products, listed
    assert search("shop_a", bucket=7) == (True, True)  # a listed one is looked up at each search


def test_a_list_is_bounded_by_the_square_root_of_the_catalogs_products(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LIST_FACTOR * sqrt(products), within [LEAST_PRODUCTS, MOST_PRODUCTS]: 3,005 products
    (analyzed) and tone=1's 1,500 of them."""
    sent = recorded_statements(catalog.search_engine)
    monkeypatch.setattr(shop_filters, "BROAD_SECONDS", 0.0)
    monkeypatch.setattr(shop_filters, "LEAST_PRODUCTS", 100)
    q = unit(DIM, 7)
    for factor, listed in ((20.0, False), (30.0, True)):  # 20 * 54.8 = 1,096; 30 * 54.8 = 1,644
        monkeypatch.setattr(shop_filters, "LIST_FACTOR", factor)
        sent.clear()
        catalog.search(vector=q, k=10, tenant="shop_a", attributes={"tone": 1})
        assert any("product_pk = ANY" in s for s in sent) == listed, factor
    monkeypatch.setattr(shop_filters, "MOST_PRODUCTS", 1_499)  # the cap wins
    sent.clear()
    catalog.search(vector=q, k=10, tenant="shop_a", attributes={"tone": 1})
    assert not any("product_pk = ANY" in s for s in sent)


def test_right_after_a_first_upload_a_shops_attribute_filter_is_listed(database_url: str) -> None:
    """No statistics yet (``reltuples`` -1): the list's bound is LEAST_PRODUCTS, and the search
    keeps the listed products' rows with the hits of the catalog's own search."""
    with Catalog.open(database_url) as catalog:
        catalog.add_many(
            {
                "embedding": unit(DIM, i),
                "tenant": "shop_a",
                "product_id": f"a{i}",
                "attributes": {"bucket": i % 10},
            }
            for i in range(200)
        )
        sent = recorded_statements(catalog.search_engine)
        q = unit(DIM, 3)
        hits = catalog.search(vector=q, k=10, tenant="shop_a", attributes={"bucket": 3})
        assert any("product_pk = ANY" in s for s in sent)
        expected = catalog.search(
            vector=q, k=10, attributes={"bucket": 3}, where=Embedding.tenant == "shop_a"
        )
        assert hits and [h.image_id for h in hits] == [h.image_id for h in expected]
