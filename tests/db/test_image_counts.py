"""Images per state kept by triggers (imgsearch.db.image_counts, migration 0054): the same counts
as counting the images, after any mix of uploads, claims, outcomes, retries and deletes, per shop
and across shops; folded when they pile up, also while shops write; and appended without writers
waiting on each other."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from imgsearch import Catalog, NotFound
from imgsearch.access import tenancy
from imgsearch.db import image_counts
from imgsearch.errors import InvalidImage
from imgsearch.work import progress, queue
from tests.helpers import image_bytes, unit

TENANTS = ("acme", "globex")
STATES = ("pending", "embedding", "ready", "failed")


def counted(engine: Engine, tenant: str | None) -> dict[str, int]:
    """Every state's images, counted from the images themselves."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT state, count(*) FROM imgsearch.images WHERE CAST(:t AS text) IS NULL OR tenant = :t GROUP BY 1"),
            {"t": tenant},
        )
        found = {state: 0 for state in STATES}
        found.update({state: int(n) for state, n in rows})
    return found


def count_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM imgsearch.image_counts")).scalar_one())


def assert_kept_as_counted(engine: Engine) -> None:
    for tenant in (*TENANTS, None):
        assert progress.status(engine, 0, tenant=tenant).counts == counted(engine, tenant), tenant


def claim(catalog: Catalog, n: int) -> list[queue.Claim]:
    with catalog.engine.begin() as conn:
        tenancy.run_as_worker(conn)
        return queue.claim_batch(conn, n, lease_seconds=60)


def finish(catalog: Catalog, claims: list[queue.Claim], rng: random.Random) -> None:
    """Each claim embedded or failed (a bad image fails at once), as a worker stores them."""
    results: list[Any] = [unit(768, c.image_id) if rng.random() < 0.6 else InvalidImage("not an image") for c in claims]
    with catalog.engine.begin() as conn:
        tenancy.run_as_worker(conn)
        queue.store(conn, catalog.active_model, claims, results)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kept_counts_answer_as_counting_the_images(
    database_url: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_counts, "COMPACT_AFTER", 8)  # folded now and then along the way
    rng = random.Random(seed)
    held: list[queue.Claim] = []
    with Catalog.open(database_url) as catalog:
        catalog.add(embedding=unit(768), tenant="acme", product_id="first")  # the model, registered
        for step in range(70):
            op = rng.random()
            tenant = rng.choice(TENANTS)
            if op < 0.25:  # an upload waiting for a worker, sometimes bytes the shop has already
                seed_ = step if rng.random() < 0.8 else 0
                catalog.add(image=image_bytes(seed_), tenant=tenant, product_id=f"p{step % 23}")
            elif op < 0.35:  # an embedding given: ready at once
                catalog.add(embedding=unit(768, step), tenant=tenant, product_id=f"p{step % 23}")
            elif op < 0.5:
                held += claim(catalog, rng.randint(1, 4))
            elif op < 0.65 and held:
                rng.shuffle(held)
                finish(catalog, held[:2], rng)
                held = held[2:]
            elif op < 0.72:
                queue.retry_failed(catalog.engine, rng.choice((tenant, None)))
            elif op < 0.8 and held:  # given back, as a worker that stops does
                with catalog.engine.begin() as conn:
                    tenancy.run_as_worker(conn)
                    queue.release(conn, held)
                held = []
            elif op < 0.9:
                ids = [i for i, t in _images(catalog.engine) if t == tenant]
                if ids:
                    catalog.delete(rng.choice(ids), tenant=tenant)
            else:
                with contextlib.suppress(NotFound):
                    catalog.delete_product(f"p{rng.randrange(23)}", tenant=tenant)
            if step % 10 == 9:
                assert_kept_as_counted(catalog.engine)
        assert_kept_as_counted(catalog.engine)
        assert sum(counted(catalog.engine, None).values()) > 10  # the mix left images to count


def _images(engine: Engine) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        return [(int(i), str(t)) for i, t in conn.execute(text("SELECT id, tenant FROM imgsearch.images ORDER BY id"))]


def test_counts_pile_up_then_fold_into_one_row_per_shop_and_state(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_counts, "COMPACT_AFTER", 5)
    with Catalog.open(database_url) as catalog:
        for i in range(30):  # one statement each: a count row each
            catalog.add(embedding=unit(768, i), tenant=TENANTS[i % 2], product_id=f"p{i}")
        catalog.add(image=image_bytes(1), tenant="acme", product_id="waiting")
        before = count_rows(catalog.engine)
        assert before >= 31
        # a shop's read folds its own rows only
        assert progress.status(catalog.engine, 0, tenant="acme").counts == counted(catalog.engine, "acme")
        with catalog.engine.connect() as conn:
            per_shop = dict(conn.execute(text("SELECT tenant, count(*) FROM imgsearch.image_counts GROUP BY 1")).all())
        assert per_shop == {"acme": 2, "globex": 15}
        # an admin's read folds every shop's
        assert progress.status(catalog.engine, 0).counts == counted(catalog.engine, None)
        assert progress.status(catalog.engine, 0).counts == counted(catalog.engine, None)
        assert count_rows(catalog.engine) == 3
        # a state that nets to nothing leaves no row
        with catalog.engine.begin() as conn:
            conn.execute(text("UPDATE imgsearch.images SET state = 'ready' WHERE state = 'pending'"))
        with catalog.engine.begin() as conn:
            assert conn.execute(text("SELECT imgsearch.compact_image_counts(NULL)")).scalar_one() == 2
        assert progress.status(catalog.engine, 0).counts == {"pending": 0, "embedding": 0, "ready": 31, "failed": 0}


