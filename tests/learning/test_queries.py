"""Every search is recorded with its hits under the query_id its answer carries."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.errors import InvalidEvents
from imgsearch.learning import queries as learned_queries
from imgsearch.learning.queries import new_query_id, normalized
from tests.helpers import searches_recorded
from tests.learning.conftest import QUERY, open_shop, query_vector


def test_query_ids_are_uuid7_carrying_the_time() -> None:
    before = time.time()
    ids = [new_query_id() for _ in range(100)]
    assert len(set(ids)) == 100
    for query_id in ids:
        assert query_id.version == 7 and query_id.variant == uuid.RFC_4122
        assert abs((query_id.int >> 80) / 1000 - before) < 5


def test_normalisation_folds_case_width_and_spaces() -> None:
    assert normalized("  Red \t SHOES ") == "red shoes"
    assert normalized("ＲＥＤ shoes") == "red shoes"  # full-width letters (NFKC)
    assert normalized("Straße") == "strasse"
    assert normalized("   ") is None and normalized(None) is None


def test_a_search_is_recorded_with_its_hits_in_order(shop: Catalog) -> None:
    result = shop.search(text=QUERY, tenant="acme", k=5, offset=2, mode="semantic", client_id="web-1",
                         price_max=100)  # fmt: skip
    assert uuid.UUID(result.query_id).version == 7
    assert searches_recorded(shop.engine, [result.query_id]) == 1
    with shop.engine.connect() as conn:
        row = conn.execute(
            text("SELECT * FROM imgsearch.search_queries WHERE query_id = CAST(:q AS uuid)"),
            {"q": result.query_id},
        ).one()
    assert row.tenant == "acme" and row.client_id == "web-1"
    assert row.user_query == QUERY and row.query_norm == "red shoes"
    assert row.result_offset == 2
    assert row.product_ids == [hit.product_id for hit in result]
    assert row.image_ids == [hit.image_id for hit in result]
    assert len(row.product_pks) == 5 and all(row.product_pks)
    assert row.query_attributes["kind"] == "text" and row.query_attributes["mode"] == "semantic"
    assert row.query_attributes["filters"] == {"price_max": 100}
    assert abs((row.searched_at.timestamp()) - (uuid.UUID(result.query_id).int >> 80) / 1000) < 0.001


def test_every_kind_of_search_has_a_query_id(shop: Catalog) -> None:
    first = shop.search(text=QUERY, tenant="acme", k=3, mode="semantic")
    answers = [
        shop.search(similar_to=first[0].image_id, tenant="acme", k=3),
        shop.search(similar_to_product="p01", tenant="acme", k=3),
        shop.search(text="shoe", tenant="acme", mode="lexical", k=3),
        shop.search(text="nothing of the sort at all", tenant="acme", mode="lexical", k=3),
    ]
    ids = [answer.query_id for answer in answers]
    assert all(ids) and len(set(ids)) == len(ids)
    assert searches_recorded(shop.engine, ids) == len(ids)
    with shop.engine.connect() as conn:
        kinds = dict(
            conn.execute(
                text(
                    "SELECT query_id::text, query_attributes->>'kind' FROM imgsearch.search_queries "
                    "WHERE query_id::text = ANY(:ids)"
                ),
                {"ids": ids},
            ).all()
        )
    assert [kinds[i] for i in ids] == ["similar_to", "similar_to_product", "text", "text"]


def test_recording_can_be_switched_off(shop_url: str, tiny_siglip: Path) -> None:
    with open_shop(shop_url, str(tiny_siglip), record_queries=False) as catalog:
        result = catalog.search(text=QUERY, tenant="acme", k=3, mode="semantic")
        assert result.query_id
        catalog.close()  # (every row handed over written)
        with catalog.engine.connect() as conn:
            found = conn.execute(
                text("SELECT count(*) FROM imgsearch.search_queries WHERE query_id = CAST(:q AS uuid)"),
                {"q": result.query_id},
            ).scalar()
    assert found == 0


def test_searches_land_in_the_days_partition(shop: Catalog) -> None:
    result = shop.search(text=QUERY, tenant="acme", k=1, mode="semantic")
    assert searches_recorded(shop.engine, [result.query_id]) == 1
    with shop.engine.connect() as conn:
        table = conn.execute(
            text("SELECT tableoid::regclass::text FROM imgsearch.search_queries WHERE query_id = CAST(:q AS uuid)"),
            {"q": result.query_id},
        ).scalar()
    assert table is not None and table.startswith("imgsearch_log.search_queries_2")


def test_a_catalog_opened_without_a_tenant_scope_records_admin_searches(shop: Catalog) -> None:
    result = shop.search(text=QUERY, k=3, mode="semantic")  # every tenant's
    assert searches_recorded(shop.engine, [result.query_id]) == 1
    with shop.engine.connect() as conn:
        tenant = conn.execute(
            text("SELECT tenant FROM imgsearch.search_queries WHERE query_id = CAST(:q AS uuid)"),
            {"q": result.query_id},
        ).one()[0]
        ubi = conn.execute(
            text("SELECT tenant, document FROM imgsearch.ubi_queries WHERE query_id = :q"),
            {"q": str(result.query_id)},
        ).one()
    assert tenant == ""  # no tenant: '' (the log's tenant is its distribution column on Citus)
    assert ubi.tenant is None and "tenant" not in ubi.document["query_attributes"]


def test_a_search_is_recorded_after_the_server_closed_the_pools_connections(
    shop_url: str, tiny_siglip: Path, server_url: str
) -> None:
    """When the server closed every connection (a restart), the search runs again on a new one
    and its record is written all the same."""
    from sqlalchemy import make_url

    from tests.conftest import _admin

    with open_shop(shop_url, str(tiny_siglip)) as shop:
        first = [shop.search(vector=query_vector(shop), tenant="acme", k=3) for _ in range(3)]
        with _admin(server_url) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (make_url(shop_url).database,),
            )
        again = shop.search(vector=query_vector(shop), tenant="acme", k=3)
        assert [h.image_id for h in again] == [h.image_id for h in first[0]]
        ids = [r.query_id for r in (*first, again)]
        assert searches_recorded(shop.engine, ids) == 4


def test_catalog_type_is_public() -> None:
    assert Catalog.record_events.__doc__ and Catalog.refresh_boosts.__doc__


def test_a_search_answers_before_its_row_is_written(
    shop_url: str, tiny_siglip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row waits (here 0.3 s) for others, then the burst's rows are written together."""
    monkeypatch.setattr(learned_queries, "WRITE_DELAY", 0.3)
    with open_shop(shop_url, str(tiny_siglip)) as catalog:
        q = query_vector(catalog)
        ids = [catalog.search(vector=q, tenant="acme", k=3).query_id for _ in range(5)]
        assert searches_recorded(catalog.engine, ids, timeout=0) == 0  # answered, not written yet
        assert searches_recorded(catalog.engine, ids) == 5


