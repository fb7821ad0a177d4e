"""The query log's statements that look rows up by their keys, whatever the catalog's or the log's
size: the recorder's, each hit's product (imgsearch.learning.queries.write); the events' check,
the searches they name (imgsearch._checked_events, migration 0053)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from imgsearch.learning import queries
from imgsearch.records import Hit

MORE_PRODUCTS = 20_000  # enough that reading every product costs more than a batch's lookups
MORE_SEARCHES = 20_000  # the same for a day of the log


@pytest.fixture(scope="module")
def engine(shop_url: str) -> Iterator[Engine]:
    engine = create_engine(shop_url)
    yield engine
    engine.dispose()


def _hit(tenant: str, product_id: str) -> Hit:
    return Hit(image_id=1, product_id=product_id, tenant=tenant, category=None, price=None, distance=0.1, score=0.9)


def _row(tenant: str | None, hits: list[tuple[str, str]]) -> dict[str, Any]:
    return queries.row(
        queries.new_query_id(), tenant=tenant, client_id=None, user_query=None, attributes={"test": "writes"},
        offset=0, hits=[_hit(t, p) for t, p in hits],
    )  # fmt: skip


def _keys(engine: Engine) -> dict[tuple[str, str], int]:
    with engine.connect() as conn:
        return {(r.tenant, r.product_id): int(r.id) for r in conn.execute(text("SELECT id, tenant, product_id FROM imgsearch.products"))}


def _stored(engine: Engine, rows: list[dict[str, Any]]) -> list[list[int | None]]:
    with engine.connect() as conn:
        found = dict(
            conn.execute(
                text("SELECT query_id::text, product_pks FROM imgsearch.search_queries WHERE query_id = ANY(CAST(:ids AS uuid[]))"),
                {"ids": [r["query_id"] for r in rows]},
            ).all()
        )
    return [found[r["query_id"]] for r in rows]


def test_a_batch_places_each_hits_product_key_in_its_searchs_order(engine: Engine) -> None:
    key = _keys(engine)
    batch = [
        # a shop's search: a product gone since (NULL), another shop's product (NULL: not the
        # search's shop), its own products in the hits' order, one of them twice
        _row("acme", [("acme", "p03"), ("acme", "gone"), ("acme", "p01"), ("globex", "g0"), ("acme", "p03")]),
        # a search across shops ('' scope): every shop's products
        _row(None, [("globex", "g1"), ("acme", "p00"), ("globex", "g0")]),
        _row("globex", []),  # no hits
        _row("acme", [("acme", "p02")]),
    ]
    assert queries.write(engine, batch)
    assert _stored(engine, batch) == [
        [key["acme", "p03"], None, key["acme", "p01"], None, key["acme", "p03"]],
        [key["globex", "g1"], key["acme", "p00"], key["globex", "g0"]],
        [],
        [key["acme", "p02"]],
    ]


def test_a_full_batch_of_searches_is_written_by_one_statement(engine: Engine) -> None:
    key = _keys(engine)
    ids = sorted(p for t, p in key if t == "acme")
    batch = [_row("acme", [("acme", ids[(i + j) % len(ids)]) for j in range(10)]) for i in range(queries.BATCH)]
    assert queries.write(engine, batch)
    assert _stored(engine, batch) == [[key["acme", ids[(i + j) % len(ids)]] for j in range(10)] for i in range(queries.BATCH)]


def _products_read(plan: dict[str, Any]) -> list[str]:
    """Each plan node that reads ``products``: its node type."""
    found = [plan["Node Type"]] if plan.get("Relation Name") == "products" else []
    for child in plan.get("Plans", []):
        found += _products_read(child)
    return found


@pytest.mark.parametrize("statistics", ["fresh", "analyzed"])
def test_a_batch_looks_its_hits_up_rather_than_read_every_product(engine: Engine, statistics: str) -> None:
    """A batch's plan, fresh (statistics not gathered since the products came) and analyzed, on
    a catalog of 20,000 more products: each hit's product found by the shop's key, no product
    read that no hit names (the join it replaced hashed every product: 30-60 ms a batch at
    100,000 products)."""
    with engine.begin() as conn:
        if not conn.execute(text("SELECT count(*) >= :n FROM imgsearch.products"), {"n": MORE_PRODUCTS}).scalar():
            conn.execute(
                text(
                    "INSERT INTO imgsearch.products (tenant, product_id) "
                    "SELECT 'acme', 'bulk-' || g FROM generate_series(1, :n) g"
                ),
                {"n": MORE_PRODUCTS},
            )
        if statistics == "analyzed":
            conn.execute(text("ANALYZE imgsearch.products"))
    hits = [("acme", f"bulk-{i}") for i in range(1, 11)]
    for batch in ([_row("acme", hits)], [_row(None, hits)] * 50):
        with engine.connect() as conn:
            (plan,) = conn.execute(
                text("EXPLAIN (FORMAT JSON) " + queries.INSERT.text), {"rows": json.dumps(batch, default=str)}
            ).scalar_one()
        read = _products_read(plan["Plan"])
        assert read and all(node in ("Index Scan", "Index Only Scan") for node in read), read


@pytest.mark.parametrize("shop", [None, "acme"])
def test_a_batch_of_events_reads_only_the_searches_it_names(engine: Engine, shop: str | None) -> None:
    """Events on two searches, among 20,000 more of the same day: recorded, and only the rows of
    those searches read from the log (the join it replaced hashed the whole day: 175-230 ms for 20
    events once a day holds 100,000 searches). ``shop``: the caller's tenant (a shop's login or
    scope), or none (an admin's)."""
    key = _keys(engine)
    searches = [_row("acme", [("acme", "p00"), ("acme", "p01")]), _row("acme", [("acme", "p02")])]
    assert queries.write(engine, searches)
    with engine.begin() as conn:
        if not conn.execute(
            text("SELECT count(*) >= :n FROM imgsearch.search_queries WHERE query_attributes ? 'filler'"),
            {"n": MORE_SEARCHES},
        ).scalar():
            conn.execute(
                text(
                    "INSERT INTO imgsearch.search_queries (query_id, searched_at, tenant, query_attributes, "
                    "result_offset, product_ids, image_ids, product_pks) "
                    "SELECT u, uuid_extract_timestamp(u), 'acme', '{\"filler\": true}', 0, '{p00}', '{1}', "
                    "ARRAY[CAST(:pk AS bigint)] FROM (SELECT uuidv7() AS u FROM generate_series(1, :n)) AS s"
                ),
                {"n": MORE_SEARCHES, "pk": key["acme", "p00"]},
            )
    events = [
        {"query_id": searches[0]["query_id"], "action": "click", "object_id": "p01", "position": 2},
        {"query_id": searches[1]["query_id"], "action": "add_to_cart", "object_id": "p02", "position": 1},
        {"query_id": searches[0]["query_id"], "action": "impression", "object_id": "p00", "position": 1},
    ]
    # rows of the log read, by scans and through indexes, as this session counts them (its counts
    # not yet reported include its earlier transactions': the difference across the call is the call's)
    scanned = text(
        "SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0) FROM pg_stat_xact_user_tables "
        "WHERE relname LIKE 'search_queries%'"
    )
    with engine.begin() as conn:
        if shop is not None:
            conn.execute(text("SELECT set_config('imgsearch.tenant', :t, true)"), {"t": shop})
        before = conn.execute(scanned).scalar_one()
        recorded = conn.execute(
            text("SELECT imgsearch.record_events(CAST(:events AS jsonb))"), {"events": json.dumps(events)}
        ).scalar_one()
        read = conn.execute(scanned).scalar_one() - before
        pks = conn.execute(
            text("SELECT product_pk FROM imgsearch.search_events WHERE query_id = ANY(CAST(:ids AS uuid[])) ORDER BY position, action_name"),
            {"ids": [s["query_id"] for s in searches]},
        ).scalars().all()
    assert recorded == {"recorded": 3, "duplicates": 0}
    assert sorted(pks) == sorted([key["acme", "p01"], key["acme", "p02"], key["acme", "p00"]])
    assert read <= 2 * len(searches)
