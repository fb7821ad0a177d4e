"""Per-value HNSW indexes (imgsearch/db/filter_indexes.py, `imgsearch index`): built for values
past the rule, chosen by the planner for searches of that value (EXPLAIN and the index's scan
count), results equal to an exact search, kept up as values grow and shrink, dropped on request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch import search as vector_search
from imgsearch.db import filter_indexes
from imgsearch.errors import InvalidInput
from imgsearch.settings import Settings
from tests.helpers import explain, explain_generic, run_cli

DIM = 32
OTHER_CENTRE = np.zeros(DIM)  # where category "other" lies, away from FAR's and NEAR's rows
FAR, NEAR = "far 'category\"; --", "near"  # a value that would break naive quoting


def clustered(centre: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    rows = centre + rng.standard_normal((n, DIM)) * 0.15
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def setup(
    database_url: str, tiny_siglip: Path
) -> Iterator[tuple[Catalog, dict[int, np.ndarray], np.ndarray]]:
    """A catalog of three clusters: FAR's 600 rows on one side, NEAR's 600 and TINY's 30 on the
    other (tenant acme), tenant beta's 80 rows of NEAR beside FAR's, and 450 rows of "other" in a
    third direction; searches scan at most 100 rows exactly."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(DIM), rng.standard_normal(DIM)
    b -= a * (a @ b) / (a @ a)  # b orthogonal to a: FAR's rows lie away from NEAR's
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    c = rng.standard_normal(DIM)
    c -= a * (a @ c) + b * (b @ c)  # a third direction, away from both
    c /= np.linalg.norm(c)
    groups = [
        ("acme", FAR, clustered(a, 600, rng)),
        ("acme", NEAR, clustered(b, 600, rng)),
        ("acme", "tiny", clustered(b, 30, rng)),
        ("beta", NEAR, clustered(a, 80, rng)),
        ("acme", "other", clustered(c, 450, rng)),
    ]
    global OTHER_CENTRE
    OTHER_CENTRE = c
    rows: list[dict[str, Any]] = []
    for tenant, category, data in groups:
        for vector in data:
            rows.append(
                {"tenant": tenant, "product_id": f"p{len(rows)}", "category": category, "embedding": vector}
            )
    settings = Settings(model=str(tiny_siglip), exact_max_rows=100)
    with Catalog.open(database_url, model=str(tiny_siglip), settings=settings) as catalog:
        assert catalog.import_vectors(rows, progress=False) == len(rows)
        with catalog.engine.connect() as conn:
            ids = conn.execute(
                text("SELECT image_id, embedding::text FROM imgsearch.embeddings ORDER BY image_id")
            ).all()
        stored = {int(i): np.array([float(x) for x in e.strip("[]").split(",")]) for i, e in ids}
        yield catalog, stored, b


def exact(
    catalog: Catalog, stored: dict[int, np.ndarray], query: np.ndarray, top: int = 10, **filters: Any
) -> list[int]:
    with catalog.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT image_id FROM imgsearch.embeddings WHERE (CAST(:c AS text) IS NULL OR category = :c) "
                "AND (CAST(:t AS text) IS NULL OR tenant = :t)"
            ),
            {"c": filters.get("category"), "t": filters.get("tenant")},
        ).all()
    candidates = [int(r[0]) for r in rows]
    q = query / np.linalg.norm(query)
    scores = {i: float(stored[i] @ q / np.linalg.norm(stored[i])) for i in candidates}
    return sorted(candidates, key=lambda i: -scores[i])[:top]


def index_scans(catalog: Catalog, name: str) -> int:
    """The index's scan count, every search before counted. A backend reports its counts when it
    goes idle, but a report that meets a locked entry waits (one CI run saw none within 70 s),
    so the catalog's pooled connections are closed first: a backend reports, forced, as it exits."""
    for engine in (catalog.search_engine, catalog.engine):
        engine.dispose()
    deadline = time.monotonic() + 30
    with catalog.engine.connect() as conn:
        while time.monotonic() < deadline and conn.execute(text(OTHER_BACKENDS)).scalar_one():
            time.sleep(0.05)
    time.sleep(0.2)  # a backend leaves pg_stat_activity just before its last report
    with catalog.engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int(
            conn.execute(
                text("SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes WHERE indexrelname = :n"),
                {"n": name},
            ).scalar_one()
        )


OTHER_BACKENDS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""


