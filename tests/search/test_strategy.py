"""The strategy under a search: its plans and settings (for its transaction only), one statement after
them, statements reused across searches, cached plans where the shape allows, and the exact top-k
from every strategy."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, event, make_url, text

from imgsearch import Catalog
from imgsearch.db.models import Image, Product
from imgsearch.db.vector_index import HalfvecValue
from imgsearch.settings import Settings
from tests.helpers import exact_similarities, explain, explain_generic, unit
from tests.search.conftest import Fixture, K, N, one_connection, queries, recorded_statements


def test_ef_search_grows_with_the_models_graph(database_url: str) -> None:
    """A graph's recall at a fixed ef_search falls as it grows (bench/search/ef_scale.py): searches take
    the least ef_search for the model's rows, as the planner estimates them."""
    from imgsearch import search as search_mod
    from imgsearch.db import vector_index

    sizes = (0, 100_000, 300_000, 1_000_000, 10_000_000, 10**9)
    assert [search_mod.min_ef_search(n) for n in sizes] == [200, 200, 279, 400, 797, 1000]
    with Catalog.open(database_url) as catalog:
        catalog.add_many(
            {"embedding": unit(catalog.dim, i), "tenant": "acme", "product_id": f"p{i}"} for i in range(30)
        )
        model_id = catalog.active_model.id
        plans: list[Any] = []
        catalog.on_search_plan = plans.append
        small = catalog.search(vector=unit(catalog.dim, 3), k=5)
        assert [p.ef_search for p in plans] == [200]
        with catalog.engine.begin() as conn:
            assert vector_index.indexed_rows(conn, model_id) <= 30
            # what VACUUM would record for a graph of a million rows
            conn.execute(
                text("UPDATE pg_catalog.pg_class SET reltuples = 1e6 WHERE oid = to_regclass(:name)"),
                {"name": f"imgsearch.{vector_index.index_name(model_id)}"},
            )
            assert vector_index.indexed_rows(conn, model_id) == 1_000_000
    with Catalog.open(database_url) as catalog:
        plans.clear()
        catalog.on_search_plan = plans.append
        assert catalog.search(vector=unit(catalog.dim, 3), k=5) == small
        assert [(p.strategy, p.ef_search) for p in plans] == [("hnsw", 400)]
    # more rows than that asked for: 2 x (k + offset) when larger, up to MAX_EF_SEARCH
    assert search_mod.one_pass_plan(300, 400).ef_search == 600  # type: ignore[union-attr]
    assert search_mod.one_pass_plan(600, 400) is None


LOCAL = r"set_config\('[a-z_.]+', '[a-z_0-9.]+', true\)"  # one setting, for the transaction only


def test_settings_are_set_local_and_do_not_leak(data: Fixture) -> None:
    from imgsearch import search as search_mod

    with one_connection(data.url, Settings(exact_max_rows=50, exact_max_fraction=0.0)) as catalog:
        statements = recorded_statements(catalog.search_engine)
        hits = catalog.search(vector=data.vectors[0], k=10)
        assert len(hits) == 10
        settings_sql = [s for s in statements if "hnsw." in s]
        # set_config(name, value, true): SET LOCAL's function form, one statement (imgsearch.db.wire)
        assert settings_sql and all(re.fullmatch(f"SELECT {LOCAL}(, {LOCAL})*", s) for s in settings_sql)
        searches = [s for s in statements if "<=>" in s]
        assert len(searches) == 1, "one SQL statement per search"
        orderings = re.findall(r"ORDER BY (.*?)\s+LIMIT", searches[0], flags=re.S)
        assert orderings and all("," not in o for o in orderings), "no tiebreaker after the distance"
        with catalog.engine.connect() as conn:  # the same pooled connection, a new transaction
            assert conn.execute(text("SHOW hnsw.ef_search")).scalar() == "40"
            assert conn.execute(text("SHOW hnsw.iterative_scan")).scalar() == "off"
            # an unfiltered search runs on a cached plan, made without seq scans or sorts
            for name, default in (
                ("plan_cache_mode", "auto"),
                ("enable_seqscan", "on"),
                ("enable_sort", "on"),
            ):
                assert conn.execute(text(f"SHOW {name}")).scalar() == default
        with catalog.engine.begin() as conn:
            model = catalog.active_model
            result = search_mod.search_vector(
                conn,
                model,
                data.vectors[0],
                search_mod.Filters(tenant="acme"),
                10,
                exact_max_rows=50,
                exact_max_fraction=0.0,
            )
            assert result.plan.strategy == "hnsw"
            assert conn.execute(text("SHOW hnsw.ef_search")).scalar() == str(result.plan.ef_search)
            assert conn.execute(text("SHOW hnsw.iterative_scan")).scalar() == "off"  # one pass


