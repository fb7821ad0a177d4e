"""Searches on real hot standbys: a primary and two streaming standbys started from the embedded
PostgreSQL's own binaries (``pg_basebackup -R``), each on its own socket."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
import pytest
from sqlalchemy import make_url, text

from imgsearch import Catalog
from imgsearch.access import tenancy
from imgsearch.db import embedded
from imgsearch.settings import Settings
from tests.helpers import Standby, clean_environment

ROWS = 3000


@dataclass
class Cluster:
    primary: str
    standbys: list[Standby]
    dim: int

    def caught_up(self, timeout: float = 30) -> None:
        """Wait until every running standby replayed all the primary wrote."""
        with psycopg.connect(
            host=make_url(self.primary).query["host"], user="postgres", dbname="imgsearch", autocommit=True
        ) as conn:
            lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        for standby in self.standbys:
            if not standby.running():
                continue
            deadline = time.monotonic() + timeout
            with psycopg.connect(
                host=str(standby.data), user="postgres", dbname="imgsearch", autocommit=True
            ) as conn:
                while not conn.execute("SELECT pg_last_wal_replay_lsn() >= %s", (lsn,)).fetchone()[0]:
                    assert time.monotonic() < deadline, "a standby did not catch up"
                    time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_siglip: Path) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("replicas")
    home = root / "primary"
    primary = embedded.ensure_started(home)
    standbys: list[Standby] = []
    try:
        with Catalog.open(
            primary, model=str(tiny_siglip), settings=Settings(model=str(tiny_siglip))
        ) as catalog:
            rng = np.random.default_rng(0)
            catalog.add_many(
                {
                    "embedding": rng.standard_normal(catalog.dim),
                    "tenant": ("acme", "globex")[i % 2],
                    "product_id": f"p{i}",
                    "category": f"c{i % 5}",
                    "price": i % 100,
                }
                for i in range(ROWS)
            )
            dim = catalog.dim
            with catalog.engine.connect() as conn:  # what autovacuum would have done by now
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
        socket_dir = make_url(primary).query["host"]
        for n in range(2):
            standbys.append(Standby.copy_of(str(socket_dir), root / f"standby{n}"))
        cluster = Cluster(primary, standbys, dim)
        cluster.caught_up()
        yield cluster
    finally:
        for standby in standbys:
            if standby.running():
                standby.stop()
        embedded.stop(home)


def open_catalog(cluster: Cluster, tiny_siglip: Path, **settings: object) -> Catalog:
    return Catalog.open(
        cluster.primary,
        settings=Settings(model=str(tiny_siglip), **settings),  # type: ignore[arg-type]
        replicas=[s.url() for s in cluster.standbys],
    )


def query(dim: int, seed: int) -> list[float]:
    return np.random.default_rng(seed).standard_normal(dim).tolist()


def test_searches_run_on_the_replicas_with_the_primarys_results(cluster: Cluster, tiny_siglip: Path) -> None:
    cluster.caught_up()
    with (
        open_catalog(cluster, tiny_siglip) as routed,
        Catalog.open(cluster.primary, settings=Settings(model=str(tiny_siglip))) as primary,
    ):
        assert routed.replicas is not None and len(routed.replicas) == 2
        for seed in range(20):
            for filters in ({}, {"tenant": "acme"}, {"category": "c1", "price_max": 50}):
                got = [
                    (h.image_id, round(h.distance, 5))
                    for h in routed.search(vector=query(cluster.dim, seed), k=10, **filters)
                ]
                want = [
                    (h.image_id, round(h.distance, 5))
                    for h in primary.search(vector=query(cluster.dim, seed), k=10, **filters)
                ]
                assert got == want
        # round robin: both standbys answered, the primary's search pool never did
        assert [m.searches for m in routed.replicas.members] == [30, 30]
        assert routed._search_engine.pool.checkedout() == 0 and routed._search_engine.pool.checkedin() == 0
        # the replica uses the HNSW index (a standby has the primary's indexes)
        with routed.replicas.members[0].engine.connect() as conn:
            assert conn.execute(text("SELECT pg_is_in_recovery()")).scalar()
            plan = "\n".join(
                conn.execute(
                    text(
                        f"EXPLAIN SELECT image_id FROM imgsearch.embeddings WHERE model_id = 1 "
                        f"ORDER BY embedding::halfvec({cluster.dim}) <=> CAST(:q AS halfvec({cluster.dim})) LIMIT 10"
                    ),
                    {"q": str(query(cluster.dim, 0))},
                ).scalars()
            )
        assert "embeddings_hnsw_m1" in plan
        # caught up: each search's record (imgsearch.learning.queries) is a write on the primary,
        # committed without waiting for its WAL flush, which the standbys replay a moment later
        deadline = time.monotonic() + 10
        while routed.replicas.lags() != {m.name: 0.0 for m in routed.replicas.members}:
            assert time.monotonic() < deadline, routed.replicas.lags()
            time.sleep(0.1)


def test_read_your_writes_holds_with_consistent_searches(cluster: Cluster, tiny_siglip: Path) -> None:
    with open_catalog(cluster, tiny_siglip) as catalog:
        for trial in range(200):
            vector = query(cluster.dim, 10_000 + trial)
            (image_id,) = catalog.add_many(
                [{"embedding": vector, "tenant": "acme", "product_id": f"ryw{trial}"}]
            )
            hits = catalog.search(vector=vector, k=1, tenant="acme", consistent=True)
            assert [h.image_id for h in hits] == [image_id], f"trial {trial}: the upload wasn't seen"
        assert catalog.replicas is not None and all(m.searches > 0 for m in catalog.replicas.members)
        served = sum(m.searches for m in catalog.replicas.members)
        stale = 0
        for trial in range(100):
            vector = query(cluster.dim, 20_000 + trial)
            (image_id,) = catalog.add_many(
                [{"embedding": vector, "tenant": "acme", "product_id": f"plain{trial}"}]
            )
            if [h.image_id for h in catalog.search(vector=vector, k=1, tenant="acme")] != [image_id]:
                stale += 1
        print(
            f"\nconsistent: 200 of 200 found their upload ({served} answered by a standby); "
            f"plain searches right after their upload that missed it: {stale} of 100"
        )


def test_a_replica_lagging_beyond_the_bound_leaves_the_rotation_until_it_catches_up(
    cluster: Cluster, tiny_siglip: Path
) -> None:
    cluster.caught_up()
    lagging = cluster.standbys[1]
    # restarted, it has replayed no transaction yet: no replay timestamp to tell its lag by
    lagging.stop("fast")
    lagging.start()
    cluster.caught_up()
    with open_catalog(cluster, tiny_siglip, replica_max_lag_seconds=1.0) as catalog:
        assert catalog.replicas is not None
        with psycopg.connect(
            host=str(lagging.data), user="postgres", dbname="imgsearch", autocommit=True
        ) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
            try:
                catalog.add_many(
                    [{"embedding": query(cluster.dim, 7), "tenant": "acme", "product_id": "while-paused"}]
                )
                time.sleep(3.5)  # past the bound, and past the next lag check
                before = [m.searches for m in catalog.replicas.members]
                for seed in range(10):
                    assert len(catalog.search(vector=query(cluster.dim, seed), k=5)) == 5
                after = [m.searches for m in catalog.replicas.members]
                assert after[1] == before[1], "the lagging replica stayed in the rotation"
                assert after[0] == before[0] + 10
                assert catalog.replicas.lags()[catalog.replicas.members[1].name] > 1.0
            finally:
                conn.execute("SELECT pg_wal_replay_resume()")
        cluster.caught_up()
        # back at the next lag check (every 2 s); on a busy box that check may land while it replays
        # the searches' own writes (their log), so it is given a deadline rather than one check
        before = catalog.replicas.members[1].searches
        deadline = time.monotonic() + 30
        seed = 0
        while catalog.replicas.members[1].searches == before:
            assert time.monotonic() < deadline, "it didn't come back after catching up"
            catalog.search(vector=query(cluster.dim, seed), k=5)
            seed += 1
            time.sleep(0.1)


def test_a_standby_killed_mid_traffic_costs_no_failed_search_and_rejoins(
    cluster: Cluster, tiny_siglip: Path
) -> None:
    cluster.caught_up()
    failures: list[BaseException] = []
    done = threading.Event()
    with open_catalog(cluster, tiny_siglip) as catalog:
        assert catalog.replicas is not None

        def traffic() -> None:
            seed = 0
            while not done.is_set():
                seed += 1
                try:
                    hits = catalog.search(vector=query(cluster.dim, seed), k=10, tenant="globex")
                    assert len(hits) == 10
                except BaseException as exc:
                    failures.append(exc)

        threads = [threading.Thread(target=traffic) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1)
            victim = cluster.standbys[1]
            victim.stop("immediate")
            time.sleep(2)
            killed = catalog.replicas.members[1]
            assert killed.down_until > time.monotonic() or killed.failures > 0
            served_while_down = catalog.replicas.members[0].searches
            time.sleep(1)
            assert catalog.replicas.members[0].searches > served_while_down  # the other one carries on
            victim.start()
            cluster.caught_up()
            before = killed.searches
            deadline = time.monotonic() + 30
            while killed.searches == before:  # back in the rotation by itself
                assert time.monotonic() < deadline, "the restarted standby never rejoined"
                time.sleep(0.2)
        finally:
            done.set()
            for thread in threads:
                thread.join()
        assert failures == []
        # every standby down: the primary answers
        for standby in cluster.standbys:
            standby.stop("immediate")
        try:
            assert len(catalog.search(vector=query(cluster.dim, 1), k=10)) == 10
        finally:
            for standby in cluster.standbys:
                standby.start()


def test_tenant_isolation_holds_on_a_replica(cluster: Cluster, tiny_siglip: Path) -> None:
    with Catalog.open(cluster.primary, settings=Settings(model=str(tiny_siglip))) as primary:
        password = tenancy.create_login(primary.engine, "acme_replica_console", "acme")
    try:
        cluster.caught_up()
        with open_catalog(cluster, tiny_siglip) as catalog:
            hits = catalog.search(vector=query(cluster.dim, 3), k=50, tenant="acme")
            assert {h.tenant for h in hits} == {"acme"}
        standby = cluster.standbys[0]
        with psycopg.connect(
            host=str(standby.data), user="acme_replica_console", password=password, dbname="imgsearch"
        ) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            assert conn.execute("SELECT DISTINCT tenant FROM imgsearch.products").fetchall() == [("acme",)]
            vector = "[" + ",".join(map(str, query(cluster.dim, 3))) + "]"
            rows = conn.execute(
                "SELECT image_id FROM imgsearch.search_vector(%s::vector, 20)", (vector,)
            ).fetchall()
            assert len(rows) == 20
            tenants = conn.execute(
                "SELECT DISTINCT tenant FROM imgsearch.images WHERE id = ANY(%s)", ([r[0] for r in rows],)
            ).fetchall()
            assert tenants == [("acme",)]
    finally:
        with (
            Catalog.open(cluster.primary, settings=Settings(model=str(tiny_siglip))) as primary,
            primary.engine.begin() as conn,
        ):
            conn.execute(text('DROP OWNED BY "acme_replica_console"'))
            conn.execute(text('DROP ROLE "acme_replica_console"'))


def test_status_metrics_and_the_http_service_use_the_replicas(
    cluster: Cluster, tiny_siglip: Path, tmp_path: Path
) -> None:
    from imgsearch.access import keys
    from imgsearch.db.engine import make_engine
    from tests.server.conftest import start_api

    cluster.caught_up()
    urls = ",".join(s.url() for s in cluster.standbys)
    env = clean_environment()
    env.update(
        IMGSEARCH_DATABASE_URL=cluster.primary, IMGSEARCH_REPLICA_URLS=urls, IMGSEARCH_MODEL=str(tiny_siglip)
    )
    status = subprocess.run(
        [sys.executable, "-m", "imgsearch", "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("s behind") == 2, status.stdout
    engine = make_engine(cluster.primary)
    key, _ = keys.create_key(engine, "acme")
    engine.dispose()
    api = start_api(cluster.primary, tiny_siglip, tmp_path, IMGSEARCH_REPLICA_URLS=urls)
    try:
        import httpx

        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            for trial in range(20):
                vector = query(cluster.dim, 50_000 + trial)
                response = client.post(
                    "/v1/images", json={"items": [{"embedding": vector, "product_id": f"http{trial}"}]}
                )
                (image_id,) = response.json()["ids"]
                hits = client.post("/v1/search", json={"vector": vector, "k": 1, "consistent": True}).json()[
                    "hits"
                ]
                assert [h["image_id"] for h in hits] == [image_id]
            metrics = httpx.get(f"{api.url}/metrics").text
        for standby in cluster.standbys:
            assert (
                f'imgsearch_replica_up{{replica="postgresql+psycopg://postgres@/imgsearch?host={standby.data}"}} 1.0'
                in metrics.replace("%2F", "/")
            )
        assert "imgsearch_replica_lag_seconds{" in metrics
    finally:
        api.stop()


def test_a_promoted_standby_leaves_the_search_rotation(cluster: Cluster, tiny_siglip: Path) -> None:
    """Failover: a standby promoted to primary takes writes of its own from then on, so searches
    leave it (the other standbys, then the primary, answer); after the switch an application
    points IMGSEARCH_DATABASE_URL at it and reconnects."""
    socket_dir = str(make_url(cluster.primary).query["host"])
    # beside the others: the folders above are the server user's to traverse
    promoted = Standby.copy_of(socket_dir, Path(socket_dir).parents[1] / "failover")
    try:
        cluster.caught_up()
        urls = [cluster.standbys[0].url(), promoted.url()]
        with Catalog.open(
            cluster.primary, settings=Settings(model=str(tiny_siglip)), replicas=urls
        ) as catalog:
            assert catalog.replicas is not None
            for seed in range(4):
                catalog.search(vector=query(cluster.dim, seed), k=5)
            assert catalog.replicas.members[1].searches == 2
            promoted.pg_ctl("promote")
            time.sleep(2.5)  # the next lag check sees it
            before = catalog.replicas.members[1].searches
            for seed in range(10):
                assert len(catalog.search(vector=query(cluster.dim, seed), k=5)) == 5
            assert catalog.replicas.members[1].searches == before
            assert catalog.replicas.members[1].in_recovery is False
        # the application now points at the promoted server: it is a primary like any other
        with Catalog.open(promoted.url(), settings=Settings(model=str(tiny_siglip))) as after:
            vector = query(cluster.dim, 99)
            (image_id,) = after.add_many(
                [{"embedding": vector, "tenant": "acme", "product_id": "after-failover"}]
            )
            assert [h.image_id for h in after.search(vector=vector, k=1, tenant="acme")] == [image_id]
    finally:
        if promoted.running():
            promoted.stop()
