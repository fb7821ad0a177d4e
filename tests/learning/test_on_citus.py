"""Shoppers' feedback and the SQL console on a Citus cluster (``citus_cluster``): the query log and
events distributed by tenant like the catalog, the console's searches answering as on one node
(boosted, recorded, each statement on the shop's node, the HNSW settings with it), and the boosts
learned from the same sessions equal to one node's."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import make_url, text

from imgsearch import Catalog
from imgsearch.access import tenancy
from imgsearch.db import citus
from imgsearch.errors import InvalidEvents
from imgsearch.learning import interleave, judgments
from imgsearch.learning.boosts import Policy
from tests.citus import CitusCluster
from tests.learning.conftest import QUERY, open_shop, query_vector
from tests.learning.test_sql_searches import BOOSTS, _cache_query


@pytest.fixture(scope="module")
def cluster_url(citus_cluster: CitusCluster, shop_url: str, tiny_siglip: Path) -> str:
    """The learning shop's rows (tests/learning/conftest.py) in a catalog distributed on the cluster."""
    url = citus_cluster.create_catalog("citus_learning")
    with open_shop(shop_url, str(tiny_siglip)) as single, open_shop(url, str(tiny_siglip)) as clustered:
        with single.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT p.tenant, p.product_id, p.title, p.category, p.price, e.embedding::text AS v"
                    " FROM imgsearch.products p JOIN imgsearch.embeddings e ON e.product_pk = p.id ORDER BY p.id"
                )
            ).all()
        clustered.add_many(
            {"tenant": r.tenant, "product_id": r.product_id, "title": r.title, "category": r.category,
             "price": r.price, "embedding": [float(x) for x in r.v.strip("[]").split(",")]}
            for r in rows
        )  # fmt: skip
        _cache_query(clustered)
        _cache_query(single)
    return url


def _boost(catalog: Catalog) -> None:
    with catalog.engine.begin() as conn:
        for product_id, query_norm, boost in BOOSTS:
            conn.execute(
                text(
                    "INSERT INTO imgsearch.boosts (product_pk, query_norm, tenant, product_id, boost, clicks,"
                    " conversions, expected) SELECT p.id, :q, p.tenant, p.product_id, :b, 30, 0, 10"
                    " FROM imgsearch.products p WHERE p.tenant = 'acme' AND p.product_id = :p"
                ),
                {"p": product_id, "q": query_norm, "b": boost},
            )
    catalog._searcher.router.forget_graphs()


@pytest.fixture
def pair(shop_url: str, cluster_url: str, tiny_siglip: Path) -> Iterator[tuple[Catalog, Catalog]]:
    """The shop on one node and on the cluster, both with the same learned boosts."""
    with open_shop(shop_url, str(tiny_siglip)) as single, open_shop(cluster_url, str(tiny_siglip)) as clustered:
        for catalog in (single, clustered):
            _boost(catalog)
        try:
            yield single, clustered
        finally:
            for catalog in (single, clustered):
                with catalog.engine.begin() as conn:
                    conn.execute(text("DELETE FROM imgsearch.boosts"))


CONSOLE = {
    "vector": "SELECT product_id, round(distance::numeric, 4) FROM imgsearch.search_vector(CAST(:q AS vector), 10, tenant => 'acme')",
    "vector, category and price": "SELECT product_id FROM imgsearch.search_vector(CAST(:q AS vector), 5, tenant => 'acme', category => 'footwear', price_max => 30)",
    "admin vector": "SELECT product_id FROM imgsearch.search_vector(CAST(:q AS vector), 8)",
    "similar": "SELECT product_id FROM imgsearch.search_similar(:i, 5, tenant => 'acme')",
    "similar product": "SELECT product_id FROM imgsearch.search_similar_product('acme', 'p03', 5)",
    "text": "SELECT product_id, round(probability::numeric, 4) FROM imgsearch.search_text(:t, 10, tenant => 'acme')",
    "hybrid": "SELECT product_id, title, round(relevance::numeric, 6), semantic_rank, lexical_rank FROM imgsearch.search_hybrid(:t, 10, tenant => 'acme')",
    "admin hybrid": "SELECT product_id, round(relevance::numeric, 6) FROM imgsearch.search_hybrid(:t, 10)",
    "facets": "SELECT imgsearch.facets('shoe', 'acme')",
    "facets of a price range": "SELECT imgsearch.facets(NULL, 'acme', 'footwear', 15, 40)",
}  # fmt: skip


def _console(catalog: Catalog, sql: str, **settings: str) -> tuple[list[Any], dict[str, Any]]:
    """A console search's rows and the row recorded for it (last_query_id)."""
    q = str(query_vector(catalog).tolist())
    with catalog.engine.begin() as conn:
        image = conn.execute(text("SELECT min(id) FROM imgsearch.images WHERE tenant = 'acme'")).scalar()
        for name, value in settings.items():
            conn.execute(text("SELECT set_config(:n, :v, true)"), {"n": name, "v": value})
        rows = [tuple(r) for r in conn.execute(text(sql), {"q": q, "t": QUERY, "i": image}).all()]
        # read on the coordinator first: a statement Citus sends to the workers evaluates its
        # functions there, where this session's last_query_id is unknown
        query_id = conn.execute(text("SELECT imgsearch.last_query_id()")).scalar()
        recorded = conn.execute(
            text(
                "SELECT tenant, product_ids, query_attributes FROM imgsearch.search_queries WHERE query_id = :id"
            ),
            {"id": query_id},
        ).one_or_none()
    return rows, {} if recorded is None else dict(recorded._mapping)