def plans(catalog: Catalog, category: str) -> tuple[str, str]:
    """The plans of the HNSW pass a search runs for ``category``: planned for its value, and the
    generic plan PostgreSQL would cache (made without the value)."""
    model = catalog.active_model
    stmt = vector_search.hnsw_statement(
        model, np.ones(DIM, dtype=np.float32), vector_search.Filters(category=category), 10
    )
    with catalog.engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
        return explain(conn, stmt), explain_generic(conn, stmt)


def test_rule_builds_an_index_per_large_value_and_searches_use_it(setup: Any) -> None:
    catalog, stored, near_centre = setup
    result = catalog.index_filter_values("category", 500, progress=False)
    assert sorted(result.built) == [("category", FAR), ("category", NEAR)]  # NEAR: 600 + beta's 80
    graphs = {g.value: g for g in catalog.filter_graphs()}
    assert set(graphs) == {FAR, NEAR}
    assert graphs[FAR].rows == 600 and graphs[NEAR].rows == 680
    assert all(
        g.valid and g.size_bytes > 0 and g.recall >= filter_indexes.MIN_RECALL for g in graphs.values()
    )
    name = filter_indexes.index_name(catalog.active_model.id, "category", FAR)
    assert graphs[FAR].index_name == name
    custom, generic = plans(catalog, FAR)
    assert name in custom
    # a plan made without the value can't use the value's index: such searches are planned for it
    assert name not in generic
    assert "embeddings_hnsw_m1_category_" not in plans(catalog, "tiny")[0]

    # the far category's rows all lie away from the query: its own graph finds its exact top 10
    chosen: list[vector_search.Plan] = []
    catalog.on_search_plan = chosen.append
    before = index_scans(catalog, name)
    for tenant in (None, "acme"):
        hits = catalog.search(vector=near_centre, category=FAR, tenant=tenant, k=10)
        assert [h.image_id for h in hits] == exact(catalog, stored, near_centre, category=FAR, tenant=tenant)
    assert [p.strategy for p in chosen] == ["hnsw", "hnsw"]
    assert index_scans(catalog, name) >= before + 2


def test_a_list_of_indexed_categories_merges_their_own_graphs(setup: Any) -> None:
    catalog, stored, near_centre = setup
    catalog.index_filter_values("category", 500, progress=False)
    model_id = catalog.active_model.id
    names = [filter_indexes.index_name(model_id, "category", value) for value in (FAR, NEAR)]
    before = [index_scans(catalog, name) for name in names]
    chosen: list[vector_search.Plan] = []
    catalog.on_search_plan = chosen.append
    # the list's rows surround the query: the model's graph answers, as for any list
    hits = catalog.search(vector=near_centre, category=[FAR, NEAR], k=10)
    assert [h.image_id for h in hits] == exact_many(catalog, stored, near_centre, [FAR, NEAR])
    # they all lie away from it ("other" is around it): one pass of each category's own graph
    for query in (OTHER_CENTRE, OTHER_CENTRE + 0.1 * near_centre):
        hits = catalog.search(vector=query, category=[FAR, NEAR], k=10)
        assert [h.image_id for h in hits] == exact_many(catalog, stored, query, [FAR, NEAR])
    assert [p.strategy for p in chosen] == ["hnsw", "hnsw", "hnsw"]
    for name, count in zip(names, before, strict=True):
        assert index_scans(catalog, name) >= count + 2  # one pass of each graph per far search
    # a category without an index of its own in the list: the model's graph, exact results
    hits = catalog.search(vector=near_centre, category=[FAR, "tiny"], k=10)
    assert [h.image_id for h in hits] == exact_many(catalog, stored, near_centre, [FAR, "tiny"])
    # paging through the merged lists
    page = catalog.search(vector=near_centre, category=[FAR, NEAR], k=5, offset=5)
    assert [h.image_id for h in page] == exact_many(catalog, stored, near_centre, [FAR, NEAR])[5:10]


def exact_many(
    catalog: Catalog, stored: dict[int, np.ndarray], query: np.ndarray, categories: list[str]
) -> list[int]:
    merged: list[int] = []
    for category in categories:
        merged += exact(catalog, stored, query, category=category, top=10_000)
    q = query / np.linalg.norm(query)
    return sorted(merged, key=lambda i: -float(stored[i] @ q / np.linalg.norm(stored[i])))[:10]


