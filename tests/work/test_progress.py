"""A catalog's progress (imgsearch.work.progress): its counts, oldest waiting image and latest
failures, read without reading every image (migration 0054)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from imgsearch.work import progress
from tests.db.test_image_counts import counted


@pytest.fixture
def many_images(database_url: str) -> Iterator[Engine]:
    """20,000 images of two shops, 8 failed and 3 waiting, their statistics never gathered."""
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO imgsearch.products (tenant, product_id) "
                "SELECT CASE WHEN i % 2 = 0 THEN 'acme' ELSE 'globex' END, 'p' || i FROM generate_series(1, 20000) i"
            )
        )
        conn.execute(
            text(
                "INSERT INTO imgsearch.images (product_pk, tenant, state, error) "
                "SELECT id, tenant, CASE WHEN id % 5000 IN (1, 2) THEN 'failed' WHEN id % 7919 = 3 THEN 'pending' "
                "ELSE 'ready' END, CASE WHEN id % 5000 IN (1, 2) THEN 'bad bytes ' || id END FROM imgsearch.products"
            )
        )
    yield engine
    engine.dispose()


@pytest.mark.parametrize("tenant", ["acme", "globex", None])
def test_a_status_reads_the_failed_and_waiting_images_alone(many_images: Engine, tenant: str | None) -> None:
    """Every image once was read for each status (a scan, 20,000 rows here); now the failed and
    waiting ones are (counted by pg_stat_xact_user_tables in the status's transaction)."""
    reads = text(
        "SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables "
        "WHERE relid = 'imgsearch.images'::regclass"
    )
    with many_images.begin() as conn:
        before = conn.execute(reads).scalar_one()
        current = progress.read_status(conn, 20, tenant)
        read = conn.execute(reads).scalar_one() - before
    failed = counted(many_images, tenant)["failed"]
    waiting = counted(many_images, tenant)["pending"]
    assert 0 < read <= failed + waiting
    assert current.counts == counted(many_images, tenant)
    ids = [image_id for image_id, _, _ in current.latest_errors]
    assert ids == sorted(ids, reverse=True)  # the latest first (one statement: by id)
    assert all(error.startswith("bad bytes ") for _, _, error in current.latest_errors)
    assert all(current.products[i].startswith("p") for i in ids)
    assert len(current.latest_errors) == failed == (8 if tenant is None else 4)
    assert current.oldest_pending_seconds is not None
