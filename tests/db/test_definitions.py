"""Each console SQL object has one current definition, in one file of ``imgsearch/db/sql/``: what a
database migrated from empty runs, object by object, each file executable as it is, and no
migration after the SQL home imports another or edits SQL text by substitution."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from imgsearch.db import definitions
from imgsearch.db.engine import make_engine

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations" / "versions"
LAST_WITH_EDITS = 31  # migrations up to 0031 stay as they ran; later ones hold whole definitions


@pytest.fixture()
def migrated(empty_database_url: str) -> Iterator[Connection]:
    """A database migrated from empty (not a clone of the template: the migrations' own run)."""
    from imgsearch.db import migrate

    engine = make_engine(empty_database_url)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        yield conn
    engine.dispose()


def test_a_freshly_migrated_database_runs_the_shipped_definitions(migrated: Connection) -> None:
    now, shipped = definitions.render(migrated), definitions.files()
    assert set(now) == set(shipped), sorted(set(now) ^ set(shipped))
    assert [path for path in now if now[path] != shipped[path]] == []
    # the console's functions are there, each in a file of its name, overloads together
    for name in ("search_text", "search_hybrid", "facets", "lexical_match", "record_events", "_request_text"):
        assert f"CREATE OR REPLACE FUNCTION imgsearch.{name}(" in shipped[f"functions/{name}.sql"]
    assert shipped["functions/lexical_match.sql"].count("CREATE OR REPLACE FUNCTION") == 2
    assert {path.split("/")[0] for path in shipped} == {"functions", "triggers", "views", "policies"}


def _state(conn: Connection) -> dict[str, str]:
    return definitions.render(conn)


def test_each_file_run_again_changes_nothing(migrated: Connection) -> None:
    before = _state(migrated)
    for path, body in definitions.files().items():
        try:  # each file in a transaction of its own, rolled back
            if path.startswith("policies/"):  # CREATE POLICY has no OR REPLACE: the file's policies anew
                table = path.removeprefix("policies/").removesuffix(".sql")
                names = migrated.execute(
                    text("SELECT policyname FROM pg_policies WHERE schemaname = 'imgsearch' AND tablename = :t"),
                    {"t": table},
                ).scalars()
                for name in list(names):
                    migrated.execute(text(f'DROP POLICY "{name}" ON imgsearch."{table}"'))
            definitions.run(migrated, body)
            assert _state(migrated) == before, path
        finally:
            migrated.rollback()


def test_a_changed_definition_is_seen(migrated: Connection) -> None:
    try:
        migrated.exec_driver_sql(
            "CREATE OR REPLACE FUNCTION imgsearch.normalized_query(query text) RETURNS text "
            "LANGUAGE sql IMMUTABLE AS $$ SELECT lower(query) $$"
        )
        now, shipped = definitions.render(migrated), definitions.files()
        assert now["functions/normalized_query.sql"] != shipped["functions/normalized_query.sql"]
        assert all(now[path] == body for path, body in shipped.items() if "normalized_query" not in path)
    finally:
        migrated.rollback()


def test_write_keeps_files_equal_and_removes_what_is_gone(migrated: Connection, tmp_path: Path) -> None:
    assert definitions.write(migrated, tmp_path) == sorted(definitions.files())
    (tmp_path / "functions" / "dropped_since.sql").write_text("-- gone\n")
    assert definitions.write(migrated, tmp_path) == ["functions/dropped_since.sql"]
    assert definitions.files(tmp_path) == definitions.files()


def test_run_executes_every_statement_of_a_file(migrated: Connection) -> None:
    body = definitions.files()["functions/_search.sql"]  # a BEGIN ATOMIC body and a plpgsql one with %
    try:
        migrated.exec_driver_sql("DROP FUNCTION imgsearch._search(halfvec, int, text, text, numeric, numeric, bigint)")
        definitions.run(migrated, body)  # made anew, and the other replaced
        assert definitions.render(migrated)["functions/_search.sql"] == body
    finally:
        migrated.rollback()


def test_later_migrations_hold_whole_definitions() -> None:
    later = [path for path in MIGRATIONS.glob("0*.py") if int(path.name[:4]) > LAST_WITH_EDITS]
    for path in later:
        source = path.read_text()
        assert "importlib" not in source and "spec_from_file_location" not in source, path.name
        assert not re.search(r"\.replace\(", source), f"{path.name} edits SQL text by substitution"
