"""imgsearch on a managed-style PostgreSQL (tests/managed.py), as its application role, never a
superuser: `imgsearch db check` naming what an administrator must grant, `imgsearch migrate` from
empty, uploads embedded by a real worker, filtered and hybrid searches, a tenant's console login,
and text search from psql once `imgsearch db console-setup` made its loopback connection."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.access import tenancy
from imgsearch.db import definitions, migrate
from imgsearch.db.engine import make_engine
from imgsearch.settings import Settings
from tests.helpers import BIN, Workers, clean_environment, run_cli, wait_until
from tests.managed import ManagedServer

REDIS_URL = "redis://127.0.0.1:6379/0"
PASSWORD = "app-secret"
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (40, 180, 60)}


@pytest.fixture(scope="module")
def server() -> Iterator[ManagedServer]:
    root = Path(tempfile.mkdtemp(prefix="imgsearch-test-managed-", dir="/tmp"))
    root.chmod(0o755)  # the server runs as the embedded server's user, below it
    managed = ManagedServer.start(root / "server")
    try:
        yield managed
    finally:
        managed.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Shop:
    server: ManagedServer
    url: str
    env: dict[str, str]  # a worker's settings

    def psql(self, sql: str, user: str = "app", password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
        port = str(self.server.node.port)
        return subprocess.run(
            [str(BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", port,
             "-U", user, "-d", "app", "-c", "SET imgsearch.text_timeout = 20", "-c", sql],
            capture_output=True, text=True, timeout=120, env={**os.environ, "PGPASSWORD": password},
        )  # fmt: skip


@pytest.fixture(scope="module")
def shop(server: ManagedServer, tiny_siglip: Path, tmp_path_factory: pytest.TempPathFactory) -> Shop:
    url = server.create_app("app", PASSWORD)
    env = {
        "IMGSEARCH_DATABASE_URL": url, "IMGSEARCH_MODEL": str(tiny_siglip), "IMGSEARCH_REDIS_URL": REDIS_URL,
        "IMGSEARCH_QUEUE": f"imgsearch-test-{uuid.uuid4().hex[:8]}", "IMGSEARCH_DEVICE": "cpu",
        "IMGSEARCH_SWEEP_SECONDS": "1", "TMPDIR": str(tmp_path_factory.mktemp("managed-worker")),
    }  # fmt: skip
    return Shop(server, url, env)


def picture(colour: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 12, (48, 48, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_check_names_what_an_administrator_grants(server: ManagedServer) -> None:
    url = server.create_app("bare", "bare-secret", createrole=False, extensions=("pg_trgm",))
    done = run_cli("db", "check", IMGSEARCH_DATABASE_URL=url)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ok       PostgreSQL: 18.")
    assert any(
        line.startswith("missing  extension vector: 0.8.6 available, not created; "
                        "an administrator runs CREATE EXTENSION vector in database bare")
        for line in lines
    ), lines  # fmt: skip
    assert "missing  CREATEROLE (imgsearch's roles for apps, workers and console logins): no; " \
        "an administrator runs ALTER ROLE bare CREATEROLE" in lines  # fmt: skip
    assert any(line.startswith("optional extension dblink:") and "CREATE EXTENSION dblink" in line for line in lines)
    assert lines[-1] == "not ready: an administrator runs the statements above"
    # migrating anyway stops at the first refusal, in one line
    refused = run_cli("migrate", IMGSEARCH_DATABASE_URL=url)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_migrate_from_empty_as_the_owner_not_a_superuser(shop: Shop) -> None:
    before = run_cli("db", "check", IMGSEARCH_DATABASE_URL=shop.url)
    assert before.returncode == 0, before.stdout + before.stderr
    assert "optional USAGE on dblink_fdw (text search from psql): not granted; an administrator runs " \
        "GRANT USAGE ON FOREIGN DATA WRAPPER dblink_fdw TO app" in before.stdout  # fmt: skip
    done = run_cli("migrate", IMGSEARCH_DATABASE_URL=shop.url)
    assert done.returncode == 0, done.stderr
    engine = make_engine(shop.url)
    try:
        assert migrate.current(engine) == migrate.head()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar() is False
            # the same console functions, triggers, views and policies as a superuser's catalog
            assert definitions.render(conn) == definitions.files()
    finally:
        engine.dispose()


def test_uploads_a_worker_and_searches(shop: Shop, tiny_siglip: Path) -> None:
    settings = Settings(model=str(tiny_siglip), redis_url=REDIS_URL, queue=shop.env["IMGSEARCH_QUEUE"])
    workers = Workers(clean_environment(**shop.env), Path(shop.env["TMPDIR"]))
    try:
        with Catalog.open(shop.url, model=str(tiny_siglip), settings=settings) as catalog:
            rows = [
                {"image": picture(colour, i), "tenant": tenant, "product_id": f"{tenant}-{colour}-{i}",
                 "category": "shoes" if i % 2 else "bags", "price": 10 + i, "title": f"{colour} leather item {i}"}
                for tenant in ("acme", "globex") for colour in COLOURS for i in range(4)
            ]  # fmt: skip
            catalog.add_many(rows)
            workers.start()

            def embedded() -> bool:
                with catalog.engine.connect() as conn:
                    return conn.execute(text("SELECT count(*) FROM imgsearch.embeddings")).scalar() == len(rows)

            wait_until(embedded, 180, workers, "every upload embedded by the worker")
            first = catalog.search(similar_to=catalog.search(vector=np.ones(catalog.dim), k=1)[0].image_id, k=1)
            assert len(first) == 1
            filtered = catalog.search(vector=np.ones(catalog.dim), tenant="acme", category="shoes", price_max=12, k=10)
            assert {hit.product_id for hit in filtered} == {f"acme-{c}-1" for c in COLOURS}
            hybrid = catalog.search(text="red leather", tenant="globex", k=4, mode="hybrid", total=True)
            assert hybrid.mode == "hybrid" and len(hybrid) == 4
            assert all(hit.product_id.startswith("globex-") for hit in hybrid) and hybrid.total == 12
            # a tenant's console login sees its tenant's rows only
            password = tenancy.create_login(catalog.engine, "acme_console", "acme")
            seen = shop.psql("SELECT count(*), min(tenant), max(tenant) FROM imgsearch.products", "acme_console", password)
            assert seen.returncode == 0, seen.stderr
            assert seen.stdout.strip() == "12|acme|acme"

            # text search from psql: first one line naming the grant, then the loopback once made
            asked = "SELECT count(*) FROM imgsearch.search_text('red leather item', 3)"
            missing = shop.psql(asked)
            assert missing.returncode != 0
            error = [line for line in missing.stderr.splitlines() if line.startswith("ERROR:")]
            assert error == [
                "ERROR:  text search from SQL needs its loopback connection, which this database lacks: an "
                "administrator runs GRANT USAGE ON FOREIGN DATA WRAPPER dblink_fdw TO app, then run "
                '`imgsearch db console-setup` (docs/operations.md, "Managed PostgreSQL")'
            ], missing.stderr
            refused = run_cli("db", "console-setup", IMGSEARCH_DATABASE_URL=shop.url)
            assert refused.returncode != 0 and "GRANT USAGE ON FOREIGN DATA WRAPPER dblink_fdw TO app" in refused.stderr
            with shop.server.admin("app") as admin:
                admin.execute("GRANT USAGE ON FOREIGN DATA WRAPPER dblink_fdw TO app")
            # a loopback to a port nothing listens on: one line saying what to run
            closed = run_cli("db", "console-setup", "--port", "9", IMGSEARCH_DATABASE_URL=shop.url)
            assert closed.returncode == 0, closed.stderr
            broken = shop.psql(asked)
            error = [line for line in broken.stderr.splitlines() if line.startswith("ERROR:")]
            assert len(error) == 1 and "could not open its loopback connection" in error[0], broken.stderr
            assert "imgsearch db console-setup" in error[0]
            made = run_cli("db", "console-setup", IMGSEARCH_DATABASE_URL=shop.url)
            assert made.returncode == 0, made.stderr
            assert made.stdout.startswith(f"text search from psql: loopback to 127.0.0.1:{shop.server.node.port} as ")
            answered = shop.psql(asked)
            assert answered.returncode == 0, answered.stderr + workers.log_tail()
            assert answered.stdout.strip() == "3"
            # and for the tenant's login, its own rows
            own = shop.psql(
                "SELECT DISTINCT split_part(product_id, '-', 1) FROM imgsearch.search_text('red leather item', 5)",
                "acme_console", password,
            )  # fmt: skip
            assert own.returncode == 0, own.stderr
            assert own.stdout.split() == ["acme"]
            checked = run_cli("db", "check", IMGSEARCH_DATABASE_URL=shop.url)
            assert "ok       the loopback connection of search_text: made" in checked.stdout
    finally:
        workers.stop_all()
        redis.Redis.from_url(REDIS_URL).delete(shop.env["IMGSEARCH_QUEUE"])
