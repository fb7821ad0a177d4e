"""``imgsearch.search_text`` from a SQL console (psql), answered by real Celery worker processes:
the cache, the timeout, a worker that died with a request, concurrent consoles, a model switch,
tenant logins and what they can't reach."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
import pytest
import redis
from sqlalchemy import make_url, text

from imgsearch import Catalog
from imgsearch.access import tenancy
from imgsearch.db import embedded
from imgsearch.settings import Settings
from imgsearch.work import reembed, text_requests
from tests.helpers import Workers, clean_environment, run_cli, wait_until

REDIS_URL = "redis://127.0.0.1:6379/0"
PSQL = Path(embedded._ep().__file__).parent / "pginstall" / "bin" / "psql"
CATEGORIES = ["shoes", "bags", "lamps"]


@dataclass
class Setup:
    catalog: Catalog
    workers: Workers
    env: dict[str, str]  # the workers' settings
    host: str
    database: str
    login: str  # a console login of tenant shop_a
    password: str  # its password (logins other than the owner authenticate by password)

    def psql(
        self, sql: str, *, user: str = "postgres", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """One psql session running ``sql``: unaligned rows, fields split by ``|``."""
        return subprocess.run(
            [
                str(PSQL),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-U",
                user,
                "-d",
                self.database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PGOPTIONS": "-c imgsearch.text_timeout=3", "PGPASSWORD": self.password},
        )

    def rows(self, sql: str, *, user: str = "postgres") -> list[list[str]]:
        done = self.psql(sql, user=user)
        assert done.returncode == 0, done.stderr
        return [line.split("|") for line in done.stdout.splitlines() if line]

    def console(self, user: str = "postgres") -> psycopg.Connection:
        password = self.password if user == self.login else None
        return psycopg.connect(
            host=self.host, user=user, password=password, dbname=self.database, autocommit=True
        )

    def status(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``imgsearch status ARGS`` on this catalog."""
        settings = {k: v for k, v in self.env.items() if k.startswith("IMGSEARCH_")}
        return run_cli("status", *args, **settings)

    def cached(self) -> int:
        with self.catalog.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM imgsearch.text_embeddings")).scalar_one())


@pytest.fixture
def setup(database_url: str, tiny_siglip: Path, tmp_path: Path) -> Iterator[Setup]:
    queue = f"imgsearch-test-{uuid.uuid4().hex[:8]}"
    env = clean_environment()
    env.update(
        IMGSEARCH_DATABASE_URL=database_url,
        IMGSEARCH_MODEL=str(tiny_siglip),
        IMGSEARCH_REDIS_URL=REDIS_URL,
        IMGSEARCH_QUEUE=queue,
        IMGSEARCH_DEVICE="cpu",
        HF_HUB_OFFLINE="1",
        TMPDIR=str(tmp_path),
    )
    url = make_url(database_url)
    settings = Settings(model=str(tiny_siglip), text_cache_size=0)  # every library query reads the table
    with Catalog.open(database_url, model=str(tiny_siglip), settings=settings) as catalog:
        rng = np.random.default_rng(0)
        catalog.add_many(
            {
                "embedding": rng.standard_normal(catalog.dim),
                "tenant": "shop_a" if i % 2 else "shop_b",
                "product_id": f"p{i}",
                "category": CATEGORIES[i % 3],
                "price": 5 + i,
            }
            for i in range(300)
        )
        login = f"console_{url.database}"
        password = tenancy.create_login(catalog.engine, login, "shop_a")
        workers = Workers(env, tmp_path)
        try:
            yield Setup(catalog, workers, env, str(url.query["host"]), str(url.database), login, password)
        finally:
            workers.stop_all()
            redis.Redis.from_url(REDIS_URL).delete(queue)
            with catalog.engine.begin() as conn:
                conn.execute(text(f'DROP OWNED BY "{login}"'))
                conn.execute(text(f'DROP ROLE "{login}"'))


def library(catalog: Catalog, query: str, k: int = 5, **filters: object) -> list[tuple[int, float]]:
    # search_text searches the words as typed, semantically
    hits = catalog.search(text=query, k=k, mode="semantic", parse=False, **filters)
    return [(hit.image_id, hit.distance) for hit in hits]


def as_hits(rows: list[list[str]]) -> list[tuple[int, float]]:
    return [(int(r[0]), float(r[2])) for r in rows]


def same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    return [i for i, _ in a] == [i for i, _ in b] and all(
        abs(x - y) < 1e-5 for (_, x), (_, y) in zip(a, b, strict=True)
    )