def test_filtered_search_is_one_statement_after_its_settings(data: Fixture) -> None:
    with Catalog.open(data.url) as catalog:
        statements = recorded_statements(catalog.search_engine)
        q = queries(data, 0, 1)[0]
        for kwargs in (
            {"category": [f"c{c:02d}" for c in range(5)]},  # 10%, near: one HNSW pass
            {"category": [f"c{c:02d}" for c in range(25, 30)]},  # 10%, far: the pass is short, exact
            {"category": "c00", "price_max": 5},  # 1%: exact
            {"attributes": {"tag": "unique"}, "tenant": "globex"},
        ):
            statements.clear()
            assert catalog.search(vector=q, k=10, **kwargs)
            searches = [s for s in statements if "<=>" in s]
            settings = [s for s in statements if s.startswith("SELECT set_config(") and "hnsw." in s]
            assert len(searches) == 1 and len(settings) == 1, (kwargs, statements)
            assert statements.index(settings[0]) < statements.index(searches[0])


def test_a_hit_from_a_row_is_the_hit_its_constructor_makes() -> None:
    """strategy.hit_of fills a Hit's fields without its frozen __init__: the same hit, every field."""
    from collections import namedtuple
    from decimal import Decimal

    from imgsearch.records import Hit
    from imgsearch.search.strategy import hit_of

    row = namedtuple("Row", "image_id product_id tenant category price distance title brand currency")
    found = row(7, "p7", "acme", "shoes", Decimal("9.50"), 0.25, "Red boot", "Acme", "EUR")
    made = Hit(7, "p7", "acme", "shoes", Decimal("9.50"), 0.25, 0.75, title="Red boot", brand="Acme", currency="EUR")
    assert hit_of(found) == made and hit_of(found).matched_by is not hit_of(found).matched_by
    extra = {"matched_by": {"lexical": 2}, "relevance": 0.5, "boost": 0.1}
    assert hit_of(found, **extra) == Hit(**{**made.__dict__, **extra})
    lexical = found._replace(distance=None)
    assert hit_of(lexical) == Hit(7, "p7", "acme", "shoes", Decimal("9.50"), None, None, title="Red boot",
                                  brand="Acme", currency="EUR")  # fmt: skip
    with pytest.raises(TypeError, match="no field 'colour'"):
        hit_of(found, colour="red")