def graph_indexes(catalog: Catalog) -> set[str]:
    with catalog.engine.connect() as conn:
        return set(
            conn.execute(
                text(
                    "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'embeddings_hnsw_m%\\_category\\_%'"
                )
            ).scalars()
        )


def test_a_graph_below_the_recall_bar_is_refused_and_dropped(setup: Any, monkeypatch: Any) -> None:
    """Each graph's recall is measured at its build against an exact search of the value's rows;
    one that found less than 0.98 (far queries in a large, structureless value) is refused: its
    index is dropped, since a statement planned for the value (a connection's first runs, a
    filter planned for each search) would pick it, and searches keep their exact scans and the
    model's graph. Its row stays, and the value is tried again once its rows doubled."""
    catalog, stored, near_centre = setup
    model_id = catalog.active_model.id
    far_name, near_name = (filter_indexes.index_name(model_id, "category", v) for v in (FAR, NEAR))
    monkeypatch.setattr(filter_indexes, "MIN_RECALL", 1.01)  # every graph's probes fall short of it
    result = catalog.index_filter_values("category", 500, progress=False)
    assert result.built == [] and sorted(result.refused) == [("category", FAR), ("category", NEAR)]
    assert graph_indexes(catalog) == set()
    assert all(g.refused and not g.valid and g.size_bytes == 0 for g in catalog.filter_graphs())
    again = catalog.refresh_filter_indexes(progress=False)  # their rows haven't doubled: not tried
    assert again.built == again.refused == again.dropped == [] and again.kept == 0
    monkeypatch.undo()

    # a refused graph whose index is still there (refused before they were dropped) loses it
    with catalog.engine.begin() as conn:
        conn.execute(text("DELETE FROM imgsearch.filter_indexes"))
    catalog.index_filter_values("category", 500, progress=False)
    assert graph_indexes(catalog) == {far_name, near_name}
    with catalog.engine.begin() as conn:
        conn.execute(
            text("UPDATE imgsearch.filter_indexes SET recall = 0.6 WHERE index_name = :n"), {"n": far_name}
        )
    result = catalog.refresh_filter_indexes(progress=False)
    assert result.built == [] and result.kept == 1
    assert graph_indexes(catalog) == {near_name}
    assert far_name not in plans(catalog, FAR)[0]
    chosen: list[vector_search.Plan] = []
    catalog.on_search_plan = chosen.append
    for _ in range(6):  # planned for the value, then on the plan cached at psycopg's 5th run
        hits = catalog.search(vector=near_centre, category=FAR, k=10)
        assert [h.image_id for h in hits] == exact(catalog, stored, near_centre, category=FAR)
    assert {p.strategy for p in chosen} <= {"exact", "hnsw_iterative"}  # the model's graph, or none

    # once its rows doubled since it was refused, the value is tried again
    with catalog.engine.begin() as conn:
        conn.execute(
            text("UPDATE imgsearch.filter_indexes SET rows = 300 WHERE index_name = :n"), {"n": far_name}
        )
    result = catalog.refresh_filter_indexes(progress=False)
    assert result.built == [("category", FAR)] and result.kept == 1
    assert graph_indexes(catalog) == {far_name, near_name}
    assert {g.value: (g.rows, g.refused) for g in catalog.filter_graphs()} == {
        FAR: (600, False),
        NEAR: (680, False),
    }


def test_tenant_rule_and_values_without_index_stay_exact(setup: Any) -> None:
    catalog, stored, near_centre = setup
    result = catalog.index_filter_values("tenant", 1000, progress=False)
    assert result.built == [("tenant", "acme")]
    name = filter_indexes.index_name(catalog.active_model.id, "tenant", "acme")
    before = index_scans(catalog, name)
    hits = catalog.search(vector=near_centre, tenant="acme", k=10)
    assert [h.image_id for h in hits] == exact(catalog, stored, near_centre, tenant="acme")
    assert index_scans(catalog, name) > before
    # beta has no index of its own: the model's graph and the exact scan, as before
    hits = catalog.search(vector=near_centre, tenant="beta", k=10)
    assert [h.image_id for h in hits] == exact(catalog, stored, near_centre, tenant="beta")


