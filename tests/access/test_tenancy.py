"""Tenant isolation enforced by PostgreSQL: console logins, the library, and what neither can do."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from sqlalchemy import make_url, text

from imgsearch import Catalog, ConfigurationError, InvalidInput, NotFound
from imgsearch.access import tenancy
from imgsearch.db.models import Embedding
from tests.helpers import unit

DIM = 768


@dataclass
class Shops:
    catalog: Catalog
    a_ids: list[int]
    b_ids: list[int]
    login_a: str


@pytest.fixture
def shops(database_url: str) -> Iterator[Shops]:
    with Catalog.open(database_url) as catalog:
        a_ids = catalog.add_many(
            [
                {
                    "embedding": unit(DIM, i),
                    "tenant": "shop_a",
                    "product_id": f"a{i}",
                    "category": "shoes",
                    "price": 10 + i,
                }
                for i in range(6)
            ]
        )
        b_ids = catalog.add_many(
            [
                {
                    "embedding": unit(DIM, 100 + i),
                    "tenant": "shop_b",
                    "product_id": f"b{i}",
                    "category": "shoes",
                    "price": 10 + i,
                }
                for i in range(6)
            ]
        )
        login = f"console_{make_url(database_url).database}"
        tenancy.create_login(catalog.engine, login, "shop_a", password="s3cret")
        try:
            yield Shops(catalog, a_ids, b_ids, login)
        finally:
            with catalog.engine.begin() as conn:
                conn.execute(text(f'DROP OWNED BY "{login}"'))
                conn.execute(text(f'DROP ROLE "{login}"'))


def console(shops: Shops) -> psycopg.Connection:
    url = make_url(shops.catalog.engine.url)
    return psycopg.connect(
        host=url.query["host"], user=shops.login_a, password="s3cret", dbname=url.database, autocommit=True
    )


def test_console_login_sees_only_its_tenant(shops: Shops) -> None:
    with console(shops) as conn:
        assert conn.execute("SELECT DISTINCT tenant FROM imgsearch.products").fetchall() == [("shop_a",)]
        assert conn.execute("SELECT count(*) FROM imgsearch.images").fetchone() == (6,)
        assert conn.execute("SELECT count(*) FROM imgsearch.embeddings").fetchone() == (6,)
        ids = {
            r[0]
            for r in conn.execute("SELECT image_id FROM imgsearch.search_similar(%s, 20)", (shops.a_ids[0],))
        }
        assert ids == set(shops.a_ids[1:])
        vec = str(unit(DIM, 100).tolist())  # B's first image, exactly
        rows = conn.execute("SELECT image_id FROM imgsearch.search_vector(%s::vector, 20)", (vec,)).fetchall()
        assert {r[0] for r in rows} == set(shops.a_ids)


def test_console_login_cannot_reach_other_tenant(shops: Shops) -> None:
    b_id = shops.b_ids[0]
    with console(shops) as conn:
        with pytest.raises(psycopg.errors.NoDataFound) as foreign:
            conn.execute("SELECT * FROM imgsearch.search_similar(%s)", (b_id,))
        with pytest.raises(psycopg.errors.NoDataFound) as missing:
            conn.execute("SELECT * FROM imgsearch.search_similar(%s)", (987654321,))
        assert str(foreign.value).replace(str(b_id), "N") == str(missing.value).replace("987654321", "N")
        # a product of another tenant is as unknown as one that doesn't exist
        with pytest.raises(psycopg.errors.NoDataFound, match="tenant 'shop_b' has no product 'b0'"):
            conn.execute("SELECT * FROM imgsearch.search_similar_product('shop_b', 'b0')")
        rows = conn.execute(
            "SELECT image_id FROM imgsearch.search_similar_product('shop_a', 'a0', 20)"
        ).fetchall()
        assert {r[0] for r in rows} == set(shops.a_ids[1:])
        assert conn.execute("UPDATE imgsearch.products SET price = 0 WHERE tenant = 'shop_b'").rowcount == 0
        assert conn.execute("DELETE FROM imgsearch.images WHERE tenant = 'shop_b'").rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("INSERT INTO imgsearch.products (tenant, product_id) VALUES ('shop_b', 'x')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("UPDATE imgsearch.products SET tenant = 'shop_b' WHERE tenant = 'shop_a'")
        conn.execute("SET imgsearch.tenant = 'shop_b'")
        assert conn.execute("SELECT DISTINCT tenant FROM imgsearch.products").fetchall() == [("shop_a",)]
        conn.execute("SET ROLE imgsearch_console")
        assert conn.execute("SELECT DISTINCT tenant FROM imgsearch.products").fetchall() == [("shop_a",)]
        conn.execute("RESET ROLE")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET ROLE imgsearch_app")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("ALTER TABLE imgsearch.products DISABLE ROW LEVEL SECURITY")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE imgsearch.tenant_logins SET tenant = 'shop_b'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT imgsearch.create_tenant_login('sneaky', 'shop_b')")
        conn.execute("SET row_security = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("SELECT count(*) FROM imgsearch.products")
    with shops.catalog.engine.connect() as owner:
        assert (
            owner.execute(text("SELECT count(*) FROM imgsearch.images WHERE tenant = 'shop_b'")).scalar() == 6
        )


def test_library_with_a_tenant_never_returns_another(shops: Shops) -> None:
    catalog = shops.catalog
    b_vec = unit(DIM, 100)
    assert {h.tenant for h in catalog.search(vector=b_vec, tenant="shop_a", k=20)} == {"shop_a"}
    # even a where clause aimed at shop_b finds nothing: the database, not the filter, decides
    assert catalog.search(vector=b_vec, tenant="shop_a", where=Embedding.tenant == "shop_b", k=20) == []
    with pytest.raises(NotFound) as foreign:
        catalog.search(similar_to=shops.b_ids[0], tenant="shop_a")
    with pytest.raises(NotFound) as missing:
        catalog.search(similar_to=987654321, tenant="shop_a")
    assert str(foreign.value).replace(str(shops.b_ids[0]), "N") == str(missing.value).replace(
        "987654321", "N"
    )
    with pytest.raises(NotFound, match=f"no image with id {shops.b_ids[1]}"):
        catalog.get(shops.b_ids[1], tenant="shop_a")
    assert catalog.get(shops.a_ids[1], tenant="shop_a").tenant == "shop_a"
    with catalog.engine.begin() as conn:
        tenancy.scope(conn, "shop_a")
        assert conn.execute(text("SELECT count(*) FROM imgsearch.images")).scalar() == 6
        assert conn.execute(text("SELECT current_user")).scalar() == "imgsearch_app"
    with catalog.engine.connect() as conn:  # the same pool, the next transaction: nothing leaked
        assert conn.execute(text("SELECT current_user")).scalar() == "postgres"
        assert conn.execute(text("SELECT current_setting('imgsearch.tenant', true)")).scalar() in (None, "")


def test_a_shops_price_range_is_an_index_condition_under_its_policy(shops: Shops) -> None:
    """Under the shop's row-level security PostgreSQL lets only leakproof conditions into an
    index's condition ahead of the policy's: a search's price range is one, on ``price_units``
    (migration 0030), over embeddings and over products (totals, facets); the same range on
    ``price`` (numeric, not leakproof) filters every row."""
    from sqlalchemy import and_

    from imgsearch.search import Filters, exact_statement, facets
    from tests.helpers import explain_generic

    catalog, q, model = shops.catalog, unit(DIM, 0), shops.catalog.active_model
    # a shop of some size, its other prices above the range: with a dozen rows every index costs
    # the same and PostgreSQL takes any (PostgreSQL 18 skip-scans the key for model_id too)
    catalog.add_many(
        {"embedding": unit(DIM, 1000 + i), "tenant": "shop_a", "product_id": f"more{i}", "category": "shoes",
         "price": 100 + i % 500} for i in range(3000)
    )  # fmt: skip
    with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE imgsearch.embeddings, imgsearch.products"))
    ranges = {
        "units": Filters(tenant="shop_a", price_min=11, price_max=13),
        "numeric": Filters(tenant="shop_a", where=and_(Embedding.price >= 11, Embedding.price <= 13)),
    }
    plans = {}
    with catalog.engine.begin() as conn:
        tenancy.scope(conn, "shop_a")
        conn.execute(text("SET LOCAL enable_seqscan = off"))  # a dozen rows: have an index tried
        for name, filters in ranges.items():
            plans[name] = explain_generic(conn, exact_statement(model, q, filters, 10))
        # the shop's total (and facets) over products, on products' price in units
        plans["total"] = explain_generic(conn, facets.total_statement(model, ranges["units"], False))
    for name in ("units", "total"):
        lines = plans[name].splitlines()
        conds = [line for line in lines if "Index Cond" in line]
        assert any("price_units >= " in c and "price_units <= " in c for c in conds), plans[name]
        assert not any("price" in line for line in lines if "Filter" in line), plans[name]
    assert any("price >= " in line for line in plans["numeric"].splitlines() if "Filter" in line)
    # and the shop's range answers with its rows alone
    hits = catalog.search(vector=q, tenant="shop_a", price_min=11, price_max=13, k=20)
    assert sorted(h.product_id for h in hits) == ["a1", "a2", "a3"]


def test_scope_needs_the_app_role(shops: Shops) -> None:
    from sqlalchemy import create_engine

    url = make_url(shops.catalog.engine.url).set(username=shops.login_a, password="s3cret")
    engine = create_engine(url)
    try:
        with engine.connect() as conn, pytest.raises(ConfigurationError, match="GRANT imgsearch_app TO"):
            tenancy.scope(conn, "shop_b")
        with engine.connect() as conn:  # nothing was switched: still the console login, its tenant
            assert conn.execute(text("SELECT current_user")).scalar() == shops.login_a
            assert conn.execute(text("SELECT DISTINCT tenant FROM imgsearch.products")).all() == [("shop_a",)]
    finally:
        engine.dispose()


def test_composable_select_is_tenant_restricted(shops: Shops) -> None:
    from sqlalchemy.orm import Session

    stmt = shops.catalog.search_select(vector=unit(DIM, 100), k=20)
    with Session(shops.catalog.engine) as session, session.begin():
        shops.catalog.apply_search_settings(session.connection(), tenant="shop_a")
        rows = session.execute(stmt).all()
    assert {r.tenant for r in rows} == {"shop_a"} and len(rows) == 6


def test_dedup_by_content_hash_is_per_tenant(shops: Shops) -> None:
    from tests.helpers import image_bytes

    data = image_bytes(42)
    a = shops.catalog.add(image=data, tenant="shop_a", product_id="img")
    b = shops.catalog.add(image=data, tenant="shop_b", product_id="img")
    assert a != b
    assert shops.catalog.add(image=data, tenant="shop_b", product_id="img") == b


def test_create_login_rejects_bad_names_and_duplicates(shops: Shops) -> None:
    with pytest.raises(InvalidInput, match="already exists"):
        tenancy.create_login(shops.catalog.engine, shops.login_a, "shop_a")
    with pytest.raises(InvalidInput, match="login must be lowercase"):
        tenancy.create_login(shops.catalog.engine, 'x"; DROP ROLE postgres; --', "shop_a")
    with pytest.raises(InvalidInput, match="tenant must not be empty"):
        tenancy.create_login(shops.catalog.engine, "nobody_here", "")
    with pytest.raises(InvalidInput, match=r"login .* contains control characters"):
        tenancy.create_login(shops.catalog.engine, "nobody\x00here", "shop_a")
    with pytest.raises(InvalidInput, match=r"tenant .* lone surrogate"):
        tenancy.create_login(shops.catalog.engine, "nobody_here", "\ud800")
    with pytest.raises(InvalidInput, match="password must not contain a NUL character"):
        tenancy.create_login(shops.catalog.engine, "nobody_here", "shop_a", password="a\x00b")