def test_an_event_right_after_its_search_waits_for_the_searchs_row(
    shop_url: str, tiny_siglip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From another catalog (another process's): the row not written yet, the batch is checked
    again once it is; from the searching catalog, its rows are written first."""
    monkeypatch.setattr(learned_queries, "WRITE_DELAY", 0.5)
    with open_shop(shop_url, str(tiny_siglip)) as searching, open_shop(shop_url, str(tiny_siglip)) as other:
        q = query_vector(searching)
        result = searching.search(vector=q, tenant="acme", k=3)
        click = {
            "query_id": result.query_id,
            "action": "click",
            "object_id": result[0].product_id,
            "position": 1,
        }
        started = time.monotonic()
        assert other.record_events("acme", [click]).recorded == 1
        assert time.monotonic() - started < learned_queries.MAX_DELAY + 1
        again = searching.search(vector=q, tenant="acme", k=3)
        started = time.monotonic()
        click = {**click, "query_id": again.query_id, "object_id": again[0].product_id}
        assert searching.record_events("acme", [click]).recorded == 1
        assert time.monotonic() - started < 0.4  # flushed, not waited for
        # a search of long ago that was never written is refused at once
        old = uuid.UUID(int=(int((time.time() - 60) * 1000) << 80) | (0x7 << 76) | (0x2 << 62) | 7)
        started = time.monotonic()
        with pytest.raises(InvalidEvents, match="no search has query_id"):
            other.record_events("acme", [{**click, "query_id": str(old)}])
        assert time.monotonic() - started < 0.5


_CRASH = """
import os, sys, time
import numpy as np
from imgsearch import Catalog
from imgsearch.settings import Settings

url, model, how = sys.argv[1:4]
catalog = Catalog.open(url, model=model, settings=Settings())
q = np.asarray(catalog.embedder.embed_text("red shoes"), dtype=np.float32).reshape(-1)
ids = [catalog.search(vector=q, tenant="acme", k=3).query_id for _ in range(5)]
time.sleep(0.5)  # past the write's delay: these are written
ids.append(catalog.search(vector=q, tenant="acme", k=3).query_id)
print(" ".join(ids), flush=True)
if how == "killed":
    os._exit(0)  # no flush, no exit hooks: as a kill -9
"""


@pytest.mark.parametrize("how", ["killed", "exits without closing its catalog"])
def test_what_a_process_that_dies_loses_is_its_last_searches_rows(
    shop_url: str, tiny_siglip: Path, tmp_path: Path, how: str
) -> None:
    script = tmp_path / "searches.py"
    script.write_text(_CRASH)
    done = subprocess.run(
        [sys.executable, str(script), shop_url, str(tiny_siglip), how.split()[0]],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    ids = done.stdout.split()
    assert len(ids) == 6
    with open_shop(shop_url, str(tiny_siglip)) as catalog:
        assert searches_recorded(catalog.engine, ids[:5], timeout=1) == 5  # older than the delay: written
        last = searches_recorded(catalog.engine, ids[5:], timeout=1)
    assert last == (0 if how == "killed" else 1)  # killed at once: its last search's row is lost


def test_searches_after_a_quiet_spell_are_written_too(shop_url: str, tiny_siglip: Path) -> None:
    """The recorder's thread, idle once its rows are written, wakes for the next search's."""
    with open_shop(shop_url, str(tiny_siglip)) as catalog:
        q = query_vector(catalog)
        first = catalog.search(vector=q, tenant="acme", k=3).query_id
        assert searches_recorded(catalog.engine, [first]) == 1
        time.sleep(0.2)  # the thread waits for rows now
        later = [catalog.search(vector=q, tenant="acme", k=3).query_id for _ in range(3)]
        assert searches_recorded(catalog.engine, later, timeout=1) == 3
