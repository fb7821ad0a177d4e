"""The boosts job in a real Celery worker: beat runs ``imgsearch.refresh_boosts`` on its schedule,
and a queued one runs at once; neither needs the model."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from sqlalchemy import text

from imgsearch import Catalog
from tests.helpers import Workers, clean_environment, wait_until

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def shop(database_url: str, tiny_siglip: Path, tmp_path: Path) -> Iterator[tuple[Catalog, Workers, str]]:
    queue = f"imgsearch-test-{uuid.uuid4().hex[:8]}"
    env = clean_environment()
    env.update(
        IMGSEARCH_DATABASE_URL=database_url, IMGSEARCH_MODEL=str(tiny_siglip), IMGSEARCH_REDIS_URL=REDIS_URL,
        IMGSEARCH_QUEUE=queue, IMGSEARCH_DEVICE="cpu", HF_HUB_OFFLINE="1", TMPDIR=str(tmp_path),
        IMGSEARCH_BOOST_REFRESH_SECONDS="1", IMGSEARCH_BOOST_MIN_CLICKS="2",
    )  # fmt: skip
    workers = Workers(env, tmp_path)
    rng = np.random.default_rng(11)
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        catalog.add_many(
            [{"tenant": "acme", "product_id": f"sku-{i}", "embedding": rng.standard_normal(catalog.dim)}
             for i in range(10)]
        )  # fmt: skip
        events: list[dict[str, Any]] = []
        for query in range(2):
            vector = rng.standard_normal(catalog.dim)
            for i in range(4):
                found = catalog.search(vector=vector, tenant="acme", k=4)
                events.append({"query_id": found.query_id, "action": "click", "object_id": found[0].product_id,
                               "position": 1})  # fmt: skip
                if query == 0 and i < 3:  # the first query's fourth hit is bought: a boost
                    events.append({"query_id": found.query_id, "action": "purchase",
                                   "object_id": found[3].product_id, "position": 4})  # fmt: skip
        catalog.record_events("acme", events)
        try:
            yield catalog, workers, queue
        finally:
            workers.stop_all()
            redis.Redis.from_url(REDIS_URL).delete(queue)


def _boosts(catalog: Catalog) -> int:
    with catalog.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM imgsearch.boosts")).scalar_one())


def test_beat_refreshes_the_boosts_on_its_schedule(shop: tuple[Catalog, Workers, str]) -> None:
    catalog, workers, _ = shop
    assert _boosts(catalog) == 0
    workers.start()  # with beat: the sweep and the boosts job
    wait_until(lambda: _boosts(catalog) > 0, 60, workers, "boosts learned by the beat's job")
    assert "boosts:" in workers.log_tail()
