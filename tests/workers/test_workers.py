"""Real Celery worker processes on real Redis and PostgreSQL: every upload gets its embedding,
nothing is lost when a worker dies or the broker is flushed, bad images fail alone."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.errors import UnsupportedImage
from imgsearch.ingest import images
from imgsearch.ingest.downloads import Downloads
from imgsearch.settings import Settings
from tests.helpers import FileServer, Workers, clean_environment, wait_until, worker_env

REDIS_URL = "redis://127.0.0.1:6379/0"
# the flushed-broker test empties a Redis database of its own, so tests running beside it (pytest -n)
# keep their wake-ups
FLUSHED_REDIS_URL = "redis://127.0.0.1:6379/13"


def jpeg(seed: int, size: int = 64, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 255 / size, y * 255 / size, np.full_like(x, seed % 255)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture
def redis_url() -> str:
    """The workers' broker; the flushed-broker test gives its own."""
    return REDIS_URL


@pytest.fixture
def setup(
    database_url: str, tiny_siglip: Path, tmp_path: Path, redis_url: str
) -> Iterator[tuple[Catalog, Workers, str]]:
    queue = f"imgsearch-test-{uuid.uuid4().hex[:8]}"
    env = worker_env(database_url, tiny_siglip, redis_url, queue, tmp_path, IMGSEARCH_BATCH_SIZE="16")
    settings = Settings(redis_url=redis_url, queue=queue, wake_workers=True, batch_size=16)
    workers = Workers(env, tmp_path)
    with Catalog.open(database_url, model=str(tiny_siglip), settings=settings) as catalog:
        try:
            yield catalog, workers, queue
        finally:
            workers.stop_all()
            redis.Redis.from_url(redis_url).delete(queue)


def counts(catalog: Catalog) -> dict[str, int]:
    with catalog.engine.connect() as conn:
        rows = conn.execute(text("SELECT state, count(*) FROM imgsearch.images GROUP BY state")).all()
    return {state: n for state, n in rows}


def embeddings_per_image(catalog: Catalog) -> list[int]:
    with catalog.engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT count(e.image_id) FROM imgsearch.images i "
                    "LEFT JOIN imgsearch.embeddings e ON e.image_id = i.id GROUP BY i.id"
                )
            ).scalars()
        )


def test_200_uploads_all_become_ready(setup: tuple[Catalog, Workers, str]) -> None:
    catalog, workers, _ = setup
    ids = catalog.add_many(
        {"image": jpeg(i), "tenant": "acme" if i % 2 else "globex", "product_id": f"p{i}"} for i in range(200)
    )
    assert counts(catalog) == {"pending": 200}, "uploads are committed as pending before any worker runs"
    workers.start("--concurrency", "2")
    wait_until(lambda: counts(catalog).get("ready") == 200, 240, workers, "200 ready images")
    assert embeddings_per_image(catalog) == [1] * 200
    with catalog.engine.connect() as conn:
        assert conn.execute(text("SELECT max(attempts) FROM imgsearch.images")).scalar() == 1
        tenants = conn.execute(
            text(
                "SELECT count(*) FROM imgsearch.embeddings e JOIN imgsearch.images i ON i.id = e.image_id "
                "WHERE e.tenant <> i.tenant"
            )
        ).scalar()
    assert tenants == 0
    hits = catalog.search(similar_to=ids[0], k=3)
    assert len(hits) == 3


def test_workers_on_separate_hosts_need_only_the_two_urls(
    setup: tuple[Catalog, Workers, str], tmp_path: Path
) -> None:
    """Three "hosts": worker processes in process groups of their own, each with an
    IMGSEARCH_HOME of its own (no embedded server, no shared files), given only the database and
    the broker's URLs."""
    catalog, workers, _ = setup
    catalog.add_many({"image": jpeg(500 + i), "tenant": "acme", "product_id": f"h{i}"} for i in range(90))
    for host in range(3):
        home = tmp_path / f"host{host}"
        home.mkdir()
        workers.start("--batch-size", "8", IMGSEARCH_HOME=str(home))
    wait_until(lambda: counts(catalog).get("ready") == 90, 240, workers, "90 ready images")
    assert embeddings_per_image(catalog) == [1] * 90
    with catalog.engine.connect() as conn:
        assert (
            conn.execute(text("SELECT max(attempts) FROM imgsearch.images")).scalar() == 1
        )  # none claimed twice
    assert all(not any((tmp_path / f"host{host}").iterdir()) for host in range(3)), (
        "a worker wrote to its home"
    )
    assert len({proc.pid for proc in workers.procs}) == 3
    assert len({os.getpgid(proc.pid) for proc in workers.procs}) == 3