def test_a_worker_embeds_the_text_then_the_cache_answers_without_one(setup: Setup) -> None:
    setup.workers.start()
    ready = setup.status("--wait-worker", "120")  # until the worker has loaded its model
    assert ready.returncode == 0, ready.stderr + setup.workers.log_tail()
    sql = "SELECT image_id, product_id, distance, probability FROM imgsearch.search_text('red leather sneakers', 5, category => 'shoes', price_max => 200)"
    done = setup.psql(sql)  # answered within the console's 3 s
    assert done.returncode == 0, done.stderr + setup.workers.log_tail()
    rows = [line.split("|") for line in done.stdout.splitlines()]
    assert len(rows) == 5
    # the same answer as the library's, which reads the same cached vector; SigLIP's probability too
    hits = library(setup.catalog, "red leather sneakers", category="shoes", price_max=200)
    assert same(as_hits(rows), hits)
    probabilities = [
        hit.probability
        for hit in setup.catalog.search(text="red leather sneakers", k=5, category="shoes", price_max=200)
    ]
    assert all(
        p is not None and abs(float(r[3]) - p) < 1e-5 for r, p in zip(rows, probabilities, strict=True)
    )
    assert setup.cached() == 1
    assert "text requests: 1 answered" in setup.workers.log_tail()
    # no worker: the cached text still answers, at once; a new one names what to start
    setup.workers.stop_all()
    started = time.monotonic()
    assert same(as_hits(setup.rows(sql)), hits)
    assert time.monotonic() - started < 5
    started = time.monotonic()
    missing = setup.psql("SELECT * FROM imgsearch.search_text('a text no worker embedded', 5)")
    assert missing.returncode != 0
    assert (
        "no imgsearch worker answered within 3 s: start one with `imgsearch worker` (none listens; a "
        "worker just started listens once its model is loaded: `imgsearch status --wait-worker` waits "
        "for it)"
    ) in missing.stderr
    assert 3 <= time.monotonic() - started < 15
    # a worker that listens but doesn't answer in time (here a bare connection under a listener's
    # name): the error says so, and how to wait longer
    with psycopg.connect(
        host=setup.host, user="postgres", dbname=setup.database, application_name=text_requests.LISTENER_NAME
    ):
        busy = setup.psql("SELECT * FROM imgsearch.search_text('a text no worker embeds', 5)")
    assert busy.returncode != 0
    assert (
        "no imgsearch worker answered within 3 s (1 listening): busy or slow; SET "
        "imgsearch.text_timeout to wait longer, or start more with `imgsearch worker`"
    ) in busy.stderr


def test_status_counts_the_workers_that_answer_and_waits_for_one(setup: Setup) -> None:
    """A worker listens for search_text's requests only once its model is loaded: ``status
    --wait-worker`` returns then, and a console's first text is answered within its timeout; with
    no worker, the wait gives up with one line."""
    none = setup.status("--wait-worker", "0.5")
    assert none.returncode == 2 and none.stdout == ""
    assert none.stderr.strip().splitlines() == [
        "imgsearch: no worker answers search_text after 0.5 s: start one with `imgsearch worker` "
        "(a worker answers once its model is loaded)"
    ]
    assert "workers answering search_text: 0" in setup.status().stdout.splitlines()
    bad = setup.status("--wait-worker", "soon")
    assert bad.returncode == 2 and "must be a number of seconds" in bad.stderr
    setup.workers.start()
    setup.workers.start("--concurrency", "2")  # a prefork parent, whose two children each answer
    started = time.monotonic()
    ready = setup.status("--wait-worker", "120")
    assert ready.returncode == 0, ready.stderr + setup.workers.log_tail()
    assert "embedder" in setup.workers.log_tail()  # loaded before it listened
    rows = setup.rows("SELECT * FROM imgsearch.search_text('green canvas tote', 5)")  # 3 s at most
    assert same(as_hits(rows), library(setup.catalog, "green canvas tote"))
    wait_until(
        lambda: "workers answering search_text: 3" in setup.status().stdout.splitlines(),
        120 - (time.monotonic() - started),
        setup.workers,
        "three listeners",
    )
    setup.workers.stop_all()
    wait_until(
        lambda: "workers answering search_text: 0" in setup.status().stdout.splitlines(),
        30,
        setup.workers,
        "the killed workers' listeners to go",
    )


def test_the_library_and_the_console_share_the_text_cache(setup: Setup) -> None:
    hits = library(setup.catalog, "blue summer dress")  # embedded in process, stored for the console
    assert setup.cached() == 1
    # no worker runs: the console's answer comes from the library's row
    assert same(as_hits(setup.rows("SELECT * FROM imgsearch.search_text('blue summer dress', 5)")), hits)


