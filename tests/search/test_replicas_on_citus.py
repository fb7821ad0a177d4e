"""Searches on a Citus cluster's replicas: a streaming standby of the coordinator and of each
worker (``pg_basebackup -R`` over TCP), the workers' standbys registered as secondary nodes
(``citus_add_secondary_node``) and the replica's URL asking for them
(``citus.use_secondary_nodes = always``)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from imgsearch import Catalog
from imgsearch.db import embedded
from imgsearch.search import replicas
from imgsearch.settings import Settings
from tests.citus import CitusCluster, Node, free_port
from tests.helpers import AS_SERVER_USER, BIN

TENANTS = ("acme", "globex")
ROWS = 400
DIM = 32


def _standby_of(node: Node, parent: Path) -> Node:
    """A hot standby of ``node``, started on a port of its own."""
    parent.mkdir(parents=True)
    if AS_SERVER_USER:
        shutil.chown(parent, embedded.SERVER_USER)
    standby = Node(parent / "data", free_port(), node.conf)
    subprocess.run(
        [*AS_SERVER_USER, str(BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(node.port),
         "-U", "postgres", "-D", str(standby.data), "-R", "-X", "stream", "-c", "fast"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    for lock in standby.data.glob(".s.PGSQL.*.lock"):  # the primary's socket lock, copied
        lock.unlink()
    standby.start()
    return standby


@dataclass
class Replicated:
    primary_url: str
    replica_url: str
    cluster: CitusCluster
    standbys: list[Node]  # the coordinator's, then each worker's

    def caught_up(self, timeout: float = 30) -> None:
        """Wait until each standby replayed all its primary wrote."""
        for primary, standby in zip(self.cluster.nodes, self.standbys, strict=True):
            with primary.connect() as conn:
                lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
            deadline = time.monotonic() + timeout
            with standby.connect() as conn:
                while not conn.execute("SELECT pg_last_wal_replay_lsn() >= %s", [lsn]).fetchone()[0]:  # type: ignore[index]
                    assert time.monotonic() < deadline, f"standby {standby.data} did not catch up"
                    time.sleep(0.05)


def _rows(start: int, count: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(start)
    return [
        {"embedding": rng.standard_normal(DIM).astype(np.float32), "tenant": TENANTS[i % 2],
         "product_id": f"p{i}", "category": f"c{i % 4}", "price": i % 50}
        for i in range(start, start + count)
    ]  # fmt: skip


def _open(url: str, model: Path, replica_urls: list[str] | None = None) -> Catalog:
    return Catalog.open(url, model=str(model), settings=Settings(model=str(model)), replicas=replica_urls)


@pytest.fixture(scope="module")
def replicated(citus_cluster: CitusCluster, tiny_siglip: Path) -> Iterator[Replicated]:
    url = citus_cluster.create_catalog("citus_replicas")
    with _open(url, tiny_siglip) as catalog:
        catalog.add_many(_rows(0, ROWS))
    root = citus_cluster.root.parent / "citus-standbys"
    standbys: list[Node] = []
    try:
        for node in citus_cluster.nodes:
            standbys.append(_standby_of(node, root / node.data.name))
        with citus_cluster.coordinator.connect("citus_replicas") as conn:
            for worker, standby in zip(citus_cluster.workers, standbys[1:], strict=True):
                conn.execute(
                    "SELECT citus_add_secondary_node('127.0.0.1', %s, '127.0.0.1', %s)",
                    [standby.port, worker.port],
                )
        options = quote("-c citus.use_secondary_nodes=always")
        replica_url = f"{standbys[0].url('citus_replicas')}?options={options}"
        found = Replicated(url, replica_url, citus_cluster, standbys)
        found.caught_up()
        yield found
    finally:
        with citus_cluster.coordinator.connect("citus_replicas") as conn:
            conn.execute(
                "SELECT citus_remove_node(nodename, nodeport) FROM pg_dist_node WHERE noderole = 'secondary'"
            )
        for standby in reversed(standbys):
            standby.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def _ids(hits: object) -> list[tuple[int, float]]:
    return [(h.image_id, round(h.distance, 4)) for h in hits]  # type: ignore[attr-defined]


def test_a_replica_searches_the_workers_standbys_with_the_primarys_hits(
    replicated: Replicated, tiny_siglip: Path
) -> None:
    with (
        _open(replicated.primary_url, tiny_siglip, [replicated.replica_url]) as routed,
        _open(replicated.primary_url, tiny_siglip) as primary,
    ):
        rng = np.random.default_rng(7)
        for _ in range(5):
            q = rng.standard_normal(DIM).astype(np.float32)
            for filters in ({"tenant": "acme"}, {"tenant": "globex", "category": "c1", "price_max": 30}, {}):
                want = _ids(primary.search(vector=q, k=5, **filters))
                assert _ids(routed.search(vector=q, k=5, **filters)) == want
                assert len(want) == 5
        assert routed.replicas is not None and routed.replicas.members[0].searches == 15
        # the rows were read on the workers' standbys: with the workers' primaries stopped, the
        # replica still answers every search, and the same
        for worker in replicated.cluster.workers:
            worker.stop()
        try:
            q = rng.standard_normal(DIM).astype(np.float32)
            want_after = _ids(routed.search(vector=q, k=5, tenant="acme"))
            assert routed.replicas.members[0].searches == 16
        finally:
            for worker in replicated.cluster.workers:
                worker.start()
        assert want_after == _ids(primary.search(vector=q, k=5, tenant="acme"))


def test_read_your_writes_holds_on_a_clusters_replica(replicated: Replicated, tiny_siglip: Path) -> None:
    with _open(replicated.primary_url, tiny_siglip, [replicated.replica_url]) as catalog:
        with catalog.engine.connect() as conn:
            positions = replicas.primary_lsn(conn)
        # the coordinator's position and each worker group's
        assert positions.startswith("{") and positions.count(":") == 3, positions
        for trial, row in enumerate(_rows(10_000, 40)):
            (image_id,) = catalog.add_many([row])
            hits = catalog.search(vector=row["embedding"], k=1, tenant=row["tenant"], consistent=True)
            assert [h.image_id for h in hits] == [image_id], f"trial {trial}: the upload wasn't seen"
        assert catalog.replicas is not None and catalog.replicas.members[0].searches > 0
        print(
            f"\nconsistent on a cluster's replica: 40 of 40 found ({catalog.replicas.members[0].searches} by the replica)"
        )
