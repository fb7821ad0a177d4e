"""A shop's facets from the counts triggers keep (migration 0039) against the one-pass statement
over the same rows, after every kind of write: uploads, a second photo, shared photos, deleted
images and products, changed values, a second model's rows, concurrent writers of the same
products, truncation; the count rows folded when they pile up (never in a read-only transaction);
a price range finer than the kept cells; another shop's counts hidden by row-level security —
against the real PostgreSQL + pgvector."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.search import facets
from imgsearch.search.filters import Filters

SHOP = "kept"
COLUMNS = ("total", "category", "brand", "attributes", "price")


def _row(i: int, rng: np.random.Generator, dim: int, **fields: Any) -> dict[str, Any]:
    return {
        "tenant": SHOP,
        "product_id": f"K{i:04d}",
        "embedding": rng.standard_normal(dim),
        "category": None if i % 11 == 0 else f"cat{i % 7}",
        "brand": None if i % 5 == 0 else f"brand{i % 4}",
        "price": None if i % 13 == 0 else Decimal(int(rng.integers(100, 90_000))) / 100,
        "attributes": {"colour": f"c{i % 6}", "size": 36 + i % 5, "organic": bool(i % 2), "tags": ["x"]},
        **fields,
    }


@pytest.fixture
def catalog(server_url: str, template_db: str, tiny_siglip: Path) -> Iterator[Catalog]:
    from tests.conftest import new_database

    with Catalog.open(new_database(server_url, template_db), model=str(tiny_siglip)) as catalog:
        yield catalog


def one_pass(catalog: Catalog, tenant: str = SHOP, categories: list[str] | None = None) -> tuple[Any, ...]:
    """The facets of the shop's (or its ``categories``') match set, counted in one pass."""
    category = None if categories is None else categories[0] if len(categories) == 1 else categories
    shop = Filters(tenant=tenant, category=category)
    with catalog.engine.begin() as conn:
        row = conn.execute(facets.statement(catalog.active_model, shop, False), shop.params()).one()
    return tuple(getattr(row, c) for c in COLUMNS)


def kept(catalog: Catalog, tenant: str = SHOP, categories: list[str] | None = None) -> tuple[Any, ...]:
    """The same from the kept counts: the shop's, or its ``categories``' (migration 0055)."""
    params: dict[str, Any] = {"facets_model": catalog.active_model.id, "facets_tenant": tenant}
    if categories is not None:
        params["facets_categories"] = categories
    with catalog.engine.begin() as conn:
        row = conn.execute(facets._KEPT if categories is None else facets._KEPT_IN_CATEGORIES, params).one()
    return tuple(getattr(row, c) for c in COLUMNS)


def same(catalog: Catalog, tenant: str = SHOP) -> tuple[Any, ...]:
    """The kept counts equal the one pass for the shop, each category its products have, two of
    them together and one it has none of; the shop's."""
    with catalog.engine.connect() as conn:
        names = conn.execute(
            text("SELECT DISTINCT category FROM imgsearch.products WHERE tenant = :t AND category IS NOT NULL"),
            {"t": tenant},
        ).scalars()
        found = sorted(names)
    for categories in (None, *([c] for c in found), found[:2], ["none of them"]):
        assert kept(catalog, tenant, categories) == one_pass(catalog, tenant, categories), categories
    return kept(catalog, tenant)


def count_rows(catalog: Catalog) -> int:
    with catalog.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM imgsearch.facet_counts")).scalar_one())