def test_killed_worker_loses_nothing_and_embeds_each_image_once(setup: tuple[Catalog, Workers, str]) -> None:
    catalog, workers, _ = setup
    catalog.add_many(
        {"image": jpeg(i, size=1400, quality=80), "tenant": "acme", "product_id": f"p{i}"} for i in range(64)
    )
    first = workers.start(IMGSEARCH_LEASE_SECONDS="4")
    wait_until(lambda: counts(catalog).get("embedding", 0) > 0, 120, workers, "a batch in progress")
    workers.kill(first)  # SIGKILL mid-batch: its claims stay leased, its message unacknowledged
    with catalog.engine.connect() as conn:
        stranded = (
            conn.execute(text("SELECT id FROM imgsearch.images WHERE state = 'embedding'")).scalars().all()
        )
    assert stranded
    workers.start(IMGSEARCH_LEASE_SECONDS="4")
    wait_until(lambda: counts(catalog).get("ready") == 64, 240, workers, "64 ready images after the kill")
    assert embeddings_per_image(catalog) == [1] * 64
    with catalog.engine.connect() as conn:
        attempts = dict(conn.execute(text("SELECT id, attempts FROM imgsearch.images")).all())
    assert all(attempts[i] >= 2 for i in stranded), "stranded rows were claimed again after their lease"


@pytest.mark.parametrize("redis_url", [FLUSHED_REDIS_URL])
def test_flushed_broker_loses_nothing(setup: tuple[Catalog, Workers, str], redis_url: str) -> None:
    catalog, workers, queue = setup
    catalog.add_many({"image": jpeg(i), "tenant": "acme", "product_id": f"p{i}"} for i in range(40))
    broker = redis.Redis.from_url(redis_url)
    assert broker.llen(queue) > 0, "uploads woke the workers through Redis"
    broker.flushdb()  # everything the broker held: its queue, unacknowledged messages, bindings
    assert broker.llen(queue) == 0
    workers.start()
    wait_until(lambda: counts(catalog).get("ready") == 40, 180, workers, "40 ready images after FLUSHDB")
    assert embeddings_per_image(catalog) == [1] * 40


