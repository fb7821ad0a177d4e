"""The embedded PostgreSQL: started on demand, reused across processes, safe under concurrent starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url

from imgsearch.access import tenancy
from imgsearch.db import embedded, migrate
from imgsearch.db.engine import make_engine
from tests.helpers import clean_environment

OPEN_AND_PRINT = "from imgsearch import Catalog; c = Catalog.open(); print(c.dim, c.model); c.close()"


def _env(home: Path) -> dict[str, str]:
    env = clean_environment()
    env.update(IMGSEARCH_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def test_start_reuse_stop_start(home: Path) -> None:
    url = embedded.ensure_started(home)
    first = embedded.status(home)
    assert first.running and first.pid
    assert embedded.ensure_started(home) == url
    assert embedded.status(home).pid == first.pid
    host = make_url(url).query["host"]
    assert str(host).startswith(str(home.resolve())), "the server listens on a socket in its own home"
    with psycopg.connect(host=str(host), user="postgres", dbname="imgsearch") as conn:
        assert conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name='vector'"
        ).fetchone()
        assert conn.execute("SHOW listen_addresses").fetchone() == ("",)  # no TCP at all
    assert embedded.stop(home) is True
    assert not embedded.status(home).running
    assert embedded.stop(home) is False
    embedded.ensure_started(home)
    assert embedded.status(home).running


def test_fresh_install_prints_768_offline_and_later_processes_reuse_server(home: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", OPEN_AND_PRINT], env=_env(home), capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "768 google/siglip-base-patch16-224"
    pid = embedded.status(home).pid
    assert pid, "the server keeps running after the process that started it exits"
    again = subprocess.run(
        [sys.executable, "-c", OPEN_AND_PRINT], env=_env(home), capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert embedded.status(home).pid == pid


def test_two_processes_opening_a_new_catalog_at_once(home: Path) -> None:
    # each opens the new catalog and stores the first embedding: one server, one migration, one model
    first_embedding = OPEN_AND_PRINT.replace(
        "c.close()", "c.add(embedding=[1.0] * 768, tenant='t', product_id='p'); c.close()"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", first_embedding],
            env=_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [p.communicate(timeout=180) for p in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == "768 google/siglip-base-patch16-224"
    status = embedded.status(home)
    assert status.running and status.socket_dir is not None
    with psycopg.connect(host=str(status.socket_dir), user="postgres", dbname="imgsearch") as conn:
        assert conn.execute("SELECT count(*) FROM imgsearch.models").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM imgsearch.alembic_version").fetchone() == (1,)
    postgres_mains = subprocess.run(
        ["pgrep", "-f", f"postgres -D {status.pgdata}"], capture_output=True, text=True
    ).stdout.split()
    assert len(postgres_mains) == 1, "exactly one server for the home"


def test_unwritable_home_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    run = subprocess.run(
        [sys.executable, "-c", OPEN_AND_PRINT],
        env=_env(blocker / "home"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "cannot create IMGSEARCH_HOME" in run.stderr


def test_shared_buffers_sized_for_the_machine_once_and_operator_values_kept(home: Path) -> None:
    url = embedded.ensure_started(home)
    host = make_url(url).query["host"]
    expected = embedded.shared_buffers_mb()

    def shared_buffers() -> str:
        with psycopg.connect(host=str(host), user="postgres", dbname="postgres") as conn:
            row = conn.execute("SHOW shared_buffers").fetchone()
            assert row is not None
            return str(row[0])

    assert shared_buffers() == (f"{expected // 1024}GB" if expected % 1024 == 0 else f"{expected}MB")
    pid = embedded.status(home).pid
    assert embedded.ensure_started(home) == url and embedded.status(home).pid == pid  # no restart
    with psycopg.connect(host=str(host), user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET shared_buffers = '200MB'")  # the operator's choice
    embedded.stop(home)
    embedded.ensure_started(home)
    assert shared_buffers() == "200MB"


def test_shared_buffers_rule() -> None:
    gib = 2**30
    assert embedded.shared_buffers_mb(24 * gib) == 2048
    assert embedded.shared_buffers_mb(8 * gib) == 1024
    assert embedded.shared_buffers_mb(512 * 2**20) == 128


def test_logins_other_than_the_owner_authenticate_with_their_password(home: Path) -> None:
    """The wheel's initdb trusts every local login: a tenant's console login would never be asked
    for its password. A server started before imgsearch required them gets the rule at its next start."""
    url = embedded.ensure_started(home)
    pgdata = embedded.status(home).pgdata
    socket_dir = str(embedded.status(home).socket_dir)
    (pgdata / "pg_hba.conf").write_text(
        "local all all trust\nlocal replication all trust\n"
    )  # as initdb left it
    with psycopg.connect(host=socket_dir, user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
    url = embedded.ensure_started(home)
    assert (pgdata / "pg_hba.conf").read_text() == embedded.HBA
    engine = make_engine(url)
    migrate.upgrade(engine)
    password = tenancy.create_login(engine, "shop_console", "shop")
    engine.dispose()
    assert len(password) >= 24
    for wrong in (None, "not-it"):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(host=socket_dir, user="shop_console", password=wrong, dbname="imgsearch")
    with psycopg.connect(host=socket_dir, user="shop_console", password=password, dbname="imgsearch") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("shop_console",)
    with psycopg.connect(
        host=socket_dir, user="postgres", dbname="imgsearch"
    ) as conn:  # the owner: no password
        stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'shop_console'").fetchone()
        assert stored is not None and stored[0].startswith("SCRAM-SHA-256$")


def test_db_url_for_psql(home: Path) -> None:
    env = _env(home)
    sqlalchemy_url = subprocess.run(
        [sys.executable, "-m", "imgsearch", "db", "url"], env=env, capture_output=True, text=True, timeout=120
    ).stdout.strip()
    assert sqlalchemy_url.startswith("postgresql+psycopg://")
    uri = subprocess.run(
        [sys.executable, "-m", "imgsearch", "db", "url", "--psql"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    assert uri.startswith("postgresql://postgres@/imgsearch?host=")
    psql = Path(embedded._ep().__file__).parent / "pginstall" / "bin" / "psql"
    done = subprocess.run(
        [str(psql), uri, "-XAtc", "SELECT current_database()"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout.strip()) == (0, "imgsearch"), done.stderr
    refused = subprocess.run(
        [str(psql), sqlalchemy_url, "-XAtc", "SELECT 1"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0  # what `db url` prints is SQLAlchemy's, which psql rejects
    demo = subprocess.run(
        [sys.executable, "-m", "imgsearch", "db", "url", "--psql", "--database", "imgsearch_demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    assert demo.startswith("postgresql://postgres@/imgsearch_demo?host=")
