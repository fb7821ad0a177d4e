"""Shards moving under traffic on a real cluster (``citus_cluster``): a shop's shard group moved
to the other worker while uploads and searches run (``citus_move_shard_placement``, logical), then
a node added and the shards rebalanced onto it, also under traffic. No acknowledged upload is
lost, no search fails, and the searches are exact before, during and after."""

from __future__ import annotations

import shutil
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.settings import Settings
from tests.citus import CitusCluster, Node, free_port

TENANTS = ("acme", "globex", "initech")
DIM = 32
K = 5


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@dataclass
class Traffic:
    """Uploads of one shop and searches of it, in two threads, until stopped."""

    catalog: Catalog
    query: np.ndarray
    prefix: str  # of the uploads' product ids
    acknowledged: dict[str, np.ndarray] = field(default_factory=dict)  # product id -> vector
    searches: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    results: list[list[str]] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)  # when each search and upload answered
    stored: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def upload(self) -> None:
        rng = np.random.default_rng(zlib.crc32(self.prefix.encode()))
        n = 0
        while not self.stop.is_set():
            vectors = _unit(rng.standard_normal((4, DIM)))
            ids = [f"{self.prefix}{n + i}" for i in range(4)]
            try:
                self.catalog.add_many(
                    {"embedding": v, "tenant": "acme", "product_id": p} for p, v in zip(ids, vectors, strict=True)
                )
            except Exception as exc:
                self.failures[f"upload {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"] += 1
            else:
                self.acknowledged.update(zip(ids, vectors, strict=True))
                self.stored.append(time.monotonic())
            n += 4
            time.sleep(0.02)

    def search(self) -> None:
        while not self.stop.is_set():
            try:
                hits = self.catalog.search(vector=self.query, tenant="acme", k=K)
            except Exception as exc:
                self.failures[f"search {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"] += 1
            else:
                self.searches += 1
                self.results.append([h.product_id for h in hits])
                self.answered.append(time.monotonic())
            time.sleep(0.01)

    def __enter__(self) -> Traffic:
        self.threads = [threading.Thread(target=self.upload), threading.Thread(target=self.search)]
        for thread in self.threads:
            thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


@pytest.fixture(scope="module")
def shop(citus_cluster: CitusCluster, tiny_siglip: Path) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    url = citus_cluster.create_catalog("citus_moves")
    rng = np.random.default_rng(5)
    vectors = _unit(rng.standard_normal((600, DIM)))
    stored = {f"p{i}": v for i, v in enumerate(vectors) if TENANTS[i % 3] == "acme"}
    with Catalog.open(url, model=str(tiny_siglip), settings=Settings(model=str(tiny_siglip))) as catalog:
        catalog.add_many(
            {"embedding": v, "tenant": TENANTS[i % 3], "product_id": f"p{i}"} for i, v in enumerate(vectors)
        )
    yield url, stored


def _exact(stored: dict[str, np.ndarray], q: np.ndarray) -> list[str]:
    ids = list(stored)
    scores = np.stack([stored[i] for i in ids]) @ (q / np.linalg.norm(q))
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:K]]


def _placement(catalog: Catalog, tenant: str) -> tuple[int, int]:
    """The shard of ``tenant``'s products and the port of the node holding it."""
    with catalog.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT s.shardid, s.nodeport FROM citus_shards s"
                " WHERE s.shardid = get_shard_id_for_distribution_column('imgsearch.products', CAST(:t AS text))"
            ),
            {"t": tenant},
        ).one()
    return int(row.shardid), int(row.nodeport)


def _check(traffic: Traffic, catalog: Catalog, stored: dict[str, np.ndarray], moved: tuple[float, float]) -> None:
    assert not traffic.failures, traffic.failures
    # the traffic ran while the shards moved
    assert any(moved[0] <= t <= moved[1] for t in traffic.answered), (moved, traffic.answered[:3])
    assert any(moved[0] <= t <= moved[1] for t in traffic.stored), (moved, traffic.stored[:3])
    assert traffic.searches > 10 and len(traffic.acknowledged) > 10
    with catalog.engine.connect() as conn:
        found = set(
            conn.execute(
                text("SELECT product_id FROM imgsearch.products WHERE tenant = 'acme' AND product_id = ANY(:ids)"),
                {"ids": list(traffic.acknowledged)},
            ).scalars()
        )
    assert found == set(traffic.acknowledged)  # every acknowledged upload is there
    stored.update(traffic.acknowledged)
    assert [h.product_id for h in catalog.search(vector=traffic.query, tenant="acme", k=K)] == _exact(
        stored, traffic.query
    )


def test_a_shops_shards_move_to_the_other_worker_under_traffic(
    shop: tuple[str, dict[str, np.ndarray]], citus_cluster: CitusCluster, tiny_siglip: Path
) -> None:
    url, stored = shop
    q = _unit(np.random.default_rng(1).standard_normal((1, DIM)))[0]
    with Catalog.open(url, model=str(tiny_siglip), settings=Settings(model=str(tiny_siglip))) as catalog:
        assert [h.product_id for h in catalog.search(vector=q, tenant="acme", k=K)] == _exact(stored, q)
        shard, source = _placement(catalog, "acme")
        target = next(w.port for w in citus_cluster.workers if w.port != source)
        with Traffic(catalog, q, "moving") as traffic, catalog.engine.connect() as conn:
            started = time.monotonic()
            conn.execute(
                text(
                    "SELECT citus_move_shard_placement(:shard, '127.0.0.1', :source, '127.0.0.1', :target,"
                    " shard_transfer_mode => 'force_logical')"
                ),
                {"shard": shard, "source": source, "target": target},
            )
            conn.commit()
            moved = (started, time.monotonic())
        assert _placement(catalog, "acme") == (shard, target)
        _check(traffic, catalog, stored, moved)
        # every search during the move answered a full page of acme's products
        assert all(len(r) == K for r in traffic.results)


def test_a_new_node_takes_shards_in_a_rebalance_under_traffic(
    shop: tuple[str, dict[str, np.ndarray]], citus_cluster: CitusCluster, tiny_siglip: Path
) -> None:
    url, stored = shop
    node = Node(citus_cluster.root / "worker-added", free_port())
    node.init()
    node.start()
    try:
        citus_cluster.add_node("citus_moves", node)
        q = _unit(np.random.default_rng(2).standard_normal((1, DIM)))[0]
        with Catalog.open(url, model=str(tiny_siglip), settings=Settings(model=str(tiny_siglip))) as catalog:
            with Traffic(catalog, q, "rebalancing") as traffic, catalog.engine.connect() as conn:
                started = time.monotonic()
                conn.execute(text("SELECT rebalance_table_shards(shard_transfer_mode => 'force_logical')"))
                conn.commit()
                moved = (started, time.monotonic())
            with catalog.engine.connect() as conn:
                on_new = conn.execute(
                    text("SELECT count(*) FROM citus_shards WHERE nodeport = :p AND table_name::text = 'imgsearch.products'"),
                    {"p": node.port},
                ).scalar_one()
            assert on_new >= 2  # of 8: the new node took its share
            _check(traffic, catalog, stored, moved)
    finally:
        node.stop("immediate")
        shutil.rmtree(node.data, ignore_errors=True)