def test_values_grow_and_shrink_and_rules_come_off(setup: Any) -> None:
    catalog, _, near_centre = setup
    catalog.index_filter_values("category", 650, progress=False)
    assert {g.value for g in catalog.filter_graphs()} == {NEAR}
    # a higher bar keeps an index until its value falls below half of it
    result = catalog.index_filter_values("category", 1000, progress=False)
    assert result.dropped == [] and result.kept == 1
    result = catalog.index_filter_values("category", 1400, progress=False)
    assert result.dropped == [("category", NEAR)]
    assert catalog.filter_graphs() == []
    with catalog.engine.connect() as conn:
        left = conn.execute(
            text("SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'embeddings_hnsw_m%\\_category\\_%'")
        ).scalar_one()
    assert left == 0
    # a category that grows past the rule gets its index at the next import
    catalog.index_filter_values("category", 700, progress=False)
    assert catalog.filter_graphs() == []
    rng = np.random.default_rng(9)
    more = [
        {"tenant": "acme", "product_id": f"more{i}", "category": FAR, "embedding": v}
        for i, v in enumerate(clustered(near_centre, 150, rng))
    ]
    report = catalog.import_report(more, progress=False)
    assert report.value_indexes == 1
    assert [(g.value, g.rows) for g in catalog.filter_graphs()] == [(FAR, 750)]
    # rows added one at a time go into the index as they are written
    catalog.add_many([{**more[0], "product_id": "one-more", "embedding": -near_centre}], progress=False)
    hits = catalog.search(vector=-near_centre, category=FAR, k=1)
    assert hits[0].product_id == "one-more"
    catalog.index_filter_values("category", None, progress=False)
    assert catalog.filter_graphs() == []


def test_refresh_rebuilds_an_invalid_index_and_skips_when_busy(setup: Any) -> None:
    catalog, _, _ = setup
    catalog.index_filter_values("category", 500, progress=False)
    name = filter_indexes.index_name(catalog.active_model.id, "category", FAR)
    with catalog.engine.begin() as conn:  # what an interrupted CREATE INDEX CONCURRENTLY leaves
        conn.execute(
            text("UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass(:n)"),
            {"n": f"imgsearch.{name}"},
        )
    assert {g.value: g.valid for g in catalog.filter_graphs()} == {FAR: False, NEAR: True}
    with catalog.engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": filter_indexes.REFRESH_LOCK})
        skipped = filter_indexes.refresh(catalog.engine, catalog.active_model, wait=False)
        assert skipped.built == [] and skipped.kept == 0
        holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": filter_indexes.REFRESH_LOCK})
    result = catalog.refresh_filter_indexes(progress=False)
    assert result.built == [("category", FAR)] and result.kept == 1
    assert all(g.valid for g in catalog.filter_graphs())


def test_bad_rules_are_refused(setup: Any) -> None:
    catalog, _, _ = setup
    with pytest.raises(InvalidInput, match="category or tenant, not 'price'"):
        catalog.index_filter_values("price", 10)
    for bad in (0, -5, True, 2.5, "10"):
        with pytest.raises(InvalidInput, match="min_rows must be a positive integer"):
            catalog.index_filter_values("category", bad)  # type: ignore[arg-type]


def test_cli(setup: Any, database_url: str, tiny_siglip: Path) -> None:
    catalog = setup[0]
    env = {"IMGSEARCH_DATABASE_URL": database_url, "IMGSEARCH_MODEL": str(tiny_siglip)}

    def run(*args: str) -> Any:
        return run_cli("index", *args, **env)

    done = run("categories", "--min-rows", "500")
    assert done.returncode == 0, done.stderr
    assert "2 indexes built, 0 dropped, 0 kept" in done.stdout
    listed = run("list")
    assert listed.returncode == 0
    assert [line.endswith("  used") for line in listed.stdout.splitlines() if FAR in line] == [True]
    with catalog.engine.begin() as conn:  # FAR's graph as one refused before refused ones were dropped
        conn.execute(text("UPDATE imgsearch.filter_indexes SET recall = 0.6 WHERE value = :v"), {"v": FAR})
    assert "0 indexes built, 0 dropped, 1 kept, 0 refused" in run("refresh").stdout
    far_line = next(line for line in run("list").stdout.splitlines() if FAR in line)
    assert " 0.0MB   0.600  refused: recall below 0.98 at its build, index dropped" in far_line
    assert "tried again at 1200 rows" in far_line
    bad = run("categories", "--min-rows", "0")
    assert (
        bad.returncode == 2
        and "must be a whole number above 0" in bad.stderr
        and "Traceback" not in bad.stderr
    )
    off = run("categories", "--off")
    assert off.returncode == 0 and "0 indexes built, 2 dropped" in off.stdout
    assert "no per-value indexes" in run("list").stdout
