"""``catalog.search`` on a Citus coordinator (``citus_cluster``): the same hits as the same rows on
one node, for every kind of search, and a shop's search statements each routed to the shop's node
alone (``Task Count: 1``), whatever its filters."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, event

from imgsearch import Catalog
from imgsearch.access import tenancy
from imgsearch.db import citus, vector_index
from imgsearch.settings import Settings
from tests.citus import CitusCluster
from tests.conftest import new_database

TENANTS = ("acme", "globex", "initech")
ROWS = 600
COLOURS = ("red", "blue", "green")


def _rows(vectors: np.ndarray) -> Iterator[dict[str, Any]]:
    for i, v in enumerate(vectors):
        yield {
            "embedding": v, "tenant": TENANTS[i % 3], "product_id": f"p{i}", "category": f"c{i % 4}",
            "price": i % 50, "title": f"{COLOURS[i % 5 % 3]} shoe {i}", "brand": f"brand{i % 7}",
            "attributes": {"colour": COLOURS[i % 3]},
        }  # fmt: skip


def _catalog(url: str, model: Path) -> Catalog:
    return Catalog.open(url, model=str(model), settings=Settings(model=str(model)))


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((ROWS, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def cluster_url(citus_cluster: CitusCluster, tiny_siglip: Path, vectors: np.ndarray) -> str:
    """A catalog distributed on the cluster, with 600 products of 3 shops added through the library."""
    url = citus_cluster.create_catalog("citus_search")
    with _catalog(url, tiny_siglip) as catalog:
        catalog.add_many(_rows(vectors))
    return url


@pytest.fixture(scope="module")
def single_url(server_url: str, template_db: str, tiny_siglip: Path, vectors: np.ndarray) -> str:
    """The same rows in a catalog on one node (the embedded server)."""
    url = new_database(server_url, template_db)
    with _catalog(url, tiny_siglip) as catalog:
        catalog.add_many(_rows(vectors))
    return url


def _searches(q: np.ndarray) -> dict[str, dict[str, Any]]:
    shop = {"tenant": "acme", "k": 5}
    return {
        "vector": {**shop, "vector": q},
        "category": {**shop, "vector": q, "category": "c1"},
        "categories": {**shop, "vector": q, "category": ["c1", "c2"]},
        "price": {**shop, "vector": q, "price_min": 10, "price_max": 20},
        "attributes": {**shop, "vector": q, "attributes": {"colour": "red"}},
        "brand": {**shop, "vector": q, "brand": "brand3"},
        "grouped, page 2": {**shop, "vector": q, "group_by_product": True, "offset": 5},
        "diversity": {**shop, "vector": q, "diversity": 0.5},
        "expand": {**shop, "vector": q, "expand": 3},
        "facets": {**shop, "vector": q, "facets": True},
        "similar_to_product": {**shop, "similar_to_product": "p0"},
        "text semantic": {**shop, "text": "red shoe", "mode": "semantic"},
        "text lexical": {**shop, "text": "blue shoe 3 -green", "mode": "lexical", "facets": True},
        "text hybrid": {**shop, "text": "green shoe 30", "facets": True},
        "text understood": {**shop, "text": "red shoe under $20"},
        "admin": {"vector": q, "k": 5},
        "admin category": {"vector": q, "k": 5, "category": "c1", "price_max": 30},
        "admin text hybrid": {"text": "red shoe 3", "k": 5, "facets": True},
    }


def _answer(catalog: Catalog, search: dict[str, Any]) -> tuple[Any, ...]:
    result = catalog.search(**search)
    hits = [
        (h.tenant, h.product_id, h.image_id, None if h.distance is None else round(h.distance, 4),
         h.title, h.brand, dict(h.matched_by))
        for h in result
    ]  # fmt: skip
    return hits, result.total, result.facets, result.understood


def test_every_kind_of_search_answers_as_on_one_node(
    cluster_url: str, single_url: str, tiny_siglip: Path, vectors: np.ndarray
) -> None:
    searches = _searches(vectors[0])
    with _catalog(single_url, tiny_siglip) as catalog:
        expected = {name: _answer(catalog, search) for name, search in searches.items()}
    with _catalog(cluster_url, tiny_siglip) as catalog:
        found = {name: _answer(catalog, search) for name, search in searches.items()}
    for name in searches:
        assert found[name] == expected[name], name
    assert all(expected[name][0] for name in searches)  # every one has hits
    assert {h[0] for h in expected["admin"][0]} != {"acme"}  # the admin's search spans the shops


# a statement reading a table distributed by tenant (imgsearch.db.citus.DISTRIBUTED)
DISTRIBUTED = re.compile(r"\bimgsearch\.(" + "|".join(citus.DISTRIBUTED) + r")\b")


@pytest.mark.parametrize(
    "name", ["vector", "category", "price", "attributes", "grouped, page 2", "text hybrid", "text lexical"]
)
def test_a_shops_search_is_routed_to_its_node_alone(
    name: str, cluster_url: str, tiny_siglip: Path, vectors: np.ndarray
) -> None:
    sent: list[tuple[str, Any]] = []

    def caught(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if DISTRIBUTED.search(statement) and statement.lstrip().upper().startswith(("SELECT", "WITH")):
            sent.append((statement, params))

    with _catalog(cluster_url, tiny_siglip) as catalog:
        catalog.search(vector=vectors[1], tenant="acme", k=5)  # the graphs and sizes read, untraced
        event.listen(Engine, "before_cursor_execute", caught)
        try:
            catalog.search(**_searches(vectors[0])[name])
        finally:
            event.remove(Engine, "before_cursor_execute", caught)
        assert sent, "no statement read the shop's tables"
        for statement, params in sent:
            with tenancy.begin(catalog.engine, "acme") as conn:
                conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
                vector_index.send_binary_queries(conn)  # the query vector's parameter type
                plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, params))
            assert "Task Count: 1\n" in plan + "\n", f"{name}: not routed to one node:\n{statement}\n{plan}"
            assert "Task Count: 8" not in plan, plan


@pytest.mark.parametrize("name", ["vector", "attributes", "admin"])
def test_the_hnsw_settings_reach_the_workers_with_the_statements(
    name: str, cluster_url: str, tiny_siglip: Path, vectors: np.ndarray
) -> None:
    """The library's SET LOCALs go with its transaction to every node its statements reach
    (``citus.propagate_set_commands = 'local'``, set by ``imgsearch db distribute``)."""
    sent: list[str] = []
    with _catalog(cluster_url, tiny_siglip) as catalog:

        catalog.search(**_searches(vectors[0])[name])  # the sizes and graphs read, unlogged

        @event.listens_for(catalog.search_engine, "connect")
        def log_remote(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.add_notice_handler(lambda d: sent.append(d.message_primary or ""))
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET citus.log_remote_commands = on")

        catalog.search_engine.dispose()  # new connections, each logging what it sends
        catalog.search(**_searches(vectors[0])[name])
    scans = [c for c in sent if "<=>" in c]
    assert scans, sent
    begins = [c for c in sent if c.startswith("issuing BEGIN")]
    for setting in ("hnsw.ef_search", "hnsw.iterative_scan"):
        assert begins and all(f"SET LOCAL {setting}" in c for c in begins), begins