def test_kept_counts_follow_every_kind_of_write(catalog: Catalog) -> None:
    rng = np.random.default_rng(3)
    ids = catalog.add_many([_row(i, rng, catalog.dim) for i in range(60)])
    assert kept(catalog)[0] == 60 and same(catalog)
    second = catalog.add(tenant=SHOP, product_id="K0001", embedding=rng.standard_normal(catalog.dim))
    assert kept(catalog)[0] == 60  # a second photo: the product counts once
    catalog.delete(ids[1], tenant=SHOP)
    assert kept(catalog)[0] == 60  # it still has one
    catalog.delete(second, tenant=SHOP)
    assert kept(catalog)[0] == 59 and same(catalog)
    catalog.delete_product("K0002", tenant=SHOP)
    catalog.update_product("K0003", tenant=SHOP, category="moved", brand=None, price=Decimal("12.5"))
    catalog.update_product("K0004", tenant=SHOP, attributes={"colour": "new", "size": 99})
    catalog.update_products(
        [{"tenant": SHOP, "product_id": f"K{i:04d}", "price": Decimal(i)} for i in range(10, 30)]
    )
    with catalog.engine.begin() as conn:  # written through SQL, as an admin in psql would
        conn.execute(text("UPDATE imgsearch.products SET category = 'sql' WHERE product_id = 'K0005'"))
        conn.execute(
            text("INSERT INTO imgsearch.products (tenant, product_id, category) VALUES (:t, 'bare', 'none')"),
            {"t": SHOP},
        )  # no search row: never counted
    assert kept(catalog)[0] == 58 and same(catalog)
    assert dict(kept(catalog)[1])["moved"] == 1


def test_a_shared_photo_counts_each_of_its_products_and_a_second_model_apart(catalog: Catalog) -> None:
    rng = np.random.default_rng(4)
    catalog.add_many([_row(i, rng, catalog.dim) for i in range(20)])
    photo = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(photo, format="PNG")
    first = catalog.add_row({**_row(40, rng, catalog.dim), "image": photo.getvalue()})[0]
    catalog.add_row({**_row(41, rng, catalog.dim), "image": photo.getvalue()})
    assert kept(catalog)[0] == 22 and same(catalog)
    catalog.delete(first, tenant=SHOP)  # the photo of both products: both go
    assert kept(catalog)[0] == 20 and same(catalog)
    other = catalog.add_model("other-model", catalog.dim)
    with catalog.engine.begin() as conn:  # another model's rows for half the products
        conn.execute(
            text(
                "INSERT INTO imgsearch.embeddings (model_id, image_id, product_pk, tenant, embedding) "
                "SELECT :m, image_id, product_pk, tenant, embedding FROM imgsearch.embeddings "
                "WHERE model_id = :active AND product_pk % 2 = 0"
            ),
            {"m": other.id, "active": catalog.active_model.id},
        )
        halves = conn.execute(
            text("SELECT count(DISTINCT product_pk) FROM imgsearch.embeddings WHERE model_id = :m"),
            {"m": other.id},
        ).scalar_one()
    assert kept(catalog)[0] == 20
    with catalog.engine.begin() as conn:
        row = conn.execute(facets._KEPT, {"facets_model": other.id, "facets_tenant": SHOP}).one()
    assert row.total == halves > 0