def test_bad_images_fail_alone_with_clear_errors(
    setup: tuple[Catalog, Workers, str], image_server: FileServer
) -> None:
    """Images only the worker can judge (truncated data, a downloaded banner) fail alone, with the
    reason; a banner uploaded as bytes is refused at upload and never queued."""
    catalog, workers, _ = setup
    good = [catalog.add(image=jpeg(i), tenant="acme", product_id=f"good{i}") for i in range(12)]
    truncated = jpeg(99, size=300, quality=95)
    banner = io.BytesIO()
    Image.new("RGB", (3000, 20), "red").save(banner, "PNG")
    with pytest.raises(UnsupportedImage, match="aspect ratio of 150:1"):
        catalog.add(image=banner.getvalue(), tenant="acme", product_id="bad-banner")
    (image_server.root / "banner.png").write_bytes(banner.getvalue())
    bad = [
        catalog.add(image=truncated[: len(truncated) // 2], tenant="acme", product_id="bad-truncated"),
        catalog.add(image=truncated[: len(truncated) // 3], tenant="acme", product_id="bad-truncated-2"),
        catalog.add(image=f"{image_server.url}/banner.png", tenant="acme", product_id="bad-banner"),
    ]
    workers.start(IMGSEARCH_DOWNLOAD_ALLOW="127.0.0.1")
    wait_until(
        lambda: set(counts(catalog)) <= {"ready", "failed"} and sum(counts(catalog).values()) == 15,
        180,
        workers,
        "every image settled",
    )
    assert {i: catalog.get(i).state for i in good} == {i: "ready" for i in good}
    records = [catalog.get(i) for i in bad]
    assert [r.state for r in records] == ["failed"] * 3
    assert "cannot decode JPEG" in (records[0].error or "") and "cannot decode JPEG" in (
        records[1].error or ""
    )
    assert "aspect ratio of 150:1" in (records[2].error or "")

    env = {**workers.env}
    status = subprocess.run(
        [sys.executable, "-m", "imgsearch", "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stderr
    assert "images: pending 0, embedding 0, ready 12, failed 3" in status.stdout
    assert f"image {bad[2]} (acme): image is 3000x20" in status.stdout
    retry = subprocess.run(
        [sys.executable, "-m", "imgsearch", "retry-failed"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert retry.returncode == 0 and retry.stdout.strip() == "re-queued 3 failed images"
    wait_until(lambda: counts(catalog).get("failed") == 3, 120, workers, "bad images failing again")


def test_workers_download_from_the_networks_their_settings_allow(
    setup: tuple[Catalog, Workers, str], image_server: FileServer
) -> None:
    """``IMGSEARCH_DOWNLOAD_ALLOW`` reaches the worker processes: an image on an allowed host is
    downloaded and embedded; one redirected to a host outside it fails with the reason."""
    catalog, workers, _ = setup
    (image_server.root / "shoe.jpg").write_bytes(jpeg(7))
    allowed = catalog.add(image=f"{image_server.url}/shoe.jpg", tenant="acme", product_id="shoe")
    elsewhere = f"http://127.0.0.2:{image_server.url.rsplit(':', 1)[1]}/shoe.jpg"
    redirected = catalog.add(
        image=f"{image_server.url}/redirect?to={elsewhere}", tenant="acme", product_id="moved"
    )
    workers.start(IMGSEARCH_DOWNLOAD_ALLOW="127.0.0.1")
    wait_until(lambda: counts(catalog) == {"ready": 1, "failed": 1}, 120, workers, "both images settled")
    assert catalog.get(allowed).state == "ready"
    # the worker hashed the downloaded bytes (a URL upload has none to hash at upload)
    assert catalog.get(allowed).phash == images.perceptual_hash(jpeg(7), images.Limits())
    assert catalog.get(redirected).phash is None
    assert "127.0.0.2 is not a public address" in (catalog.get(redirected).error or "")
    assert sorted(image_server.paths) == ["/redirect?to=" + elsewhere, "/shoe.jpg"]


def test_drain_embeds_in_process_without_a_broker(database_url: str, tiny_siglip: Path) -> None:
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        catalog.add_many({"image": jpeg(i), "tenant": "acme", "product_id": f"p{i}"} for i in range(20))
        broken = jpeg(5, size=300, quality=95)
        catalog.add(image=broken[: len(broken) // 2], tenant="acme", product_id="broken")
        env = clean_environment()
        env.update(IMGSEARCH_DATABASE_URL=database_url, IMGSEARCH_REDIS_URL="redis://127.0.0.1:1/0")
        run = subprocess.run(
            [sys.executable, "-m", "imgsearch", "worker", "--drain", "--batch-size", "8"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines()[0] == "embedded 20, failed 1"
        assert counts(catalog) == {"ready": 20, "failed": 1}


def test_unreachable_broker_never_fails_an_upload(database_url: str, tiny_siglip: Path) -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", wake_workers=True)
    with Catalog.open(database_url, model=str(tiny_siglip), settings=settings) as catalog:
        start = time.monotonic()
        image_id = catalog.add(image=jpeg(1), tenant="acme", product_id="p1")
        assert time.monotonic() - start < 15
        assert catalog.get(image_id).state == "pending"


def test_a_running_worker_follows_a_model_switch(
    setup: tuple[Catalog, Workers, str], tiny_siglip_16: Path
) -> None:
    from imgsearch.embed.model import Embedder
    from imgsearch.work import reembed

    catalog, workers, _ = setup
    catalog.add_many({"image": jpeg(i), "tenant": "acme", "product_id": f"p{i}"} for i in range(10))
    workers.start()
    wait_until(lambda: counts(catalog).get("ready") == 10, 120, workers, "10 ready images")
    old = catalog.active_model.id
    new = reembed.register(catalog.engine, str(tiny_siglip_16), 16)
    backfilled = reembed.backfill(
        catalog.engine,
        new,
        Embedder(str(tiny_siglip_16)).embed_images,
        batch_size=4,
        downloads=Downloads(max_bytes=1 << 20),
    )
    assert backfilled.embedded == 10 and not backfilled.errors
    reembed.activate(catalog.engine, new.name)
    catalog.add_many({"image": jpeg(100 + i), "tenant": "acme", "product_id": f"q{i}"} for i in range(10))
    wait_until(lambda: counts(catalog).get("ready") == 20, 120, workers, "20 ready images after the switch")
    with catalog.engine.connect() as conn:
        per_model = dict(
            conn.execute(text("SELECT model_id, count(*) FROM imgsearch.embeddings GROUP BY model_id")).all()
        )
    assert per_model == {new.id: 20, old: 10}  # uploads after the switch: new model only
    assert "active model switched" in workers.log_tail()


def test_dropped_content_keeps_thumbnails_and_blocks_nothing(
    setup: tuple[Catalog, Workers, str], tiny_siglip_16: Path
) -> None:
    """``IMGSEARCH_KEEP_CONTENT=false``: each embedded upload's bytes give way to a 256 px JPEG
    thumbnail; a bad image still fails alone and keeps its bytes; searches and previews work; a
    re-embed with another model names the images that need their source again."""
    from imgsearch.work import reembed

    catalog, workers, _ = setup
    photos = [jpeg(i, size=400) for i in range(12)]
    ids = catalog.add_many(
        {"image": data, "tenant": "acme", "product_id": f"p{i}"} for i, data in enumerate(photos)
    )
    broken = jpeg(99, size=300)
    bad = catalog.add(image=broken[: len(broken) // 2], tenant="acme", product_id="broken")
    workers.start(IMGSEARCH_KEEP_CONTENT="false")
    wait_until(lambda: counts(catalog) == {"ready": 12, "failed": 1}, 120, workers, "uploads settled")
    with catalog.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, content IS NULL, thumbnail FROM imgsearch.images ORDER BY id")
        ).all()
    kept = {row[0]: (row[1], row[2]) for row in rows}
    for image_id, original in zip(ids, photos, strict=True):
        dropped, thumb = kept[image_id]
        assert dropped and thumb is not None
        with Image.open(io.BytesIO(thumb)) as shown:
            assert shown.format == "JPEG" and max(shown.size) == 256
        assert len(thumb) < len(original) / 2
        assert catalog.image_content(image_id) is None
        assert catalog.image_preview(image_id) == bytes(thumb)
    assert kept[bad] == (False, None)  # the failed image keeps its bytes, for a look at them
    assert catalog.image_content(bad) == broken[: len(broken) // 2]
    # searches are untouched: an image's own embedding finds it first
    with catalog.engine.connect() as conn:
        vector = conn.execute(
            text("SELECT embedding::text FROM imgsearch.embeddings WHERE image_id = :i"), {"i": ids[3]}
        ).scalar_one()
    hits = catalog.search(vector=[float(x) for x in vector.strip("[]").split(",")], k=1)
    assert hits[0].image_id == ids[3]
    # another model can't embed them without their source, and says which and why
    other = reembed.register(catalog.engine, str(tiny_siglip_16), 16)
    from imgsearch.embed.model import Embedder

    embedder = Embedder.from_settings(Settings(device="cpu"), name=str(tiny_siglip_16))
    embedder.load()
    result = reembed.backfill(
        catalog.engine, other, embedder.embed_images, batch_size=8, downloads=Downloads()
    )
    assert result.embedded == 0
    assert sorted(result.errors) == sorted(ids)
    assert all(
        "bytes were dropped after embedding" in e and "upload its image again" in e
        for e in result.errors.values()
    )


def test_workers_embed_each_image_with_the_image_model_too(
    setup: tuple[Catalog, Workers, str], tiny_dinov2: Path
) -> None:
    from imgsearch.embed.model import Embedder
    from imgsearch.work import reembed

    catalog, workers, _ = setup
    catalog.add_many({"image": jpeg(900 + i), "tenant": "acme", "product_id": f"d{i}"} for i in range(4))
    workers.start("--concurrency", "1")
    wait_until(lambda: counts(catalog).get("ready") == 4, 120, workers, "4 ready images")
    dino = str(tiny_dinov2)
    images = reembed.register(catalog.engine, dino, 32)
    reembed.backfill(catalog.engine, images, Embedder(dino).embed_images, batch_size=8, downloads=Settings().downloads())
    reembed.activate(catalog.engine, dino, serves="image")
    ids = catalog.add_many({"image": jpeg(950 + i), "tenant": "acme", "product_id": f"e{i}"} for i in range(20))
    wait_until(lambda: counts(catalog).get("ready") == 24, 120, workers, "24 ready images")
    assert embeddings_per_image(catalog) == [2] * 24  # the worker followed: both models, every image
    with catalog.engine.connect() as conn:
        dims = conn.execute(text("SELECT m.name, vector_dims(e.embedding) FROM imgsearch.embeddings e "
                                 "JOIN imgsearch.models m ON m.id = e.model_id WHERE e.image_id = :i"),
                            {"i": ids[0]}).all()  # fmt: skip
    assert sorted(dims) == sorted([(catalog.active_model.name, 32), (dino, 32)])