def test_a_request_claimed_by_a_worker_that_died_is_answered_by_another(setup: Setup) -> None:
    model = setup.catalog.active_model.id
    with setup.console() as conn:
        # what a worker killed mid-request leaves: the request claimed, never answered
        conn.execute(
            "INSERT INTO imgsearch.text_requests (model_id, text_hash, text, claimed_at) "
            "VALUES (%s, imgsearch._text_hash('wooden lamp'), 'wooden lamp', clock_timestamp())",
            (model,),
        )
    setup.workers.start()
    wait_until(lambda: "embedder" in setup.workers.log_tail(), 90, setup.workers, "the worker's model")
    killed = setup.workers.start()
    setup.workers.kill(killed)  # and one more worker killed while the request waits
    rows = setup.rows("SELECT * FROM imgsearch.search_text('wooden lamp', 5)")
    assert same(as_hits(rows), library(setup.catalog, "wooden lamp"))
    with setup.console() as conn:
        assert conn.execute("SELECT count(*) FROM imgsearch.text_requests").fetchone() == (0,)


def test_a_text_asked_again_once_answered_leaves_no_request(setup: Setup) -> None:
    """search_text asks again after a second without an answer. An ask that comes once the answer
    is stored, or while the worker answering it commits, leaves no request behind (migration
    0031): no worker embeds the text a second time, and the table drains."""
    model = setup.catalog.active_model.id
    ask = "SELECT imgsearch._request_text(%s::smallint, %s)"
    count = "SELECT count(*) FROM imgsearch.text_requests"
    library(setup.catalog, "paper lamp")  # its answer, stored
    with setup.console() as conn:
        conn.execute(ask, (model, "paper lamp"))
        assert conn.execute(count).fetchone() == (0,)
        # a waiting text is still asked for, and asked again
        conn.execute(ask, (model, "desk lamp"))
        conn.execute(ask, (model, "desk lamp"))
        assert conn.execute(count).fetchone() == (1,)
        conn.execute("DELETE FROM imgsearch.text_requests")
        conn.execute(
            "INSERT INTO imgsearch.text_requests (model_id, text_hash, text, claimed_at) "
            "VALUES (%s, imgsearch._text_hash('reading lamp'), 'reading lamp', clock_timestamp())",
            (model,),
        )
    # a worker answering "reading lamp": the answer stored and the request deleted, not committed
    with setup.console() as worker, setup.console() as asker:
        worker.autocommit = False
        worker.execute(
            "INSERT INTO imgsearch.text_embeddings (model_id, text_hash, text, embedding) "
            "SELECT model_id, imgsearch._text_hash('reading lamp'), 'reading lamp', embedding "
            "FROM imgsearch.text_embeddings WHERE text = 'paper lamp'"
        )
        worker.execute("DELETE FROM imgsearch.text_requests WHERE text = 'reading lamp'")
        asked = threading.Thread(target=asker.execute, args=(ask, (model, "reading lamp")))
        asked.start()
        waits = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s"
        with setup.console() as watch:
            pid = asker.info.backend_pid
            wait_until(
                lambda: watch.execute(waits, (pid,)).fetchone() == ("Lock",), 10, setup.workers, "the ask to wait"
            )
        worker.commit()
        asked.join(10)
        assert not asked.is_alive()
        assert asker.execute(count).fetchone() == (0,)


def test_twenty_consoles_at_once_get_the_right_answers(setup: Setup) -> None:
    setup.workers.start()
    wait_until(lambda: "embedder" in setup.workers.log_tail(), 90, setup.workers, "the worker's model")
    texts = [f"product {i} in {CATEGORIES[i % 3]}" for i in range(20)]
    answers: dict[str, list[tuple[int, float]]] = {}
    errors: list[BaseException] = []

    def one(query: str) -> None:
        try:
            with setup.console() as conn:
                rows = conn.execute(
                    "SELECT image_id, product_id, distance FROM imgsearch.search_text(%s, 5, tenant => 'shop_b')",
                    (query,),
                ).fetchall()
            answers[query] = [(int(r[0]), float(r[2])) for r in rows]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(query,)) for query in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    for query in texts:
        assert same(answers[query], library(setup.catalog, query, tenant="shop_b")), query
    assert setup.cached() == 20


