"""The SQL console's searches (migration 0024): each recorded under a query_id that
``imgsearch.last_query_id()`` returns and events can name, and each blending the learned boosts
in the library's order; a search that can't write answers unrecorded."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, make_url, text
from sqlalchemy.exc import DBAPIError

from imgsearch import Catalog
from imgsearch.access import tenancy
from imgsearch.learning.queries import normalized
from imgsearch.work import text_requests
from tests.learning.conftest import QUERY, query_vector

# learned boosts, as the boosts job would write them: p07 for "red shoes", p09 for every query
BOOSTS = [("p07", "red shoes", 1.0), ("p09", "", 0.8), ("p03", "blue hats", 1.0)]


def _cache_query(catalog: Catalog) -> None:
    """QUERY's embedding in the catalog's text cache, where search_text reads it (no worker here)."""
    with catalog.engine.begin() as conn:
        text_requests.store(
            conn, catalog.active_model.id, [(QUERY, query_vector(catalog))], catalog.embedder.logit_params()
        )


@pytest.fixture
def boosted(shop: Catalog) -> Iterator[Catalog]:
    _cache_query(shop)
    with shop.engine.begin() as conn:
        for product_id, query_norm, boost in BOOSTS:
            conn.execute(
                text(
                    "INSERT INTO imgsearch.boosts (product_pk, query_norm, tenant, product_id, boost, clicks,"
                    " conversions, expected) SELECT p.id, :q, p.tenant, p.product_id, :b, 30, 0, 10"
                    " FROM imgsearch.products p WHERE p.tenant = 'acme' AND p.product_id = :p"
                ),
                {"p": product_id, "q": query_norm, "b": boost},
            )
    shop._searcher.router.forget_graphs()  # the router reads which tenants have boosts again
    try:
        yield shop
    finally:
        with shop.engine.begin() as conn:
            conn.execute(text("DELETE FROM imgsearch.boosts"))


def _rows(conn: Connection, sql: str, **params: Any) -> list[Any]:
    return list(conn.execute(text(sql), params).all())


def _recorded(conn: Connection) -> Any:
    return conn.execute(
        text("SELECT * FROM imgsearch.search_queries WHERE query_id = imgsearch.last_query_id()")
    ).one()


def test_each_sql_search_is_recorded_with_its_hits_and_takes_events(shop: Catalog) -> None:
    q = query_vector(shop)
    _cache_query(shop)
    searches: list[tuple[str, dict[str, Any]]] = [
        ("SELECT * FROM imgsearch.search_vector(CAST(:q AS vector), 5, tenant => 'acme', price_max => 40)",
         {"kind": "vector", "mode": "semantic", "k": 5, "filters": {"price_max": 40}}),
        ("SELECT * FROM imgsearch.search_text(:text, 5, tenant => 'acme')",
         {"kind": "text", "mode": "semantic", "k": 5, "filters": {}}),
        ("SELECT * FROM imgsearch.search_hybrid(:text, 5, tenant => 'acme', category => 'footwear')",
         {"kind": "text", "mode": "hybrid", "k": 5, "filters": {"category": "footwear"}}),
        ("SELECT * FROM imgsearch.search_similar_product('acme', 'p03', 5)",
         {"kind": "similar_to_product", "similar_to_product": "p03", "k": 5}),
    ]  # fmt: skip
    ids = []
    for sql, attributes in searches:
        with shop.engine.begin() as conn:
            hits = _rows(conn, sql, q=str(q.tolist()), text=QUERY)
            row = _recorded(conn)
        assert len(hits) == 5, sql
        assert row.tenant == "acme" and row.product_ids == [h.product_id for h in hits]
        assert row.image_ids == [h.image_id for h in hits] and None not in row.product_pks
        assert row.query_attributes["via"] == "sql" and row.query_attributes["boost"] is False
        assert attributes.items() <= row.query_attributes.items(), (sql, row.query_attributes)
        assert row.user_query == (QUERY if "text" in attributes["kind"] else None)
        assert row.query_norm == (normalized(QUERY) if "text" in attributes["kind"] else None)
        ids.append((row.query_id, hits))
    with shop.engine.begin() as conn:
        similar = _rows(conn, "SELECT * FROM imgsearch.search_similar(:id, 3)", id=ids[0][1][0].image_id)
        row = _recorded(conn)
    assert row.tenant == "" and row.image_ids == [h.image_id for h in similar]
    assert row.query_attributes["similar_to"] == ids[0][1][0].image_id
    assert len({query_id for query_id, _ in ids} | {row.query_id}) == 5
    # shoppers' events name the console's searches as they name the library's
    query_id, hits = ids[1]
    done = shop.record_events(
        "acme",
        [{"query_id": str(query_id), "action": "click", "object_id": hits[1].product_id, "position": 2}],
    )
    assert done.recorded == 1


def test_sql_searches_blend_the_boosts_in_the_librarys_order(boosted: Catalog) -> None:
    catalog = boosted
    q = query_vector(catalog)
    plain = catalog.search(text=QUERY, tenant="acme", k=10, mode="semantic", parse=False, boost=False)
    lifted = catalog.search(text=QUERY, tenant="acme", k=10, mode="semantic", parse=False)
    assert [h.product_id for h in lifted] != [h.product_id for h in plain]  # the boosts do something
    hybrid = catalog.search(text=QUERY, tenant="acme", k=10, mode="hybrid", parse=False)
    by_vector = catalog.search(vector=q, tenant="acme", k=10)
    unboosted_vector = catalog.search(vector=q, tenant="acme", k=10, boost=False)
    with catalog.engine.begin() as conn:
        text_rows = _rows(conn, "SELECT * FROM imgsearch.search_text(:t, 10, tenant => 'acme')", t=QUERY)
        assert _recorded(conn).query_attributes["boost"] is True
        hybrid_rows = _rows(conn, "SELECT * FROM imgsearch.search_hybrid(:t, 10, tenant => 'acme')", t=QUERY)
        vector_rows = _rows(
            conn,
            "SELECT * FROM imgsearch.search_vector(CAST(:q AS vector), 10, tenant => 'acme')",
            q=str(q.tolist()),
        )
        conn.execute(text("SET LOCAL imgsearch.boost = off"))
        off = _rows(conn, "SELECT * FROM imgsearch.search_text(:t, 10, tenant => 'acme')", t=QUERY)
        assert _recorded(conn).query_attributes["boost"] is False
    assert [r.product_id for r in text_rows] == [h.product_id for h in lifted]
    assert [r.product_id for r in hybrid_rows] == [h.product_id for h in hybrid]
    assert [r.relevance for r in hybrid_rows] == pytest.approx([h.relevance for h in hybrid])
    assert [r.product_id for r in vector_rows] == [h.product_id for h in by_vector]
    # without text, the products' own boosts: p09's (0.8, weighed 0.5) lifts it 4 places
    vector_order = [h.product_id for h in unboosted_vector]
    assert vector_order.index("p09") - [r.product_id for r in vector_rows].index("p09") == 4
    assert [r.product_id for r in off] == [h.product_id for h in plain]
    # a lift of 2 places: p07 (eighth unboosted) rises to seventh, no further
    with catalog.engine.begin() as conn:
        conn.execute(text("SET LOCAL imgsearch.boost_max_lift = 2"))
        two = [r.product_id for r in _rows(conn, "SELECT * FROM imgsearch.search_text(:t, 10, tenant => 'acme')",
                                           t=QUERY)]  # fmt: skip
    assert [h.product_id for h in plain].index("p07") - two.index("p07") == 2


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("imgsearch.boost", "maybe", "imgsearch.boost must be on or off, got 'maybe'"),
        ("imgsearch.boost_max_lift", "101", "boost_max_lift must be a whole number of places from 0 to 100"),
        ("imgsearch.boost_max_lift", "1; DROP TABLE x", "boost_max_lift must be a whole number"),
        ("imgsearch.boost_product_weight", "NaN", "boost_product_weight must be from 0 to 1, got 'NaN'"),
        ("imgsearch.boost_product_weight", "1.5", "boost_product_weight must be from 0 to 1"),
    ],
)
def test_a_bad_boost_setting_is_named(shop: Catalog, setting: str, value: str, message: str) -> None:
    q = query_vector(shop)
    with shop.engine.begin() as conn:
        conn.execute(text("SELECT set_config(:s, :v, true)"), {"s": setting, "v": value})
        with pytest.raises(DBAPIError, match=message):
            conn.execute(
                text("SELECT * FROM imgsearch.search_vector(CAST(:q AS vector), 3)"), {"q": str(q.tolist())}
            )


def test_a_search_that_cannot_write_answers_unrecorded(shop: Catalog) -> None:
    q = str(query_vector(shop).tolist())
    sql = "SELECT image_id FROM imgsearch.search_vector(CAST(:q AS vector), 4, tenant => 'acme')"
    with shop.engine.connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM imgsearch.search_queries")).scalar_one()
        expected = _rows(conn, sql, q=q)
        assert conn.execute(text("SELECT imgsearch.last_query_id()")).scalar_one() is not None
        conn.commit()
        conn.execute(text("SET TRANSACTION READ ONLY"))
        assert _rows(conn, sql, q=q) == expected
        assert conn.execute(text("SELECT imgsearch.last_query_id()")).scalar_one() is None
        conn.rollback()
        conn.execute(text("SET LOCAL imgsearch.record_queries = off"))
        assert _rows(conn, sql, q=q) == expected
        assert conn.execute(text("SELECT imgsearch.last_query_id()")).scalar_one() is None
        conn.commit()
        after = conn.execute(text("SELECT count(*) FROM imgsearch.search_queries")).scalar_one()
    assert after == before + 1


def test_a_tenant_login_records_its_own_searches(shop: Catalog) -> None:
    url = make_url(shop.engine.url)
    login = f"sqlsearch_{url.database}"
    tenancy.create_login(shop.engine, login, "acme", password="s3cret")
    q = str(query_vector(shop).tolist())
    try:
        with psycopg.connect(
            host=url.query["host"], user=login, password="s3cret", dbname=url.database, autocommit=True
        ) as conn:
            notices: list[str] = []
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            own = conn.execute(
                "SELECT product_id FROM imgsearch.search_vector(%s::vector, 3)", [q]
            ).fetchall()
            query_id = conn.execute("SELECT imgsearch.last_query_id()").fetchone()
            # another tenant's name: no hits, and a row the policies refuse is a warning, not an error
            other = conn.execute(
                "SELECT * FROM imgsearch.search_vector(%s::vector, 3, tenant => 'globex')", [q]
            ).fetchall()
            assert conn.execute("SELECT imgsearch.last_query_id()").fetchone() == (None,)
        assert len(own) == 3 and all(p.startswith("p") for (p,) in own) and other == []
        assert any("search not recorded" in n for n in notices)
        assert query_id is not None
        with shop.engine.connect() as admin:
            tenant = admin.execute(
                text("SELECT tenant FROM imgsearch.search_queries WHERE query_id = :id"), {"id": query_id[0]}
            ).scalar_one()
        assert tenant == "acme"
    finally:
        with shop.engine.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{login}"'))
            conn.execute(text(f'DROP ROLE "{login}"'))


@pytest.mark.parametrize(
    "query",
    [
        "Red Shoes",
        "  Straße\t ＲＥＤ\u00a0 shoes ",
        "ÉCOLE  Ǆ ﬁ",
        "x" * 600 + " y",
        "   ",
        "",
        "İstanbul ΣΑΣ",
    ],
)
def test_sql_normalizes_a_query_as_the_library_does(shop: Catalog, query: str) -> None:
    with shop.engine.connect() as conn:
        sql = conn.execute(text("SELECT imgsearch.normalized_query(:q)"), {"q": query}).scalar_one()
    assert sql == normalized(query)
    assert sql is None or unicodedata.is_normalized("NFKC", sql)
