"""Waiting until images are searchable: ``catalog.wait_ready`` wakes on PostgreSQL's NOTIFY when
the transaction that makes them ready or failed commits (never for one that rolls back), and
``imgsearch status --wait`` does the same."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imgsearch import Catalog
from imgsearch.errors import InvalidImage, InvalidInput, NotFound
from imgsearch.settings import Settings
from imgsearch.work import pipeline, queue, ready
from tests.helpers import image_bytes, run_cli


@pytest.fixture
def catalog(database_url: str, tiny_siglip: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    # no periodic read within these tests' waits: only a notification can end one early
    monkeypatch.setattr(ready, "RECHECK_SECONDS", 60.0)
    with Catalog.open(database_url, model=str(tiny_siglip)) as opened:
        yield opened


def _later(seconds: float, work: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        work()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _drain(catalog: Catalog) -> None:
    pipeline.drain(catalog.engine, lambda model: catalog.embedder, batch_size=8, lease_seconds=60,
                   downloads=Settings().downloads(), progress=False)  # fmt: skip


def _upload(catalog: Catalog, count: int, tenant: str = "acme") -> list[int]:
    return catalog.add_many({"image": image_bytes(300 + i), "tenant": tenant, "product_id": f"w{i}"} for i in range(count))


def test_a_wait_returns_when_the_workers_commit_not_at_its_timeout(catalog: Catalog) -> None:
    ids = _upload(catalog, 5)
    assert catalog.wait_ready(ids, tenant="acme", timeout=0) == dict.fromkeys(ids, "pending")
    worker = _later(1.0, lambda: _drain(catalog))
    started = time.monotonic()
    states = catalog.wait_ready(ids, tenant="acme", timeout=50)
    waited = time.monotonic() - started
    worker.join()
    assert states == dict.fromkeys(ids, "ready")
    assert 0.9 < waited < 20  # woken by the commit's notification (no periodic read within 60 s)


def test_a_failed_image_ends_the_wait_and_a_rolled_back_one_does_not(catalog: Catalog) -> None:
    ids = _upload(catalog, 1)
    model = catalog.registered_model()

    def fail(commit: bool) -> None:
        with catalog.engine.connect() as conn:
            trans = conn.begin()
            claims = queue.claim_batch(conn, 8)
            queue.store(conn, model, claims, [InvalidImage("not a picture")] * len(claims))
            trans.commit() if commit else trans.rollback()

    worker = _later(0.5, lambda: fail(False))  # rolled back: no notification, the wait runs out
    started = time.monotonic()
    assert catalog.wait_ready(ids, timeout=3) == {ids[0]: "pending"}
    assert time.monotonic() - started >= 2.9
    worker.join()
    worker = _later(0.5, lambda: fail(True))
    assert catalog.wait_ready(ids, timeout=50) == {ids[0]: "failed"}
    worker.join()


def test_what_a_wait_refuses(catalog: Catalog) -> None:
    ids = _upload(catalog, 1)
    _upload(catalog, 1, tenant="globex")
    with pytest.raises(NotFound, match=f"no image {ids[0]} of tenant 'globex'"):
        catalog.wait_ready(ids, tenant="globex", timeout=1)
    with pytest.raises(NotFound, match="no image 987654321"):
        catalog.wait_ready([987654321], timeout=1)
    for bad in (["1"], [True], [-3], [1.5]):
        with pytest.raises(InvalidInput, match="image ids must be whole numbers"):
            catalog.wait_ready(bad, timeout=1)  # type: ignore[arg-type]
    for timeout in (float("nan"), -1, 4000, "5", None):
        with pytest.raises(InvalidInput, match="timeout must be"):
            catalog.wait_ready(ids, timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="at most 1000 images"):
        catalog.wait_ready(list(range(1, 1002)), timeout=1)
    assert catalog.wait_ready([], timeout=1) == {}


def test_status_wait_returns_when_the_last_image_is_embedded(catalog: Catalog, database_url: str) -> None:
    _upload(catalog, 4)
    worker = _later(1.5, lambda: _drain(catalog))
    started = time.monotonic()
    shown = run_cli("status", "--wait", "60", IMGSEARCH_DATABASE_URL=database_url)
    waited = time.monotonic() - started
    worker.join()
    assert shown.returncode == 0, shown.stderr
    assert "pending 0" in shown.stdout and "ready 4" in shown.stdout
    assert waited < 30