@pytest.mark.parametrize(
    ("name", "kwargs", "exact_max_rows", "exact_max_fraction", "strategy"),
    [
        # (this catalog holds 10,000 rows: 10% is about 1,000)
        ("10% near", {"category": [f"c{c:02d}" for c in range(5)]}, 500, 0.15, "hnsw"),
        ("10% far", {"category": [f"c{c:02d}" for c in range(25, 30)]}, 500, 0.15, "exact"),
        ("10% far", {"category": [f"c{c:02d}" for c in range(25, 30)]}, 50, 0.0, "hnsw_iterative"),
        ("1% near", {"category": "c00"}, 4000, 0.15, "exact"),
        ("1% near", {"category": "c00"}, 50, 0.0, "hnsw"),
        ("none", {"category": "no-such-category"}, 4000, 0.15, "exact"),
    ],
)
def test_each_strategy_returns_the_exact_top_k(
    catalog: Catalog,
    data: Fixture,
    name: str,
    kwargs: dict,
    exact_max_rows: int,
    exact_max_fraction: float,
    strategy: str,
) -> None:
    """One pass when the filter's rows surround the query, exact when they lie far away and
    are few enough, an iterative scan when they are many: the same top-k every way."""
    from imgsearch import search as search_mod

    q = queries(data, 0, 1)[0]
    with catalog.engine.begin() as conn:
        result = search_mod.search_vector(
            conn,
            catalog.active_model,
            q,
            search_mod.Filters(**kwargs),
            K,
            exact_max_rows=exact_max_rows,
            exact_max_fraction=exact_max_fraction,
        )
        exact = conn.execute(
            search_mod.exact_statement(catalog.active_model, q, search_mod.Filters(**kwargs), K)
        ).all()
    assert result.plan.strategy == strategy, (name, result.plan)
    assert len(result.hits) == len(exact) == (0 if name == "none" else K)
    assert len({h.image_id for h in result.hits} & {r.image_id for r in exact}) >= K - 1 if exact else True


def test_the_iterative_pool_is_filled_then_re_sorted(catalog: Catalog, data: Fixture) -> None:
    """The relaxed iterative scan returns rows roughly by distance: all ``pool`` of them are
    collected, then re-sorted. (PostgreSQL 17+ takes a CTE's rows as sorted by its ORDER BY, and
    re-sorting by the same column it would keep the scan's first k.)"""
    from imgsearch import search as search_mod

    q = queries(data, 0, 1)[0]
    far = search_mod.Filters(category=[f"c{c:02d}" for c in range(25, 30)])  # 1,000 rows
    plan = search_mod.iterative_plan(K, -1, N)
    stmt = search_mod.pooled_statement(catalog.active_model, q, far, plan.pool, K, 0, False)
    with catalog.engine.begin() as conn:
        search_mod.set_local(conn, plan, with_planner=True)
        lines = explain(conn, stmt, "ANALYZE, COSTS OFF, SUMMARY OFF").splitlines()
    top, pool = (line for line in lines if line.lstrip(" ->").startswith("Limit"))
    assert int(re.search(r"rows=(\d+)", pool)[1]) == plan.pool, lines  # type: ignore[index]
    assert int(re.search(r"rows=(\d+)", top)[1]) == K, lines  # type: ignore[index]
    assert any("Sort" in line for line in lines), lines


def test_statements_reused_across_searches_take_each_searchs_values(catalog: Catalog, data: Fixture) -> None:
    """Statements are built once per shape of filters and run with new values each time."""
    q = queries(data, 0, 1)[0]
    for _ in range(2):
        for tenant in ("globex", "acme"):
            for category in ("c00", "c01", "c30"):
                hits = catalog.search(vector=q, k=5, tenant=tenant, category=category, price_max=1000)
                assert hits and all(h.tenant == tenant and h.category == category for h in hits)
            for pair in (["c02", "c03"], ["c40", "c41"]):
                hits = catalog.search(vector=q, k=5, category=pair)
                assert hits and {h.category for h in hits} <= set(pair)


def test_category_lists_of_any_length_share_one_statement(data: Fixture) -> None:
    """A list of categories is one array parameter: the SQL text (and the server's prepared
    statement) is the same for two categories or seven."""
    with Catalog.open(data.url) as catalog:
        statements = recorded_statements(catalog.search_engine)
        q = queries(data, 0, 1)[0]
        seen = set()
        for categories in (["c00", "c01"], ["c02", "c03", "c04"], [f"c{c:02d}" for c in range(10, 17)]):
            statements.clear()
            hits = catalog.search(vector=q, k=5, category=categories)
            assert hits and {h.category for h in hits} <= set(categories)
            seen.update(s for s in statements if "<=>" in s)
        assert len(seen) == 1


