"""Uploads -> workers -> ready on a Citus cluster (``citus_cluster``): real ``imgsearch worker``
processes claim each shop's images on its own node (``FOR UPDATE SKIP LOCKED`` in a statement of
one tenant), and every upload becomes ready exactly once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.settings import Settings
from imgsearch.work import queue
from tests.citus import CitusCluster
from tests.helpers import Workers, wait_until, worker_env
from tests.workers.test_workers import REDIS_URL, jpeg

TENANTS = ("acme", "globex", "initech")


@pytest.fixture(scope="module")
def cluster_url(citus_cluster: CitusCluster) -> str:
    return citus_cluster.create_catalog("citus_workers")


@pytest.fixture
def setup(cluster_url: str, tiny_siglip: Path, tmp_path: Path) -> Iterator[tuple[Catalog, Workers]]:
    name = f"imgsearch-test-{uuid.uuid4().hex[:8]}"
    env = worker_env(cluster_url, tiny_siglip, REDIS_URL, name, tmp_path, IMGSEARCH_BATCH_SIZE="8")
    settings = Settings(redis_url=REDIS_URL, queue=name, wake_workers=True, batch_size=8)
    workers = Workers(env, tmp_path)
    with Catalog.open(cluster_url, model=str(tiny_siglip), settings=settings) as catalog:
        try:
            yield catalog, workers
        finally:
            workers.stop_all()
            redis.Redis.from_url(REDIS_URL).delete(name)
            with catalog.engine.begin() as conn:
                conn.execute(
                    text(
                        "TRUNCATE imgsearch.embeddings, imgsearch.image_products, imgsearch.images, imgsearch.products CASCADE"
                    )
                )


def _states(catalog: Catalog) -> dict[str, int]:
    with catalog.engine.connect() as conn:
        return dict(conn.execute(text("SELECT state, count(*) FROM imgsearch.images GROUP BY state")).all())


def test_claims_take_each_shops_images_on_its_node_and_never_the_same_twice(
    setup: tuple[Catalog, Workers],
) -> None:
    catalog, _ = setup
    catalog.add_many({"image": jpeg(i), "tenant": TENANTS[i % 3], "product_id": f"p{i}"} for i in range(12))
    with catalog.engine.begin() as first:
        a = queue.claim_batch(first, 5)
        with catalog.engine.begin() as second:
            b = queue.claim_batch(second, 20)
    assert len(a) == 5 and len(b) == 7
    assert not {c.image_id for c in a} & {c.image_id for c in b}
    # the oldest first: the first batch takes the shop with the oldest image, then the next
    assert sorted(c.tenant for c in a) == ["acme"] * 4 + ["globex"]


def test_uploads_of_three_shops_all_become_ready_once(setup: tuple[Catalog, Workers]) -> None:
    catalog, workers = setup
    catalog.add_many(
        {"image": jpeg(100 + i), "tenant": TENANTS[i % 3], "product_id": f"p{i}"} for i in range(60)
    )
    assert _states(catalog) == {"pending": 60}
    workers.start("--concurrency", "2")
    wait_until(lambda: _states(catalog).get("ready") == 60, 240, workers, "60 ready images")
    with catalog.engine.connect() as conn:
        per_image = (
            conn.execute(
                text(
                    "SELECT count(e.image_id) FROM imgsearch.images i LEFT JOIN imgsearch.embeddings e"
                    " ON e.image_id = i.id AND e.tenant = i.tenant GROUP BY i.id, i.tenant"
                )
            )
            .scalars()
            .all()
        )
        attempts = conn.execute(text("SELECT max(attempts) FROM imgsearch.images")).scalar()
    assert per_image == [1] * 60 and attempts == 1
    hits = catalog.search(similar_to_product="p3", tenant="acme", k=3)
    assert len(hits) == 3 and {hit.tenant for hit in hits} == {"acme"}


def test_a_console_text_search_is_answered_by_a_worker_through_the_coordinator(
    setup: tuple[Catalog, Workers],
) -> None:
    """search_text in psql on a coordinator: a text no one embedded yet goes to a real worker
    (the text request's loopback to the coordinator, the worker's listener there), and the hits
    are the library's."""
    catalog, workers = setup
    catalog.add_many(
        {"image": jpeg(200 + i), "tenant": TENANTS[i % 3], "product_id": f"p{i}", "category": "shoes"}
        for i in range(9)
    )
    workers.start("--concurrency", "1")
    wait_until(lambda: _states(catalog).get("ready") == 9, 240, workers, "9 ready images")
    url = catalog.engine.url
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database, autocommit=True) as conn:
        conn.execute("SET imgsearch.text_timeout = 60")
        rows = conn.execute(
            "SELECT product_id, distance FROM imgsearch.search_text('a pair of shoes never asked for', 3, tenant => 'acme')"
        ).fetchall()
    expected = catalog.search(text="a pair of shoes never asked for", tenant="acme", k=3, mode="semantic", parse=False)
    assert [r[0] for r in rows] == [h.product_id for h in expected] and len(rows) == 3
    assert [round(r[1], 4) for r in rows] == [round(h.distance or 0, 4) for h in expected]
