"""Citus mode on a real cluster (a coordinator and 2 workers, ``citus_cluster``): the catalog
distributed by tenant (``imgsearch db distribute``), the library's writes landing on each shop's
shards with the triggers' work done there, row-level security enforced on the shards, and a
shop's nearest-neighbour query routed to one node with the exact top-k."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, make_url, text
from sqlalchemy.exc import DBAPIError

from imgsearch import Catalog
from imgsearch.access import tenancy
from imgsearch.db import citus, migrate
from imgsearch.db.engine import make_engine
from imgsearch.errors import ConfigurationError
from imgsearch.settings import Settings
from tests.citus import CitusCluster
from tests.conftest import new_database
from tests.helpers import BIN, run_cli

TENANTS = ("acme", "globex", "initech")
ROWS = 600


@pytest.fixture(scope="module")
def shop(citus_cluster: CitusCluster, tiny_siglip: Path) -> Iterator[tuple[str, np.ndarray]]:
    """A catalog migrated and distributed on the cluster, with 600 products of 3 tenants added
    through the library; its URL and the vectors (row i: product p{i})."""
    url = citus_cluster.create_database("citus_shop")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            migrate.upgrade_on(conn)  # the schema alone (migrate.upgrade distributes it too)
        with engine.connect() as conn:
            assert not citus.is_distributed(conn)
        done = citus.adopt(engine)  # what `imgsearch migrate` does on a coordinator with workers
        assert done is not None
        assert (
            done.distributed == citus.DISTRIBUTED and done.reference == citus.REFERENCE and done.workers == 2
        )
    finally:
        engine.dispose()
    vectors = np.random.default_rng(0).standard_normal((ROWS, 32)).astype(np.float32)
    with Catalog.open(url, model=str(tiny_siglip), settings=Settings(model=str(tiny_siglip))) as catalog:
        catalog.add_many(
            {"embedding": v, "tenant": TENANTS[i % 3], "product_id": f"p{i}", "category": f"c{i % 4}",
             "price": i % 50}
            for i, v in enumerate(vectors)
        )  # fmt: skip
    yield url, vectors


@pytest.fixture
def engine(shop: tuple[str, np.ndarray]) -> Iterator[Engine]:
    eng = make_engine(shop[0])
    yield eng
    eng.dispose()


def test_the_catalog_is_distributed_by_tenant_and_colocated(engine: Engine) -> None:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT table_name::text, citus_table_type, distribution_column, colocation_id"
                " FROM citus_tables WHERE table_name::text LIKE 'imgsearch.%'"
            )
        ).all()
        tables = {row[0].removeprefix("imgsearch."): row for row in rows}
        keys = conn.execute(
            text(
                "SELECT t.relname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
                " JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace"
                " WHERE n.nspname = 'imgsearch' AND c.contype IN ('p', 'u', 'f') AND t.relname = ANY(:tables)"
            ),
            {"tables": list(citus.DISTRIBUTED)},
        ).all()
        assert citus.is_distributed(conn)
    assert {name for name, row in tables.items() if row[1] == "reference"} == set(citus.REFERENCE)
    distributed = {name: row for name, row in tables.items() if row[1] == "distributed"}
    assert set(distributed) == set(citus.DISTRIBUTED)
    assert {row[2] for row in distributed.values()} == {"tenant"}
    assert len({row[3] for row in distributed.values()}) == 1  # one colocation group: a shop's rows together
    # every key, and every foreign key between tenant tables, includes tenant (a foreign key to a
    # reference table, models, needs none)
    between = [(t, d) for t, d in keys if "REFERENCES imgsearch.models" not in d]
    assert len(between) > 15 and all("tenant" in definition for _, definition in between), between


def test_distribute_again_changes_nothing(engine: Engine) -> None:
    done = citus.distribute(engine)
    assert done.distributed == () and done.reference == () and done.workers == 2


def test_a_catalog_not_migrated_is_named(citus_cluster: CitusCluster) -> None:
    eng = make_engine(citus_cluster.create_database("citus_bare"))
    try:
        with pytest.raises(
            ConfigurationError, match=r"revision none, not \d{4}: run `imgsearch migrate` first"
        ):
            citus.distribute(eng)
        with eng.connect() as conn:
            assert citus.is_coordinator(conn) and not citus.is_distributed(conn)
    finally:
        eng.dispose()


def test_distribute_on_a_fresh_cluster_migrates_then_distributes(citus_cluster: CitusCluster) -> None:
    url = citus_cluster.create_database("citus_fresh")
    env = {**os.environ, "IMGSEARCH_DATABASE_URL": url}

    def distribute() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "imgsearch", "db", "distribute"]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    first = distribute()
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("distributed by tenant over 2 workers: products"), first.stdout
    eng = make_engine(url)
    try:
        assert migrate.current(eng) == migrate.head()
        with eng.connect() as conn:
            assert citus.is_distributed(conn)
        again = distribute()  # idempotent: nothing migrated or distributed twice
        assert again.returncode == 0 and again.stdout.strip() == "already distributed (2 workers)", again
        assert migrate.current(eng) == migrate.head()
    finally:
        eng.dispose()


def test_a_server_without_citus_is_named(database_url: str) -> None:
    eng = make_engine(database_url)
    try:
        with pytest.raises(ConfigurationError, match=r"not a Citus coordinator.*shared_preload_libraries"):
            citus.distribute(eng)
        with eng.connect() as conn:
            assert not citus.is_distributed(conn)
    finally:
        eng.dispose()
    cli = subprocess.run(
        [sys.executable, "-m", "imgsearch", "db", "distribute"],
        env={**os.environ, "IMGSEARCH_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode != 0 and "Traceback" not in cli.stderr
    assert "not a Citus coordinator" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1


def test_a_shops_rows_live_on_its_shards_with_the_triggers_work_done(engine: Engine) -> None:
    with engine.begin() as conn:
        placements = conn.execute(
            text(
                "SELECT p.tenant, count(DISTINCT s.nodeport) FROM imgsearch.products p"
                " JOIN pg_dist_shard_placement s ON s.shardid = get_shard_id_for_distribution_column("
                "'imgsearch.products', p.tenant) GROUP BY 1"
            )
        ).all()
        counts = dict(
            conn.execute(
                text(
                    "SELECT e.tenant, count(*) FROM imgsearch.embeddings e"
                    " JOIN imgsearch.image_products l ON l.image_id = e.image_id AND l.tenant = e.tenant"
                    " WHERE e.category IS NOT NULL AND e.price IS NOT NULL GROUP BY 1"
                )
            ).all()
        )
        # a product's new price reaches its embeddings (a trigger on the shard)
        conn.execute(
            text("UPDATE imgsearch.products SET price = 999 WHERE tenant = 'acme' AND product_id = 'p0'")
        )
        price = conn.execute(
            text(
                "SELECT e.price FROM imgsearch.embeddings e JOIN imgsearch.products p"
                " ON p.id = e.product_pk AND p.tenant = e.tenant WHERE p.tenant = 'acme' AND p.product_id = 'p0'"
            )
        ).scalar_one()
        # a row written with filter columns of its own takes its product's: on a cluster the row
        # trigger reads the product for every insert (no recheck runs there; migration 0048)
        row = conn.execute(
            text(
                "DELETE FROM imgsearch.embeddings WHERE tenant = 'acme' AND product_pk ="
                " (SELECT id FROM imgsearch.products WHERE tenant = 'acme' AND product_id = 'p0')"
                " RETURNING model_id, image_id, product_pk, embedding::text"
            )
        ).one()
        conn.execute(
            text(
                "INSERT INTO imgsearch.embeddings (model_id, image_id, product_pk, tenant, category, price, embedding)"
                " VALUES (:m, :i, :p, 'acme', 'fake', 1, CAST(:e AS halfvec))"
            ),
            {"m": row[0], "i": row[1], "p": row[2], "e": row[3]},
        )
        given = conn.execute(
            text("SELECT category, price FROM imgsearch.embeddings WHERE tenant = 'acme' AND product_pk = :p"),
            {"p": row[2]},
        ).one()
        product = conn.execute(
            text("SELECT category, price FROM imgsearch.products WHERE tenant = 'acme' AND id = :p"), {"p": row[2]}
        ).one()
        conn.rollback()
    assert {tenant: nodes for tenant, nodes in placements} == dict.fromkeys(TENANTS, 1)
    assert counts == dict.fromkeys(TENANTS, ROWS // 3)  # each image linked, filters copied
    assert price == 999
    assert tuple(given) == tuple(product) and product[1] == 999


def test_row_level_security_holds_on_the_shards(engine: Engine) -> None:
    with tenancy.begin(engine, "acme") as conn:
        seen = conn.execute(text("SELECT DISTINCT tenant FROM imgsearch.products")).scalars().all()
        assert seen == ["acme"]
        count = conn.execute(
            text("SELECT count(*) FROM imgsearch.embeddings WHERE tenant = 'globex'")
        ).scalar_one()
        assert count == 0
    # the scope reaches the shards as a quoted SET LOCAL: a name full of quotes is only a name
    evil = "o'brien\"; SET LOCAL imgsearch.tenant TO 'acme'; --"
    with tenancy.begin(engine, evil) as conn:
        assert conn.execute(text("SELECT count(*) FROM imgsearch.products")).scalar_one() == 0
        assert conn.execute(text("SELECT current_setting('imgsearch.tenant')")).scalar_one() == evil
    with pytest.raises(DBAPIError, match="row-level security"), tenancy.begin(engine, "acme") as conn:
        conn.execute(text("INSERT INTO imgsearch.products (tenant, product_id) VALUES ('globex', 'sneaky')"))


def test_a_shops_nearest_neighbours_are_a_router_query_with_the_exact_top_k(
    engine: Engine, shop: tuple[str, np.ndarray]
) -> None:
    _, vectors = shop
    q = np.random.default_rng(7).standard_normal(32).astype(np.float32)
    sql = (
        "SELECT p.product_id FROM imgsearch.embeddings e JOIN imgsearch.products p"
        " ON p.id = e.product_pk AND p.tenant = e.tenant"
        " WHERE e.tenant = :tenant AND e.category = 'c1'"
        " ORDER BY e.embedding::vector <=> CAST(:q AS vector) LIMIT 5"
    )
    params = {"tenant": "globex", "q": str(q.tolist())}
    with engine.begin() as conn:
        plan = "\n".join(conn.execute(text("EXPLAIN " + sql), params).scalars())
        found = conn.execute(text(sql), params).scalars().all()
        indexes = conn.execute(
            text(
                "SELECT count(*) FROM run_command_on_shards('imgsearch.embeddings',"
                " $$SELECT count(*) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
                " JOIN pg_am a ON a.oid = i.relam WHERE x.indrelid = '%s'::regclass AND a.amname = 'hnsw'$$)"
                " WHERE result::int > 0"
            )
        ).scalar_one()
    assert "Task Count: 1" in plan, plan
    unit = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)
    mine = [i for i in range(ROWS) if TENANTS[i % 3] == "globex" and i % 4 == 1]
    distance = 1 - unit[mine] @ (q / np.linalg.norm(q))
    assert found == [f"p{mine[i]}" for i in np.argsort(distance)[:5]]
    assert indexes == 8  # the model's HNSW index on every shard


def test_opening_a_catalog_on_a_coordinator_distributes_it(citus_cluster: CitusCluster, tiny_siglip: Path) -> None:
    """IMGSEARCH_DATABASE_URL naming a Citus coordinator (with workers) is Citus mode: the first
    open migrates and distributes; a coordinator with no worker, or one node, stays as it is."""
    url = citus_cluster.create_database("citus_adopted")
    with Catalog.open(url, model=str(tiny_siglip), settings=Settings(model=str(tiny_siglip))) as catalog:
        with catalog.engine.connect() as conn:
            assert citus.is_distributed(conn)
        catalog.add_many({"embedding": np.eye(32, dtype=np.float32)[i], "tenant": "acme", "product_id": f"p{i}"}
                         for i in range(5))  # fmt: skip
        assert [h.product_id for h in catalog.search(vector=np.eye(32)[2], tenant="acme", k=1)] == ["p2"]
    lonely = citus_cluster.create_database("citus_lonely", workers=[])
    engine = make_engine(lonely)
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            assert citus.is_coordinator(conn) and not citus.is_distributed(conn)
    finally:
        engine.dispose()


def test_a_single_node_catalog_moves_onto_a_cluster(
    citus_cluster: CitusCluster, server_url: str, template_db: str, tiny_siglip: Path, tmp_path: Path
) -> None:
    """docs/scaling.md's way: the roles and a dump of the catalog restored on a coordinator, then
    `imgsearch migrate` there distributes it; every search answers as it did on the one node."""
    single = new_database(server_url, template_db)
    vectors = np.random.default_rng(8).standard_normal((90, 32)).astype(np.float32)
    rows = [
        {"embedding": v, "tenant": TENANTS[i % 3], "product_id": f"p{i}", "category": f"c{i % 4}",
         "title": f"{('red', 'blue', 'green')[i % 3]} boot {i}", "price": i}
        for i, v in enumerate(vectors)
    ]  # fmt: skip
    searches = [
        {"vector": vectors[4], "tenant": "acme", "k": 5},
        {"vector": vectors[5], "tenant": "globex", "category": "c1", "k": 5},
        {"text": "red boot", "tenant": "acme", "mode": "lexical", "k": 5},
        {"vector": vectors[6], "k": 5},
    ]
    settings = Settings(model=str(tiny_siglip))
    with Catalog.open(single, model=str(tiny_siglip), settings=settings) as catalog:
        catalog.add_many(rows)
        before = [[(h.tenant, h.product_id) for h in catalog.search(**s)] for s in searches]
    source = make_url(single)
    dump, roles = tmp_path / "catalog.dump", tmp_path / "roles.sql"
    subprocess.run(
        [str(BIN / "pg_dump"), "-h", str(source.query["host"]), "-U", "postgres", "-Fc", "-f", str(dump),
         str(source.database)], check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [str(BIN / "pg_dumpall"), "-h", str(source.query["host"]), "-U", "postgres", "--roles-only", "-f", str(roles)],
        check=True, capture_output=True,
    )  # fmt: skip
    target = citus_cluster.create_database("citus_moved")
    coordinator = ["-h", "127.0.0.1", "-p", str(citus_cluster.coordinator.port), "-U", "postgres"]
    # from the catalog's database, where Citus creates each role on the workers too
    subprocess.run([str(BIN / "psql"), *coordinator, "-d", "citus_moved", "-q", "-f", str(roles)], capture_output=True)
    restored = subprocess.run(
        [str(BIN / "pg_restore"), *coordinator, "-d", "citus_moved", str(dump)], capture_output=True, text=True
    )
    assert "imgsearch" not in restored.stderr.replace("imgsearch_log", ""), restored.stderr  # only notices
    migrated = run_cli("migrate", IMGSEARCH_DATABASE_URL=target, IMGSEARCH_MODEL=str(tiny_siglip))
    assert migrated.returncode == 0, migrated.stderr
    with Catalog.open(target, model=str(tiny_siglip), settings=settings) as catalog:
        with catalog.engine.connect() as conn:
            assert citus.is_distributed(conn)
            assert conn.execute(text("SELECT count(*) FROM imgsearch.embeddings")).scalar_one() == 90
        after = [[(h.tenant, h.product_id) for h in catalog.search(**s)] for s in searches]
    assert after == before and all(before)


def test_a_distributed_catalog_takes_the_latest_migration_with_its_rows(
    citus_cluster: CitusCluster, tiny_siglip: Path
) -> None:
    """A catalog distributed at the revision before the latest (its last migration undone on the
    cluster) comes to the latest through `imgsearch migrate`: it stays distributed, the latest
    migration's changes reach every shard and node (0030: ``price_units`` on every row, the
    console's functions rewritten on each worker), every search answers as before, and the
    triggers rewritten for the shards still do their work."""
    url = citus_cluster.create_database("citus_upgraded")
    settings = Settings(model=str(tiny_siglip))
    vectors = np.random.default_rng(11).standard_normal((60, 32)).astype(np.float32)
    searches = [
        {"vector": vectors[3], "tenant": "acme", "price_min": "10.0002", "price_max": 40, "k": 5},
        {"vector": vectors[4], "tenant": "globex", "category": "c1", "price_max": "30.0001", "k": 5},
        {"vector": vectors[5], "price_min": 5, "k": 5, "total": True},
        {"text": "red boot", "tenant": "acme", "mode": "lexical", "price_max": 50, "k": 5, "facets": True},
    ]

    def answers(catalog: Catalog) -> list[Any]:
        found = []
        for search in searches:
            result = catalog.search(**search)
            found.append(([(h.tenant, h.product_id) for h in result], result.total, result.facets))
        return found

    with Catalog.open(url, model=str(tiny_siglip), settings=settings) as catalog:
        catalog.add_many(
            {"embedding": v, "tenant": TENANTS[i % 3], "product_id": f"p{i}", "category": f"c{i % 4}",
             "title": f"{('red', 'blue', 'green')[i % 3]} boot {i}", "price": f"{i}.000{i % 3}"}
            for i, v in enumerate(vectors)
        )  # fmt: skip
        before = answers(catalog)
    engine = make_engine(url)
    try:
        latest = migrate.head()
        previous = ScriptDirectory.from_config(migrate.alembic_config()).get_revision(latest).down_revision
        assert isinstance(previous, str)
        migrate.downgrade(engine, previous)
        with engine.connect() as conn:
            assert migrate.current(engine) == previous and citus.is_distributed(conn)
        migrated = run_cli("migrate", IMGSEARCH_DATABASE_URL=url, IMGSEARCH_MODEL=str(tiny_siglip))
        assert migrated.returncode == 0, migrated.stderr
        assert migrate.current(engine) == latest
        with engine.begin() as conn:
            assert citus.is_distributed(conn)
            for table in ("products", "embeddings"):
                rows, wrong = conn.execute(
                    text(
                        f"SELECT count(*), count(*) FILTER (WHERE price_units IS DISTINCT FROM"
                        f" (price * 10000)::bigint) FROM imgsearch.{table}"
                    )
                ).one()
                assert (rows, wrong) == (60, 0), table
            rewritten = conn.execute(
                text(
                    "SELECT result FROM run_command_on_workers($$SELECT count(*) FROM pg_proc"
                    " WHERE pronamespace = 'imgsearch'::regnamespace AND proname IN ('_search', '_lexical', 'facets')"
                    " AND prosrc LIKE '%price_units >= %' AND prosrc !~ '\\.price [<>]='$$) WHERE success"
                )
            ).scalars().all()
            assert rewritten == ["3", "3"]
            # the shards' trigger still copies a product's new price onto its embeddings
            conn.execute(text("UPDATE imgsearch.products SET price = 12.3456 WHERE tenant = 'acme' AND product_id = 'p0'"))
            units = conn.execute(
                text(
                    "SELECT e.price_units FROM imgsearch.embeddings e JOIN imgsearch.products p"
                    " ON p.id = e.product_pk AND p.tenant = e.tenant WHERE p.tenant = 'acme' AND p.product_id = 'p0'"
                )
            ).scalar_one()
            assert units == 123456
            conn.rollback()
    finally:
        engine.dispose()
    with Catalog.open(url, model=str(tiny_siglip), settings=settings) as catalog:
        after = answers(catalog)
        added = catalog.add_many([{"embedding": vectors[7], "tenant": "acme", "product_id": "new", "price": "10.0001"}])
        [hit] = catalog.search(vector=vectors[7], tenant="acme", price_min=10, price_max="10.0001", k=5)
    assert after == before and all(hits for hits, _, _ in before)
    assert hit.product_id == "new" and hit.image_id == added[0]