def test_concurrent_writers_of_the_same_products_leave_exact_counts(catalog: Catalog) -> None:
    rng = np.random.default_rng(5)
    products = [_row(i, rng, catalog.dim) for i in range(12)]
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            for round_ in range(6):
                order = local.permutation(len(products))
                ids = catalog.add_many(
                    [{**products[int(i)], "embedding": local.standard_normal(catalog.dim)} for i in order[:4]]
                )
                if round_ % 2:
                    catalog.delete_many(ids[:2], tenant=SHOP)
                i = int(order[0])
                catalog.update_product(products[i]["product_id"], tenant=SHOP, category=f"w{seed}-{round_}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert same(catalog)


def test_truncation_empties_the_kept_counts(catalog: Catalog) -> None:
    rng = np.random.default_rng(6)
    catalog.add_many([_row(i, rng, catalog.dim) for i in range(5)])
    with catalog.engine.begin() as conn:
        conn.execute(text("TRUNCATE imgsearch.products, imgsearch.images CASCADE"))
    assert count_rows(catalog) == 0 and kept(catalog)[0] == 0
    catalog.add_many([_row(i, rng, catalog.dim) for i in range(3)])
    assert same(catalog) and kept(catalog)[0] == 3


def test_a_search_folds_piled_up_counts_on_the_primary_only(catalog: Catalog) -> None:
    rng = np.random.default_rng(7)
    for i in range(120):  # one upload at a time, as workers write: each appends its own counts
        catalog.add_row(_row(i, rng, catalog.dim))
    piled = count_rows(catalog)
    assert piled > 2 * 200 + facets.COMPACT_AFTER  # far more rows than values
    reference = one_pass(catalog)
    with catalog.engine.connect() as conn, conn.begin():
        conn.execute(text("SET TRANSACTION READ ONLY"))
        facets.count(conn, catalog.active_model, Filters(tenant=SHOP), None, facets=True)
    assert count_rows(catalog) == piled  # a replica's read changes nothing
    result = catalog.search(vector=np.ones(catalog.dim), tenant=SHOP, facets=True, k=1)
    assert count_rows(catalog) < piled / 3
    assert result.total == 120 and kept(catalog) == reference
    same(catalog)


def test_a_total_folds_piled_up_counts_on_the_primary_only(catalog: Catalog, monkeypatch: Any) -> None:
    """A total alone reads its scope's total rows (one a statement that wrote them, until
    folded): past COMPACT_AFTER it folds them too, but not in a read-only transaction."""
    monkeypatch.setattr(facets, "COMPACT_AFTER", 100)  # 1,000 in service: 100 uploads here
    rng = np.random.default_rng(13)
    for i in range(120):  # one at a time, as workers write: each appends a total row to both scopes
        catalog.add_row(_row(i, rng, catalog.dim, category="one"))
    piled = count_rows(catalog)
    for category in (None, "one"):
        with catalog.engine.connect() as conn, conn.begin():
            conn.execute(text("SET TRANSACTION READ ONLY"))
            read = facets.count(conn, catalog.active_model, Filters(tenant=SHOP, category=category), None, facets=False)
        assert read.total == 120 and count_rows(catalog) == piled
    result = catalog.search(vector=np.ones(catalog.dim), tenant=SHOP, category="one", total=True, k=1)
    assert result.total == 120 and count_rows(catalog) < piled / 3
    same(catalog)


def test_prices_closer_than_the_kept_cells_are_counted_by_the_one_pass(catalog: Catalog) -> None:
    rng = np.random.default_rng(8)
    catalog.add_many(
        [_row(i, rng, catalog.dim, price=Decimal("10.00") + Decimal(i) / 100) for i in range(30)]
    )
    with catalog.engine.begin() as conn:
        assert facets._kept_facets(conn, catalog.active_model, Filters(tenant=SHOP)) is None
        got = facets.count(conn, catalog.active_model, Filters(tenant=SHOP), None, facets=True)
    assert [(b.low, b.high, b.count) for b in got.price] == [
        (Decimal("10.0"), Decimal("10.1"), 10),
        (Decimal("10.1"), Decimal("10.2"), 10),
        (Decimal("10.2"), Decimal("10.3"), 10),
    ]


def test_another_shops_counts_are_hidden_by_row_level_security(catalog: Catalog) -> None:
    rng = np.random.default_rng(9)
    catalog.add_many([_row(i, rng, catalog.dim) for i in range(4)])
    catalog.add_many([{**_row(i, rng, catalog.dim), "tenant": "neighbour"} for i in range(3)])
    with catalog.engine.begin() as conn:
        conn.execute(text("SET LOCAL ROLE imgsearch_app"))
        conn.execute(text("SELECT set_config('imgsearch.tenant', 'neighbour', true)"))
        tenants = conn.execute(text("SELECT DISTINCT tenant FROM imgsearch.facet_counts")).scalars().all()
        members = conn.execute(text("SELECT DISTINCT tenant FROM imgsearch.facet_members")).scalars().all()
    assert tenants == members == ["neighbour"]


@pytest.mark.parametrize("first", ["product change", "first row"])
def test_a_first_row_written_beside_a_change_of_its_product_is_counted_under_the_new_values(
    catalog: Catalog, first: str
) -> None:
    """A product's first search row and a change of its values, each in flight while the other
    is written: whichever commits second, the product is counted once, under its new values (a
    member key made after waiting for the change took the values the product had before it, and
    is moved by the statement after the wait; migration 0048)."""
    from tests.helpers import first_row_again, written_beside

    rng = np.random.default_rng(10)
    catalog.add_many([_row(1, rng, catalog.dim, category="shoes", price=Decimal(10))])
    insert = first_row_again(catalog)  # written again below, as a worker writes it
    assert kept(catalog)[0] == 0
    change = (
        text("UPDATE imgsearch.products SET category = 'boots', price = 12.5 WHERE product_id = 'K0001'"),
        {},
    )
    statements = {"product change": change, "first row": insert}
    second = "first row" if first == "product change" else "product change"
    # the second writer waits at the product's member key
    assert written_beside(catalog.engine.url, statements[first], statements[second])
    counted = same(catalog)
    assert counted[0] == 1 and dict(counted[1]) == {"boots": 1}


def test_a_price_is_counted_in_the_bucket_of_each_width_its_value_truncated(catalog: Catalog) -> None:
    """The kept price cells (migration 0050 writes the widths out): for width 10^j, the price
    divided by 10^j and truncated toward zero, at the column's limits and below zero too."""
    prices = ["0.0001", "9.99", "10", "12.5", "99999.5", "9999999999.9999", "-0.5", "-12.5"]
    with catalog.engine.connect() as conn:
        got = conn.execute(
            text(
                "SELECT p, f.key, f.value FROM unnest(CAST(:prices AS numeric(14,4)[])) AS p "
                "CROSS JOIN LATERAL imgsearch._facet_values(NULL, NULL, p, NULL) f WHERE f.facet = 'price'"
            ),
            {"prices": prices},
        ).all()
    want = [(Decimal(p), str(j), str(int(Decimal(p) / 10**j))) for p in prices for j in range(10)]
    assert sorted(got) == sorted(want)


def test_a_writer_of_a_product_and_its_first_row_counts_it_under_its_values_and_holds_off_changes(
    catalog: Catalog,
) -> None:
    """A writer that changes a product and then writes its first row (as an upload or a bulk
    import does) counts it under the values it just wrote, without reading them again (migration
    0051: the product's row is the writer's until commit); a change of the product from elsewhere
    waits for the commit, then moves the count."""
    from tests.helpers import first_row_again, waits_for_a_lock

    rng = np.random.default_rng(11)
    catalog.add_many([_row(1, rng, catalog.dim, category="shoes")])
    insert = first_row_again(catalog)
    change = text("UPDATE imgsearch.products SET category = 'sandals' WHERE product_id = 'K0001'")
    errors: list[BaseException] = []

    def change_elsewhere() -> None:
        try:
            with catalog.engine.begin() as conn:
                conn.execute(change)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=change_elsewhere)
    with catalog.engine.connect() as writer, catalog.engine.connect() as watch:
        writer.execute(text("UPDATE imgsearch.products SET category = 'boots' WHERE product_id = 'K0001'"))
        writer.execute(*insert)
        row = writer.execute(text("SELECT rows, category FROM imgsearch.facet_members")).one()
        assert tuple(row) == (1, "boots")
        thread.start()
        assert waits_for_a_lock(watch, thread, timeout=10)
        writer.commit()
        thread.join(timeout=30)
    assert not thread.is_alive() and not errors
    counted = same(catalog)
    assert counted[0] == 1 and dict(counted[1]) == {"sandals": 1}