def test_each_console_search_answers_and_records_as_on_one_node(pair: tuple[Catalog, Catalog]) -> None:
    single, clustered = pair
    for name, sql in CONSOLE.items():
        expected, found = _console(single, sql), _console(clustered, sql)
        assert found == expected, name
        assert expected[0], name
    # the learned boosts are in those orders; a session's setting turns them off on both alike
    unboosted = {name: _console(single, CONSOLE[name], **{"imgsearch.boost": "off"}) for name in ("text", "hybrid")}
    for name, expected in unboosted.items():
        assert expected[0] != _console(single, CONSOLE[name])[0], name
        assert _console(clustered, CONSOLE[name], **{"imgsearch.boost": "off"}) == expected, name
    assert _console(clustered, CONSOLE["admin vector"])[1]["tenant"] == ""  # an admin's: no tenant


def test_an_admins_hybrid_search_of_every_shop_is_boosted_on_the_cluster_as_on_one_node(
    pair: tuple[Catalog, Catalog],
) -> None:
    """The fused products gathered from every shop join their boosts by key (a subquery correlated
    with them can't run on a coordinator: "complex joins")."""
    expected, found = (
        [(h.product_id, h.boost) for h in c.search(text=QUERY, k=10, parse=False)] for c in pair
    )
    assert found == expected
    assert any(boost for _, boost in expected)


# a shard of a table distributed by tenant, as Citus names it in the commands it sends
SHARD = re.compile(r"\bimgsearch\.(" + "|".join(citus.DISTRIBUTED) + r")_(\d+)\b")


def _remote_commands(url: str, sql: str, params: list[Any]) -> list[str]:
    """The commands the coordinator sends to the workers for ``sql`` (``citus.log_remote_commands``),
    run from psql's default: autocommit."""
    parts = make_url(url)
    notices: list[str] = []
    with psycopg.connect(
        host=parts.host, port=parts.port, user=parts.username, dbname=parts.database, autocommit=True
    ) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("SET citus.log_remote_commands = on")
        conn.execute(sql, params)
    return [n for n in notices if n.startswith(("issuing", "executing the command locally"))]


@pytest.mark.parametrize("name", ["vector", "vector, category and price", "similar product", "text", "hybrid", "facets"])
def test_a_shops_console_search_runs_on_its_node_alone_with_its_hnsw_settings(
    name: str, pair: tuple[Catalog, Catalog], cluster_url: str
) -> None:
    _, clustered = pair
    with clustered.engine.connect() as conn:
        allowed = {
            str(conn.execute(
                text("SELECT get_shard_id_for_distribution_column(:t, 'acme')"), {"t": f"imgsearch.{table}"}
            ).scalar_one())
            for table in citus.DISTRIBUTED
        }  # fmt: skip
    sql = re.sub(r":(q|t)\b", lambda m: "%(" + m.group(1) + ")s", CONSOLE[name])
    commands = _remote_commands(cluster_url, sql, {"q": str(query_vector(clustered).tolist()), "t": QUERY})  # type: ignore[arg-type]
    shards = {m.group(2) for c in commands for m in SHARD.finditer(c)}
    assert shards and shards <= allowed, (name, shards - allowed)
    if name != "facets":  # the HNSW settings go to the shop's node with its statements (a one
        # pass: its ef_search, the iterative scan off; max_scan_tuples bounds only an iterative one)
        assert any("SET LOCAL hnsw.ef_search" in c for c in commands), commands
        assert any("SET LOCAL hnsw.iterative_scan" in c for c in commands), commands


def test_a_tenant_login_on_the_coordinator_searches_and_records_its_own_shop(
    pair: tuple[Catalog, Catalog], cluster_url: str
) -> None:
    _, clustered = pair
    login = "citus_console_acme"
    tenancy.create_login(clustered.engine, login, "acme", password="s3cret")
    parts = make_url(cluster_url)
    q = str(query_vector(clustered).tolist())
    try:
        with psycopg.connect(
            host=parts.host, port=parts.port, user=login, password="s3cret", dbname=parts.database, autocommit=True
        ) as conn:
            own = conn.execute("SELECT product_id FROM imgsearch.search_vector(%s::vector, 5)", [q]).fetchall()
            recorded = conn.execute("SELECT imgsearch.last_query_id()").fetchone()
            seen = conn.execute("SELECT DISTINCT tenant FROM imgsearch.products").fetchall()
            other = conn.execute(
                "SELECT * FROM imgsearch.search_vector(%s::vector, 3, tenant => 'globex')", [q]
            ).fetchall()
        assert len(own) == 5 and all(p.startswith("p") for (p,) in own) and other == []
        assert seen == [("acme",)] and recorded is not None and recorded[0] is not None
        with clustered.engine.connect() as conn:
            tenant = conn.execute(
                text("SELECT tenant FROM imgsearch.search_queries WHERE query_id = :id"), {"id": recorded[0]}
            ).scalar_one()
        assert tenant == "acme"
    finally:
        with clustered.engine.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{login}"'))
            conn.execute(text(f'DROP ROLE "{login}"'))