def test_a_model_switch_never_serves_the_old_models_cached_text(setup: Setup, tiny_siglip_16: Path) -> None:
    catalog = setup.catalog
    library(catalog, "green mug")  # cached under the first model
    old = catalog.active_model.id
    new = reembed.register(catalog.engine, str(tiny_siglip_16), 16)
    with catalog.engine.begin() as conn:  # give the new model embeddings of its own
        conn.execute(
            text(
                "INSERT INTO imgsearch.embeddings (model_id, image_id, product_pk, tenant, category, price, embedding) "
                "SELECT :new, image_id, product_pk, tenant, category, price, "
                "subvector(embedding::vector, 1, 16)::halfvec FROM imgsearch.embeddings WHERE model_id = :old"
            ),
            {"new": new.id, "old": old},
        )
    reembed.activate(catalog.engine, new.name)
    setup.workers.start()
    wait_until(lambda: "embedder" in setup.workers.log_tail(), 90, setup.workers, "the worker's model")
    rows = setup.rows("SELECT * FROM imgsearch.search_text('green mug', 5)")
    assert len(rows) == 5
    with catalog.engine.connect() as conn:
        per_model = dict(
            conn.execute(
                text("SELECT model_id, count(*) FROM imgsearch.text_embeddings GROUP BY model_id")
            ).all()
        )
    assert per_model == {old: 1, new.id: 1}  # asked again, for the new model
    with Catalog.open(
        str(catalog.engine.url.render_as_string(hide_password=False)),
        settings=Settings(model=str(tiny_siglip_16)),
    ) as switched:
        assert same(as_hits(rows), library(switched, "green mug"))


def test_a_tenant_login_searches_its_own_rows_and_reaches_nothing_else(setup: Setup) -> None:
    library(setup.catalog, "black leather bag")  # cached: no worker needed below
    rows = setup.rows(
        "SELECT image_id, product_id FROM imgsearch.search_text('black leather bag', 50)", user=setup.login
    )
    assert len(rows) == 50
    with setup.catalog.engine.connect() as conn:
        tenants = set(
            conn.execute(
                text("SELECT DISTINCT tenant FROM imgsearch.images WHERE id = ANY(:ids)"),
                {"ids": [int(r[0]) for r in rows]},
            ).scalars()
        )
    assert tenants == {"shop_a"}
    with setup.console(setup.login) as conn:
        for forbidden in (
            "SELECT * FROM imgsearch.text_embeddings",
            "SELECT * FROM imgsearch.text_requests",
            "SELECT imgsearch._request_text(1::smallint, 'x')",
            "SELECT imgsearch._text_answer(1::smallint, 'x')",
            "SELECT imgsearch.dblink_connect('x', 'imgsearch_loopback')",
            "SELECT imgsearch.dblink_connect('x', 'host=example.com dbname=x')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)
        # the loopback login's password is in the user mapping, which the console can't read
        options = conn.execute(
            "SELECT umoptions FROM pg_user_mappings WHERE srvname = 'imgsearch_loopback'"
        ).fetchall()
        assert all(row[0] is None for row in options)


def test_bad_texts_get_the_librarys_errors_and_injections_are_just_text(setup: Setup) -> None:
    for query, message in (
        ("''", "a text query must be a non-empty string"),
        ("'   '", "a text query must be a non-empty string"),
        ("NULL", "a text query must be a non-empty string"),
        ("repeat('a', 2001)", "text query is 2001 characters; the limit is 2000"),
    ):
        done = setup.psql(f"SELECT * FROM imgsearch.search_text({query}, 5)")
        assert done.returncode != 0 and message in done.stderr, (query, done.stderr)
    done = setup.psql("SELECT * FROM imgsearch.search_text('shoes', 0)")
    assert "k must be from 1 to 1000, got 0" in done.stderr
    injection = "x'); DROP TABLE imgsearch.images; --"
    hits = library(setup.catalog, injection)
    with setup.console() as conn:
        rows = conn.execute(
            "SELECT image_id, product_id, distance FROM imgsearch.search_text(%s, 5)", (injection,)
        ).fetchall()
        assert same([(int(r[0]), float(r[2])) for r in rows], hits)
        assert conn.execute("SELECT count(*) FROM imgsearch.images").fetchone() == (300,)
    # asked of a worker too, over the loopback: still just text
    setup.workers.start()
    fresh = "y''); DROP TABLE imgsearch.images; -- \\ \" $$ ;"
    with setup.console() as conn:
        deadline = time.monotonic() + 90
        while True:
            try:
                conn.execute("SET imgsearch.text_timeout = 5")
                rows = conn.execute("SELECT image_id FROM imgsearch.search_text(%s, 5)", (fresh,)).fetchall()
                break
            except psycopg.errors.QueryCanceled:
                assert time.monotonic() < deadline, setup.workers.log_tail()
        assert len(rows) == 5
        assert conn.execute("SELECT count(*) FROM imgsearch.images").fetchone() == (300,)
        assert conn.execute(
            "SELECT text FROM imgsearch.text_embeddings WHERE text = %s", (fresh,)
        ).fetchone() == (fresh,)
