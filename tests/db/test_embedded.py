"""The embedded PostgreSQL: started on demand, reused across processes, safe under concurrent starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
from sqlalchemy import make_url

from imgsearch.db import embedded

OPEN_AND_PRINT = "from imgsearch import Catalog; c = Catalog.open(); print(c.dim, c.model); c.close()"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")}
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
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_PRINT],
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