def _sessions(catalog: Catalog) -> None:
    """The same shoppers on either catalog: text searches of acme, a click on p07 (eighth) and a
    purchase of p09, with event ids (each sent twice: counted once), and an admin's search."""
    for i in range(25):
        result = catalog.search(text=QUERY, tenant="acme", k=10, mode="semantic", parse=False, boost=False)
        place = {hit.product_id: n for n, hit in enumerate(result, 1)}
        events = [
            {"query_id": str(result.query_id), "action": "click", "object_id": "p07", "position": place["p07"],
             "event_id": f"c{i}"},
            {"query_id": str(result.query_id), "action": "purchase", "object_id": "p09", "position": place["p09"],
             "event_id": f"b{i}"},
        ]  # fmt: skip
        assert catalog.record_events("acme", events).recorded == 2
        assert catalog.record_events("acme", events).recorded == 0
    admin = catalog.search(vector=query_vector(catalog), k=5)
    assert catalog.record_events(None, [{"query_id": str(admin.query_id), "action": "click",
                                         "object_id": admin[0].product_id, "position": 1}]).recorded == 1  # fmt: skip
    with pytest.raises(InvalidEvents, match="no search has query_id"):  # acme's search, named by globex
        catalog.record_events("globex", [{"query_id": str(result.query_id), "action": "click", "object_id": "p07",
                                          "position": place["p07"]}])  # fmt: skip


def _learned(catalog: Catalog) -> list[tuple[Any, ...]]:
    with catalog.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT tenant, query_norm, product_id, round(boost::numeric, 4), clicks, conversions"
                    " FROM imgsearch.boosts ORDER BY 1, 2, 3"
                )
            ).all()
        ]


def test_the_same_sessions_learn_the_same_boosts(shop_url: str, cluster_url: str, tiny_siglip: Path) -> None:
    learned = []
    started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    for url in (shop_url, cluster_url):
        with open_shop(url, str(tiny_siglip), boost_min_clicks=5) as catalog:
            with catalog.engine.begin() as conn:  # each from a clean log
                conn.execute(text("TRUNCATE imgsearch.search_events, imgsearch.search_queries, imgsearch.event_ids"))
                conn.execute(text("DELETE FROM imgsearch.boosts"))
            _sessions(catalog)
            done = catalog.refresh_boosts()
            assert done.tenants == 1 and done.query_boosts >= 1 and done.product_boosts >= 1
            once = _learned(catalog)
            assert catalog.refresh_boosts(tenant="acme").query_boosts == done.query_boosts
            assert _learned(catalog) == once
            judged = judgments.from_events(catalog.engine, "acme", Policy(), since=started)
            assert judged.queries
            learned.append((once, judged.queries))
            with catalog.engine.connect() as conn:
                logs = conn.execute(
                    text("SELECT tenant, count(*) FROM imgsearch.search_queries GROUP BY 1 ORDER BY 1")
                ).all()
            assert [tuple(r) for r in logs] == [("", 1), ("acme", 25)]
    assert learned[1] == learned[0]
    assert ("acme", "red shoes", "p09") in {row[:3] for row in learned[0][0]}  # its purchases


def test_interleaved_searches_are_credited_on_the_cluster(cluster_url: str, tiny_siglip: Path) -> None:
    with open_shop(cluster_url, str(tiny_siglip)) as catalog:
        result = catalog.search(text=QUERY, tenant="acme", k=6, mode="semantic", parse=False, interleave="plain,boost")
        catalog.record_events(
            "acme", [{"query_id": str(result.query_id), "action": "click", "object_id": result[0].product_id,
                      "position": 1}]
        )  # fmt: skip
        credited = interleave.report(catalog.engine, "acme")
    assert [(c.a, c.b) for c in credited] == [("plain", "boost")]
    assert credited[0].clicks_a + credited[0].clicks_b == 1


def test_the_logs_are_distributed_with_the_shops(cluster_url: str) -> None:
    with psycopg.connect(make_url(cluster_url).render_as_string(hide_password=False).replace("+psycopg", "")) as conn:
        colocated = conn.execute(
            "SELECT logicalrelid::text, colocationid FROM pg_dist_partition"
            " WHERE logicalrelid::text IN ('imgsearch.products', 'imgsearch.search_queries', 'imgsearch.search_events')"
        ).fetchall()
        partitions = conn.execute(
            "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text LIKE 'imgsearch_log.search_queries_%'"
        ).fetchone()
    assert len({c for _, c in colocated}) == 1 and len(colocated) == 3
    assert partitions is not None and partitions[0] >= 8  # the daily partitions, each distributed too