@pytest.mark.parametrize("tenant", [None, "acme"], ids=["category list", "shop's category list"])
def test_shapes_that_plan_alike_run_on_a_cached_plan_with_the_exact_top_k(
    data: Fixture, tenant: str | None
) -> None:
    """A category list (one indexed column), alone or in a shop (tenant and category: one index),
    runs on the plan PostgreSQL caches for its statement, and that one plan serves lists whose
    rows surround the query (the HNSW pass) and lists whose rows lie far away (the exact scan).
    So does a category's price range (one index on both, migration 0029); a category's attributes
    (an index of each table, which leads depends on the values; in a shop, the keys of the
    products they match) are planned for each search's."""
    from imgsearch import search as search_mod

    near = [f"c{c:02d}" for c in range(3)]
    far = [f"c{c:02d}" for c in range(25, 29)]
    settings = Settings(exact_max_rows=100, exact_max_fraction=0.15)
    with one_connection(data.url, settings) as catalog:
        strategies = set()
        for n, q in enumerate(queries(data, 0, 12)):
            categories = near if n % 2 else far
            with catalog.engine.begin() as conn:
                result = search_mod.search_vector(
                    conn,
                    catalog.active_model,
                    q,
                    search_mod.Filters(tenant=tenant, category=categories),
                    K,
                    exact_max_rows=100,
                    exact_max_fraction=0.15,
                )
                assert conn.execute(text("SHOW plan_cache_mode")).scalar() == "force_generic_plan"
            strategies.add(result.plan.strategy)
            mask = np.isin([r["category"] for r in data.rows], categories)
            if tenant is not None:
                mask &= np.array([r["tenant"] == tenant for r in data.rows])
            sims = exact_similarities(data.vectors[mask], q)
            truth = set(data.ids[mask][np.argsort(-sims)[:K]].tolist())
            assert len(truth & {h.image_id for h in result.hits}) >= K - 1, (n, result.plan)
        for q in queries(data, 3, 8):
            assert catalog.search(vector=q, k=K, tenant=tenant, category="c03", price_min=30, price_max=35)
            catalog.search(vector=q, k=K, tenant=tenant, category="c03", attributes={"bucket": 7})
        with catalog.engine.connect() as conn:  # the pool's one connection, where psycopg prepared them
            prepared = conn.execute(
                text("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
            ).all()
    assert strategies == {"hnsw", "exact"}
    # a shop's attributes: the keys of its products that match (imgsearch.search.shop_filters)
    attributes = "attributes @>" if tenant is None else "embeddings.product_pk = ANY"
    kinds = {"list": "embeddings.category = ANY", "price": "embeddings.price_units >=", "attributes": attributes}
    plans = {kind: (g, c) for s, g, c in prepared if "one_pass" in s for kind, sql in kinds.items() if sql in s}
    generic, custom = plans["list"]
    assert generic > 0 and custom == 0, "the category list ran on its cached plan"
    generic, custom = plans["price"]
    assert generic > 0 and custom == 0, "the category's price range ran on its cached plan"
    generic, custom = plans["attributes"]
    assert generic == 0 and custom > 0, "a category's attributes were planned for each search's values"


def test_cached_plans_can_be_turned_off(data: Fixture) -> None:
    with one_connection(data.url, Settings(cached_plans=False)) as catalog:
        for q in queries(data, 0, 8):
            assert len(catalog.search(vector=q, k=K, category=["c00", "c01"])) == K
            assert len(catalog.search(vector=q, k=K)) == K
        with catalog.engine.connect() as conn:
            searches = (
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE '%<=>%'"
            )
            plans = conn.execute(text(searches)).all()
    assert len(plans) == 2 and all(generic == 0 and custom > 0 for generic, custom in plans), plans


@pytest.mark.parametrize(
    "kwargs",
    [
        {"category": ["c00", "c01"]},
        {"category": "c00"},
        {"tenant": "globex"},
        {"attributes": {"bucket": 7}},
        {"tenant": "globex", "category": "c00"},
        {"tenant": "globex", "category": ["c00", "c01"]},
        {"price_min": 10, "price_max": 20},
        {"category": "c00", "price_max": 20},
        {"category": ["c00", "c01"], "price_min": 10},
        {"tenant": "globex", "category": "c00", "price_min": 10, "price_max": 20},
        {},
    ],
    ids=[
        "category list",
        "category",
        "tenant",
        "attributes",
        "shop category",
        "shop category list",
        "price range",
        "category price range",
        "category list price range",
        "shop category price range",
        "unfiltered",
    ],
)
def test_a_cached_plan_takes_hnsw_for_the_pass_and_reads_no_whole_table(
    data: Fixture, catalog: Catalog, kwargs: dict
) -> None:
    """Planned without values, from average row estimates, the plan still walks the HNSW index
    for the one pass and reads the filter's rows through their index for the exact scan; a
    shop's category through the index on both columns, and a category's price range (a shop's
    too) through the index on the category then the price (migration 0029)."""
    from imgsearch import search as search_mod

    filters = search_mod.Filters(**kwargs)
    assert filters.plans_alike(on_embeddings=True)
    model = catalog.active_model
    q = data.vectors[0]
    if kwargs:
        stmt = search_mod.filtered_statement(
            model,
            q,
            filters,
            K,
            0,
            exact_max_rows=100,
            exact_max_fraction=0.15,
            one_pass=True,
            with_embeddings=False,
        )
    else:
        stmt = search_mod.hnsw_statement(model, q, filters, search_mod.fetch_limit(K))
    with catalog.engine.begin() as conn:
        search_mod.set_local(
            conn, search_mod.Plan("hnsw", -1, ef_search=200), with_planner=True, cached_plan=True
        )
        plan = explain_generic(conn, stmt)
    assert f"embeddings_hnsw_m{model.id}" in plan
    assert "Seq Scan on embeddings" not in plan and "Seq Scan on products" not in plan, plan
    if "tenant" in kwargs and "category" in kwargs:
        assert "embeddings_tenant_category_price_idx" in plan, plan
    elif "price_min" in kwargs or "price_max" in kwargs:
        # a category and its price range both in one index's condition
        index = "embeddings_category_price_idx" if "category" in kwargs else "embeddings_price_idx"
        assert index in plan, plan


def test_which_shapes_plan_alike() -> None:
    from imgsearch.search import Filters, fetch_size

    alike = [
        {},
        {"tenant": "a"},
        {"category": "c"},
        {"category": ["a", "b"]},
        {"attributes": {"x": 1}},
        {"tenant": "a", "category": "c"},
        {"tenant": "a", "category": ["a", "b"]},
    ]
    # on embeddings' indexes alone (the vector statements), prices too; over products, per search
    prices = [
        {"price_max": 5},
        {"price_min": 1, "price_max": 5},
        {"category": "c", "price_min": 1},
        {"category": ["a", "b"], "price_max": 5},
        {"tenant": "a", "category": "c", "price_max": 5},
        {"tenant": "a", "category": ["a", "b"], "price_min": 1, "price_max": 5},
    ]
    per_search = [
        {"tenant": "a", "price_min": 1},
        {"tenant": "a", "attributes": {"x": 1}},
        {"category": "c", "attributes": {"x": 1}},
        {"price_max": 5, "attributes": {"x": 1}},
        {"category": "c", "brand": "b", "price_max": 5},
        {"where": Product.price > 1},
    ]
    assert all(Filters(**kw).plans_alike() for kw in alike)
    assert all(Filters(exclude_image=1, **kw).plans_alike() for kw in alike)
    assert all(Filters(exclude_product=1, **kw).plans_alike(on_embeddings=True) for kw in alike + prices)
    assert not any(Filters(**kw).plans_alike() for kw in prices)
    assert not any(Filters(**kw).plans_alike(on_embeddings=True) for kw in per_search)
    assert [fetch_size(n) for n in (1, 10, 16, 17, 500, 4000)] == [16, 16, 16, 32, 512, 4096]


def test_hnsw_plan_uses_the_index(data: Fixture, catalog: Catalog) -> None:
    from imgsearch import search as search_mod

    stmt = search_mod.hnsw_statement(
        catalog.active_model, data.vectors[0], search_mod.Filters(tenant="acme"), 10
    )
    with catalog.engine.begin() as conn:
        plan = explain(conn, stmt)
    assert f"embeddings_hnsw_m{catalog.active_model.id}" in plan


def test_composable_select_for_orm_users(catalog: Catalog, data: Fixture) -> None:
    from sqlalchemy.orm import Session

    q = queries(data, 6, 1)[0]
    stmt = catalog.search_select(vector=q, category=["c06", "c07"], k=10)
    stmt = stmt.where(Image.format.is_(None)).add_columns(Product.attributes)  # the app's own additions
    with Session(catalog.engine) as session, session.begin():
        catalog.apply_search_settings(session.connection())
        rows = session.execute(stmt).all()
    expected = catalog.search(vector=q, category=["c06", "c07"], k=10)
    assert len(rows) == 10 and [r.distance for r in rows] == sorted(r.distance for r in rows)
    assert len({r.image_id for r in rows} & {h.image_id for h in expected}) >= 9
    assert all("bucket" in r.attributes for r in rows)


def test_searches_send_the_query_vector_in_binary_and_composed_selects_in_text(
    catalog: Catalog, data: Fixture
) -> None:
    """catalog.search binds its query vector as a HalfvecValue (psycopg writes it in halfvec's
    binary form); a composed Select binds text, so an app's own engine runs it as it is, with the
    very distances the search computes."""
    params: list[Any] = []
    event.listen(catalog.search_engine, "before_cursor_execute", lambda *args: params.append(args[3]))
    q = queries(data, 6, 1)[0]
    for kwargs in ({}, {"category": ["c06", "c07"]}, {"category": "c06"}):
        params.clear()
        hits = catalog.search(vector=q, k=10, **kwargs)
        sent = [v for p in params if isinstance(p, dict) for v in p.values() if isinstance(v, HalfvecValue)]
        assert len(sent) == 1 and np.array_equal(sent[0].values, q.astype(np.float16)), kwargs
        app_engine = create_engine(data.url)  # an application's engine: nothing of imgsearch's registered
        try:
            with app_engine.begin() as conn:
                catalog.apply_search_settings(conn)
                rows = conn.execute(catalog.search_select(vector=q, k=10, **kwargs)).all()
        finally:
            app_engine.dispose()
        composed = {r.image_id: r.distance for r in rows}
        assert len(hits) == 10 and len(rows) == 10, kwargs
        common = [h for h in hits if h.image_id in composed]
        assert len(common) >= 9 and all(h.distance == composed[h.image_id] for h in common), kwargs


def test_a_search_runs_again_when_its_connection_was_closed(
    catalog: Catalog, data: Fixture, server_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Searches take connections without a ping: when the server closed one (a restart, an idle
    timeout), the search runs again on a new connection instead of failing."""
    from tests.conftest import _admin

    q = queries(data, 3, 1)[0]
    expected = [h.image_id for h in catalog.search(vector=q, k=10, category=["c03", "c04"])]
    with _admin(server_url) as admin:
        closed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
            (make_url(data.url).database,),
        ).fetchone()
    assert closed is not None and closed[0] >= 1
    with caplog.at_level("WARNING", logger="imgsearch.catalog"):
        again = [h.image_id for h in catalog.search(vector=q, k=10, category=["c03", "c04"])]
    assert again == expected
    assert "connection was closed" in caplog.text
