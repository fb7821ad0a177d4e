"""Feedback events: recorded once each, refused one by one with their index, nothing half-written,
within the tenant; the same function from a SQL console; logs by day with a retention."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy import make_url, text

from imgsearch import Catalog
from imgsearch.access import tenancy
from imgsearch.db.engine import libpq_conninfo
from imgsearch.errors import InvalidEvents, InvalidInput
from tests.helpers import searches_recorded
from tests.learning.conftest import QUERY


def _count(catalog: Catalog) -> int:
    with catalog.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM imgsearch.search_events")).scalar_one())


def _click(result: Any, position: int, **extra: Any) -> dict[str, Any]:
    hit = result[position - 1 - getattr(result, "offset", 0)]
    return {"query_id": result.query_id, "action": "click", "object_id": hit.product_id, "position": position,
            **extra}  # fmt: skip


def test_events_on_a_searchs_hits_are_recorded(shop: Catalog) -> None:
    result = shop.search(text=QUERY, tenant="acme", k=5, mode="semantic")
    hit = result[2]
    events = [
        {"query_id": result.query_id, "action": "impression", "object_id": result[0].product_id, "position": 1},
        {"query_id": result.query_id, "action": "click", "object_id": hit.product_id, "position": 3,
         "time": dt.datetime.now(dt.UTC).isoformat(), "client_id": "web-1"},
        {"query_id": uuid.UUID(result.query_id), "action": "add_to_cart", "object_id": hit.image_id, "position": 3,
         "time": dt.datetime.now(dt.UTC)},
        {"query_id": result.query_id, "action": "purchase", "object_id": str(hit.image_id), "position": 3},
    ]  # fmt: skip
    recorded = shop.record_events("acme", events)
    assert (recorded.recorded, recorded.duplicates) == (4, 0)
    with shop.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT action_name, object_id_field, position, e.tenant, query_norm, client_id, p.product_id "
                "FROM imgsearch.search_events e JOIN imgsearch.products p ON p.id = e.product_pk "
                "WHERE query_id = CAST(:q AS uuid) ORDER BY received_at, action_name"
            ),
            {"q": result.query_id},
        ).all()
    assert sorted((r.action_name, r.object_id_field) for r in rows) == [
        ("add_to_cart", "image_id"), ("click", "product_id"), ("impression", "product_id"), ("purchase", "image_id")
    ]  # fmt: skip
    assert {r.product_id for r in rows if r.action_name != "impression"} == {hit.product_id}
    assert {r.tenant for r in rows} == {"acme"} and {r.query_norm for r in rows} == {"red shoes"}
    assert [r.client_id for r in rows if r.action_name == "click"] == ["web-1"]


def test_a_repeated_event_id_counts_once(shop: Catalog) -> None:
    result = shop.search(text=QUERY, tenant="acme", k=5, mode="semantic")
    event = _click(result, 1, event_id="e-1")
    first = shop.record_events("acme", [event, event, _click(result, 2, event_id="e-2")])
    assert (first.recorded, first.duplicates) == (2, 1)
    again = shop.record_events("acme", [event, _click(result, 2, event_id="e-2"), _click(result, 3)])
    assert (again.recorded, again.duplicates) == (1, 2)
    with shop.engine.connect() as conn:
        found = conn.execute(
            text("SELECT count(*) FROM imgsearch.search_events WHERE event_id = 'e-1'")
        ).scalar_one()
    assert found == 1


def test_bad_events_are_refused_one_by_one_and_nothing_is_written(shop: Catalog) -> None:
    mine = shop.search(text=QUERY, tenant="acme", k=5, mode="semantic")
    theirs = shop.search(text=QUERY, tenant="globex", k=3, mode="semantic")
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).isoformat()
    events: list[Any] = [
        _click(mine, 1),  # 0: fine
        {**_click(mine, 1), "query_id": str(uuid.uuid4())},  # 1: unknown
        {**_click(mine, 1), "query_id": theirs.query_id, "object_id": theirs[0].product_id},  # 2: another tenant's
        {**_click(mine, 1), "position": 6},  # 3: beyond the 5 hits
        {**_click(mine, 1), "time": future},  # 4: the future
        {**_click(mine, 1), "action": "like"},  # 5: unknown action
        {**_click(mine, 1), "object_id": mine[1].product_id},  # 6: not the hit at 1
        "click",  # 7: not an object
        {**_click(mine, 1), "colour": "red"},  # 8: unknown field
        {**_click(mine, 1), "position": float("nan")},  # 9: not JSON
        {**_click(mine, 1), "position": 0},  # 10: positions start at 1
        {**_click(mine, 1), "time": "yesterday"},  # 11: not ISO 8601
        {**_click(mine, 1), "time": dt.datetime.now()},  # 12: naive
        {**_click(mine, 1), "query_id": "'; DROP TABLE imgsearch.products; --"},  # 13: injection
        {**_click(mine, 1), "position": "1"},  # 14: a string
        {"query_id": mine.query_id},  # 15: no action
        {**_click(mine, 1), "time": "2020-01-01T00:00:00Z"},  # 16: before its search
    ]
    before = _count(shop)
    with pytest.raises(InvalidEvents) as caught:
        shop.record_events("acme", events)
    problems = dict(caught.value.problems)
    assert sorted(problems) == list(range(1, len(events)))
    assert "no search has query_id" in problems[1] and "no search has query_id" in problems[2]
    assert "outside" in problems[3] and "positions 1 to 5" in problems[3]
    assert "future" in problems[4]
    assert "action must be one of" in problems[5] and "like" in problems[5]
    assert "not the hit at position 1" in problems[6]
    assert "JSON object" in problems[7]
    assert "unknown field" in problems[8] and "colour" in problems[8]
    assert "JSON" in problems[9]
    assert "position must be a whole number" in problems[10] and "position" in problems[14]
    assert "ISO 8601" in problems[11] and "time zone" in problems[12]
    assert "no search has query_id" in problems[13]
    assert "action" in problems[15]
    assert "before its search" in problems[16]
    assert str(caught.value).startswith(f"{len(events) - 1} of {len(events)} events refused, nothing recorded")
    assert isinstance(caught.value, InvalidInput)
    assert _count(shop) == before
    with shop.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM imgsearch.products")).scalar_one() > 0


@pytest.mark.parametrize("events", [[], {"query_id": "x"}, "events", None, 42])
def test_a_batch_must_be_a_non_empty_list(shop: Catalog, events: Any) -> None:
    with pytest.raises(InvalidInput, match="events"):
        shop.record_events("acme", events)


def test_a_batch_has_at_most_ten_thousand_events(shop: Catalog) -> None:
    result = shop.search(text=QUERY, tenant="acme", k=1, mode="semantic")
    with pytest.raises(InvalidInput, match="at most 10000"):
        shop.record_events("acme", [_click(result, 1)] * 10_001)


def test_an_admin_records_events_of_any_tenant(shop: Catalog) -> None:
    theirs = shop.search(text=QUERY, tenant="globex", k=3, mode="semantic")
    assert shop.record_events(None, [_click(theirs, 2)]).recorded == 1


def test_a_console_login_records_its_own_tenants_events_in_sql(shop: Catalog) -> None:
    mine = shop.search(text=QUERY, tenant="acme", k=3, mode="semantic")
    theirs = shop.search(text=QUERY, tenant="globex", k=3, mode="semantic")
    assert searches_recorded(shop.engine, [mine.query_id, theirs.query_id]) == 2  # written after they answered
    login = f"acme_events_{uuid.uuid4().hex[:8]}"
    password = tenancy.create_login(shop.engine, login, "acme")
    url = make_url(shop.engine.url).set(username=login, password=password)
    with psycopg.connect(libpq_conninfo(url), autocommit=True) as conn:
        found = conn.execute(
            "SELECT imgsearch.record_events(%s::jsonb)",
            (psycopg.types.json.Jsonb([_click(mine, 1)]),),
        ).fetchone()
        assert found is not None and found[0] == {"recorded": 1, "duplicates": 0}
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="event 0: no search has query_id"):
            conn.execute("SELECT imgsearch.record_events(%s::jsonb)", (psycopg.types.json.Jsonb([_click(theirs, 1)]),))
        ubi = conn.execute("SELECT document FROM imgsearch.ubi_queries").fetchall()
    assert ubi and {row[0]["query_attributes"]["tenant"] for row in ubi} == {"acme"}


def test_ubi_views_give_user_behavior_insights_documents(shop: Catalog) -> None:
    result = shop.search(text=QUERY, tenant="acme", k=3, mode="semantic", client_id="c-9")
    shop.record_events("acme", [_click(result, 2, event_id="ubi-1")])
    with shop.engine.connect() as conn:
        query = conn.execute(
            text("SELECT document FROM imgsearch.ubi_queries WHERE query_id = :q"), {"q": result.query_id}
        ).scalar_one()
        event = conn.execute(
            text("SELECT document FROM imgsearch.ubi_events WHERE query_id = :q"), {"q": result.query_id}
        ).scalar_one()
    assert query["query_id"] == result.query_id and query["user_query"] == QUERY
    assert query["client_id"] == "c-9" and query["application"] == "imgsearch"
    assert query["query_response_hit_ids"] == [hit.product_id for hit in result]
    assert query["timestamp"].endswith("Z")
    assert event["action_name"] == "click" and event["query_id"] == result.query_id
    assert event["event_attributes"]["object"] == {"object_id": result[1].product_id, "object_id_field": "product_id"}
    assert event["event_attributes"]["position"] == {"ordinal": 2}


def test_the_logs_keep_daily_partitions_and_drop_what_is_past_the_retention(shop: Catalog) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    millis = int(old.timestamp() * 1000)
    query_id = uuid.UUID(int=(millis << 80) | (0x7 << 76) | (0x2 << 62) | 12345)
    with shop.engine.begin() as conn:
        day = old.strftime("%Y%m%d")
        start, end = old.date(), old.date() + dt.timedelta(days=1)  # DDL takes no parameters
        conn.execute(
            text(
                f"CREATE TABLE imgsearch_log.search_queries_{day} PARTITION OF imgsearch.search_queries "
                f"FOR VALUES FROM ('{start}T00:00:00Z') TO ('{end}T00:00:00Z')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO imgsearch.search_queries (query_id, searched_at, tenant, product_ids, image_ids, "
                "product_pks) VALUES (CAST(:q AS uuid), uuid_extract_timestamp(CAST(:q AS uuid)), 'acme', "
                "'{}', '{}', '{}')"
            ),
            {"q": str(query_id)},
        )
    refreshed = shop.refresh_boosts()  # the job keeps the logs: 30 days of retention here?
    assert refreshed.partitions_dropped == 0  # the default retention is 90 days
    with shop.engine.begin() as conn:
        kept = conn.execute(text("SELECT imgsearch.maintain_feedback_log(30)")).scalar_one()
        assert kept["dropped"] == 1
        assert conn.execute(
            text("SELECT count(*) FROM imgsearch.search_queries WHERE query_id = CAST(:q AS uuid)"),
            {"q": str(query_id)},
        ).scalar_one() == 0
        tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y%m%d")
        assert conn.execute(text(f"SELECT to_regclass('imgsearch_log.search_events_{tomorrow}')")).scalar()
        with pytest.raises(Exception, match="retention_days must be at least 1"):
            conn.execute(text("SELECT imgsearch.maintain_feedback_log(0)"))