def test_a_search_in_categories_reads_their_kept_counts_and_other_filters_count_in_one_pass(
    catalog: Catalog,
) -> None:
    """A shop's search in a category or a list of them takes its facets and total from those
    categories' kept counts (migration 0055): a count planted in cat1's shows in its searches
    alone; a price range beside the category counts in one pass."""
    rng = np.random.default_rng(12)
    catalog.add_many([_row(i, rng, catalog.dim) for i in range(40)])
    with catalog.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO imgsearch.facet_counts (tenant, model_id, category, facet, key, value, n) "
                "VALUES (:t, :m, 'cat1', 'brand', '', 'planted', 5), (:t, :m, 'cat1', 'total', '', '', 1000)"
            ),
            {"t": SHOP, "m": catalog.active_model.id},
        )
    q = np.ones(catalog.dim)

    def search(**filters: Any) -> Any:
        return catalog.search(vector=q, tenant=SHOP, k=1, **filters)

    for category in ("cat1", ["cat1", "cat2"]):
        result = search(category=category, facets=True)
        assert result.facets.brand["planted"] == 5 and result.total > 1000
        assert search(category=category, total=True).total == result.total
        bounded = search(category=category, total=500)
        assert (bounded.total, bounded.total_relation) == (500, "gte")
    for filters in ({"category": "cat2"}, {}, {"category": "cat1", "price_max": 10_000}):
        assert "planted" not in search(facets=True, **filters).facets.brand
