"""imgsearch.db.engine: long work on connections of its own stops once its client is gone."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.db import engine as db_engine
from imgsearch.db import vector_index
from imgsearch.errors import DatabaseUnavailable
from tests.helpers import cli_environment, run_cli, unit


def _waiting_statement(catalog: Catalog, writer_pid: int, timeout: float = 120) -> tuple[int, str]:
    """The pid and statement of the backend (not ``writer_pid``'s) waiting for a lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with catalog.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> :writer AND backend_type = 'client backend'"
                ),
                {"writer": writer_pid},
            ).first()
        if row is not None:
            return int(row[0]), str(row[1])
        time.sleep(0.2)
    raise AssertionError("no statement of the command came to wait for the writer")


def _running(catalog: Catalog, pid: int) -> bool:
    with catalog.engine.connect() as conn:
        return bool(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}).scalar())


@pytest.mark.parametrize(
    ("command", "statement"),
    [(("model", "reindex"), "REINDEX INDEX CONCURRENTLY"), (("import",), "DROP INDEX CONCURRENTLY")],
)
def test_a_killed_command_leaves_no_statement_waiting_on_the_server(
    database_url: str, tmp_path: Path, command: tuple[str, ...], statement: str
) -> None:
    """A writer's open transaction holds the command's statement (REINDEX, or the import dropping
    the index before its load) in a lock wait; the command is killed there (kill -9: no cancel
    request is sent). Without a check of the client, that statement would wait on until the writer
    ends, then run its build for no one, its locks held; with it, it is gone within seconds."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"embedding": unit(768, i).tolist(), "product_id": f"n{i}"}) + "\n" for i in range(20))
    )
    args = [*command, str(rows), "--tenant", "acme", "--rebuild-index", "always"] if command == ("import",) else list(command)
    with Catalog.open(database_url) as catalog:
        catalog.add_many(
            [{"embedding": unit(768, 100 + i), "tenant": "acme", "product_id": f"p{i}"} for i in range(5)],
            progress=False,
        )
        writer = catalog.engine.connect()
        try:
            with writer.begin():
                writer.execute(text("UPDATE imgsearch.embeddings SET created_at = now()"))
                writer_pid = int(writer.execute(text("SELECT pg_backend_pid()")).scalar_one())
                process = subprocess.Popen(
                    [sys.executable, "-m", "imgsearch", *args],
                    env=cli_environment(IMGSEARCH_DATABASE_URL=database_url),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    pid, query = _waiting_statement(catalog, writer_pid)
                finally:
                    process.kill()
                    process.wait(timeout=30)
                assert query.lstrip().startswith(statement), query
                killed = time.monotonic()
                while _running(catalog, pid) and time.monotonic() - killed < 30:
                    time.sleep(0.1)
                gone_after = time.monotonic() - killed
                assert not _running(catalog, pid), f"{statement} still waits 30 s after its client was killed"
                assert gone_after < db_engine.GONE_CLIENT_CHECK_MS / 1000 + 5
        finally:
            writer.close()
        # run again, the command does its work: the rows imported, the index built and valid
        again = run_cli(*args, IMGSEARCH_DATABASE_URL=database_url)
        assert again.returncode == 0, again.stderr
        with catalog.engine.connect() as conn:
            invalid = conn.execute(
                text("SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                     "WHERE c.relnamespace = 'imgsearch'::regnamespace AND NOT i.indisvalid")
            ).scalar_one()
        assert invalid == 0
        assert vector_index.index_valid(catalog.engine, catalog.active_model)
        assert [h.product_id for h in catalog.search(vector=unit(768, 100), k=1, tenant="acme")] == ["p0"]
        if command == ("import",):
            assert [h.product_id for h in catalog.search(vector=unit(768, 3), k=1, tenant="acme")] == ["n3"]


def test_a_connection_for_long_work_checks_its_client_and_an_unreachable_server_is_named(
    database_url: str,
) -> None:
    with Catalog.open(database_url) as catalog:
        with db_engine.connect(catalog.engine.url, "to build the index") as conn:
            setting = conn.execute(
                "SELECT setting::int FROM pg_settings WHERE name = 'client_connection_check_interval'"
            ).fetchone()
            assert setting == (db_engine.GONE_CLIENT_CHECK_MS,)
            assert conn.autocommit
        with db_engine.connect(catalog.engine.url, "for the import", autocommit=False) as conn:
            assert not conn.autocommit
            conn.execute("SELECT 1")
            assert conn.info.transaction_status.name == "INTRANS"  # its own transaction, not the check's
            conn.rollback()
        unreachable = catalog.engine.url.set(query={"host": "/nonexistent-socket-dir"})
    with pytest.raises(DatabaseUnavailable, match=r"^cannot connect to PostgreSQL for the import: "):
        db_engine.connect(unreachable, "for the import")