def test_writers_append_counts_without_waiting_on_each_other(database_url: str) -> None:
    """Two uploads and a worker's outcome in three open transactions of one shop: none waits."""
    with Catalog.open(database_url) as catalog:
        first = catalog.add(image=image_bytes(1), tenant="acme", product_id="a")
        catalog.add(image=image_bytes(2), tenant="acme", product_id="b")
    url = make_url(database_url)
    params = {"host": url.query["host"], "user": "postgres", "dbname": url.database}
    with psycopg.connect(**params) as one, psycopg.connect(**params) as two, psycopg.connect(**params) as three:
        for conn in (one, two, three):
            conn.execute("SET lock_timeout = '2s'")
        one.execute("UPDATE imgsearch.images SET state = 'embedding' WHERE id = %s", (first,))
        two.execute(
            "INSERT INTO imgsearch.images (product_pk, tenant, state) "
            "SELECT product_pk, tenant, 'pending' FROM imgsearch.images WHERE id = %s",
            (first,),
        )
        three.execute("UPDATE imgsearch.images SET state = 'failed' WHERE id <> %s", (first,))
        for conn in (three, two, one):
            conn.commit()
    engine = create_engine(database_url)
    try:
        assert progress.status(engine, 0, tenant="acme").counts == {"pending": 1, "embedding": 1, "ready": 0, "failed": 1}
        assert progress.status(engine, 0, tenant="acme").counts == counted(engine, "acme")
    finally:
        engine.dispose()


def test_a_truncate_empties_the_counts(database_url: str) -> None:
    with Catalog.open(database_url) as catalog:
        catalog.add(embedding=unit(768), tenant="acme", product_id="a")
        catalog.add(image=image_bytes(1), tenant="globex", product_id="b")
        with catalog.engine.begin() as conn:
            conn.execute(text("TRUNCATE imgsearch.products CASCADE"))
        assert count_rows(catalog.engine) == 0
        assert progress.status(catalog.engine, 0).counts == {state: 0 for state in STATES}
        catalog.add(image=image_bytes(2), tenant="acme", product_id="c")
        assert progress.status(catalog.engine, 0).counts == counted(catalog.engine, None)


def test_a_shop_sees_its_own_counts_only(database_url: str) -> None:
    with Catalog.open(database_url) as catalog:
        catalog.add(embedding=unit(768), tenant="acme", product_id="a")
        catalog.add(image=image_bytes(1), tenant="globex", product_id="b")
        with catalog.engine.begin() as conn:
            tenancy.scope(conn, "acme")
            # row-level security: every row the shop's role sees is its own
            assert conn.execute(text("SELECT DISTINCT tenant FROM imgsearch.image_counts")).scalars().all() == ["acme"]
            assert image_counts.per_state(conn, None) == {"ready": 1}
        assert progress.status(catalog.engine, 0, tenant="globex").counts["pending"] == 1
        assert progress.status(catalog.engine, 0, tenant="globex").counts["ready"] == 0


def test_folding_while_shops_write_keeps_every_count(database_url: str) -> None:
    """Four writers move images between states while two others fold the counts again and again
    (each folding deletes the rows it sums; rows appended meanwhile stay): the sums end exact."""
    import threading

    with Catalog.open(database_url) as catalog:
        for i in range(40):
            catalog.add(image=image_bytes(i), tenant=TENANTS[i % 2], product_id=f"p{i}")
    engine = create_engine(database_url, pool_size=8)
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(60):
                with engine.begin() as conn:
                    conn.execute(
                        text("UPDATE imgsearch.images SET state = :s WHERE id IN (SELECT id FROM imgsearch.images "
                             "ORDER BY random() LIMIT 3 FOR UPDATE SKIP LOCKED)"),
                        {"s": rng.choice(STATES)},
                    )  # fmt: skip
        except BaseException as exc:
            errors.append(exc)

    def fold(tenant: str | None) -> None:
        try:
            while not stop.is_set():
                with engine.begin() as conn:
                    conn.execute(text("SELECT imgsearch.compact_image_counts(:t)"), {"t": tenant})
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(seed,)) for seed in range(4)]
    folders = [threading.Thread(target=fold, args=(tenant,)) for tenant in ("acme", None)]
    try:
        for thread in (*writers, *folders):
            thread.start()
        for thread in writers:
            thread.join()
        stop.set()
        for thread in folders:
            thread.join()
        assert not errors, errors
        assert_kept_as_counted(engine)
        assert sum(counted(engine, None).values()) == 40
    finally:
        stop.set()
        engine.dispose()
