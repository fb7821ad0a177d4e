"""Webhooks delivered by real ``imgsearch worker`` processes, as a shop's receiver sees them: every
event arrives (verified by the receiver's own Standard Webhooks verifier) after the receiver was
down, after a worker was killed mid-batch and after PostgreSQL restarted under the deliveries;
none is doubled once de-duplicated by ``webhook-id``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.db import embedded
from imgsearch.settings import Settings
from tests.helpers import FileServer, Workers, unit, wait_until, worker_env
from tests.hooks.receiver import Receiver, serving
from tests.workers.test_workers import REDIS_URL, jpeg


def _env(database_url: str, model: Path, tmp_path: Path, queue: str) -> dict[str, str]:
    return worker_env(
        database_url, model, REDIS_URL, queue, tmp_path, IMGSEARCH_WEBHOOK_ALLOW="127.0.0.1",
        IMGSEARCH_WEBHOOK_RETRY_SECONDS="0.2", IMGSEARCH_WEBHOOK_TIMEOUT_SECONDS="1",
    )  # fmt: skip


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"imgsearch-hooks-{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(REDIS_URL).delete(name)


def _free_port() -> int:
    with serving(Receiver()) as probe:
        return probe.port


def test_a_worker_tells_a_receiver_that_was_down_of_every_ready_and_failed_image(
    database_url: str, tiny_siglip: Path, tmp_path: Path, queue: str, image_server: FileServer
) -> None:
    settings = Settings(redis_url=REDIS_URL, queue=queue, wake_workers=True, webhook_allow=["127.0.0.1/32"])
    workers = Workers(_env(database_url, tiny_siglip, tmp_path, queue), tmp_path)
    workers.env["IMGSEARCH_DOWNLOAD_ALLOW"] = "127.0.0.1"
    port, receiver = _free_port(), Receiver()
    with Catalog.open(database_url, model=str(tiny_siglip), settings=settings) as catalog:
        created = catalog.webhooks.add(f"http://127.0.0.1:{port}/hooks", tenant="acme")
        receiver.secrets = [created.secret]
        good = catalog.add_many([{"image": jpeg(i), "tenant": "acme", "product_id": f"p{i}"} for i in range(12)])
        bad = catalog.add(image=f"{image_server.url}/missing.jpg", tenant="acme", product_id="broken")  # a 404
        try:
            workers.start("--concurrency", "1")
            wait_until(lambda: catalog.webhooks.stats().pending == 13 and _attempted(catalog), 120, workers,
                       "the images embedded and their events tried")  # fmt: skip
            with serving(receiver, port):  # the receiver comes back
                wait_until(lambda: len(receiver.messages()) == 13, 60, workers, "every event delivered")
        finally:
            workers.stop_all()
    ready = {m["body"]["data"]["image_id"] for m in receiver.events("image.ready")}
    [failed] = receiver.events("image.failed")
    assert ready == set(good) and failed["body"]["data"]["image_id"] == bad
    assert failed["body"]["data"]["reason"]  # why it failed, as GET /v1/images/{id} says
    assert receiver.rejected == []  # every one verified


def _attempted(catalog: Catalog) -> bool:
    with catalog.engine.connect() as conn:
        return bool(conn.execute(text("SELECT bool_and(attempts > 0) FROM imgsearch.webhook_deliveries")).scalar())


def test_nothing_is_lost_when_a_worker_dies_mid_batch_and_postgresql_restarts(
    home: Path, tiny_siglip: Path, tmp_path: Path, queue: str
) -> None:
    url = embedded.ensure_started(home)
    workers = Workers(_env(url, tiny_siglip, tmp_path, queue), tmp_path)
    receiver = Receiver(delay=0.3)
    with serving(receiver), Catalog.open(url, model=str(tiny_siglip), settings=Settings(
        webhook_allow=["127.0.0.1/32"], wake_workers=False)) as catalog:  # fmt: skip
        receiver.secrets = [catalog.webhooks.add(receiver.url, tenant="acme", events=["image.ready"]).secret]
        ids = catalog.add_many(
            [{"embedding": unit(catalog.dim, i), "tenant": "acme", "product_id": f"p{i}"} for i in range(150)]
        )
        try:
            first = workers.start("--concurrency", "1")
            wait_until(lambda: len(receiver.raw) >= 5, 60, workers, "the first deliveries")
            workers.kill(first)  # mid-batch: its claims are leased, some posted and not recorded
            workers.start("--concurrency", "1")
            wait_until(lambda: len(receiver.raw) >= 60, 60, workers, "deliveries by the second worker")
            embedded.stop(home)  # PostgreSQL restarts under the deliveries
            embedded.ensure_started(home)
            wait_until(lambda: len(receiver.messages()) == 150, 150, workers, "every event, once the lease ran out")
            catalog.engine.dispose()
            wait_until(lambda: catalog.webhooks.stats().pending == 0, 60, workers, "every delivery recorded")
        finally:
            workers.stop_all()
    delivered = [m["body"]["data"]["image_id"] for m in receiver.events("image.ready")]
    assert sorted(delivered) == sorted(ids)  # every event, each once after de-duplication
    assert len(receiver.raw) >= 150 and receiver.rejected == []
