"""imgsearch.search.plans: a plan's settings, one ``set_config(..., true)`` statement (``SET
LOCAL``'s function form) whose text is made once per distinct settings."""

from __future__ import annotations

import re
from dataclasses import replace

from sqlalchemy import create_engine, text

from imgsearch.search import plans

LOCAL = r"set_config\('[a-z_.]+', '[a-z_0-9.]+', true\)"  # one setting, for the transaction only


def test_a_plans_settings_are_one_statement_whose_text_is_made_once(database_url: str) -> None:
    engine = create_engine(database_url)
    iterative = plans.Plan(
        "hnsw_iterative",
        5000,
        ef_search=300,
        max_scan_tuples=40_000,
        pool=400,
        iterative_scan="relaxed_order",
    )
    try:
        with engine.begin() as conn:
            made = plans.local_settings(conn, iterative, with_planner=True)
            assert made == plans.settings_statement(
                conn,
                {
                    **plans.PLANNER_SETTINGS,
                    "hnsw.ef_search": "300",
                    "hnsw.iterative_scan": "relaxed_order",
                    "plan_cache_mode": "force_custom_plan",
                    "enable_seqscan": "on",
                    "enable_sort": "on",
                    "hnsw.max_scan_tuples": "40000",
                    "hnsw.scan_mem_multiplier": str(plans.SCAN_MEM_MULTIPLIER),
                },
            )
            hits = plans._settings_sql.cache_info().hits
            # another plan with the same settings (its counts differ): the text made before
            assert plans.local_settings(conn, replace(iterative, matching=9), with_planner=True) == made
            assert plans._settings_sql.cache_info().hits == hits + 1
            cached = plans.local_settings(conn, plans.Plan("hnsw", -1, ef_search=200), cached_plan=True)
            assert re.fullmatch(f"SELECT {LOCAL}(, {LOCAL})*", cached[0])
            assert "force_generic_plan" in cached[0] and "max_scan_tuples" not in cached[0]
            # a cached plan starts no parallel workers (planned without the values, it may expect
            # thousands of rows where a one-value filter has a few); a plan for the values may
            assert "set_config('max_parallel_workers_per_gather', '0', true)" in cached[0]
            assert "max_parallel_workers_per_gather" not in made[0]
            conn.exec_driver_sql(*made)
            assert conn.execute(text("SHOW hnsw.ef_search")).scalar() == "300"
            assert conn.execute(text("SHOW hnsw.max_scan_tuples")).scalar() == "40000"
            assert conn.execute(text("SHOW jit")).scalar() == "off"
    finally:
        engine.dispose()


def test_a_cached_plan_gathers_no_parallel_workers(database_url: str) -> None:
    """Where parallel workers look free (a big catalog's estimates), a plan made without the
    values may gather a filter's rows with them; a cached plan doesn't: starting them cost more
    than a one-value attribute filter's whole search at 1M (bench/search/shop_attributes.py)."""
    from imgsearch import Catalog
    from imgsearch.search import Filters, exact_statement
    from tests.helpers import explain_generic, unit

    with Catalog.open(database_url) as catalog:
        catalog.add_many(
            {
                "embedding": unit(768, i),
                "tenant": "acme",
                "product_id": f"p{i}",
                "attributes": {"bucket": i % 10},
            }
            for i in range(200)
        )
        model, q = catalog.active_model, unit(768, 3)
        statement = exact_statement(model, q, Filters(attributes={"bucket": 3}), 10)
        found = {}
        with catalog.engine.begin() as conn:
            for name in ("parallel_setup_cost", "parallel_tuple_cost", "min_parallel_table_scan_size"):
                conn.execute(text(f"SET LOCAL {name} = 0"))
            for cached in (False, True):  # (the cached plan's setting lasts the transaction)
                conn.exec_driver_sql(
                    *plans.local_settings(conn, plans.Plan("exact", -1, ef_search=200), True, cached)
                )
                found[cached] = explain_generic(conn, statement)
    assert "Gather" in found[False], found[False]
    assert "Gather" not in found[True], found[True]
