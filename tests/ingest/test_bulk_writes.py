"""How a bulk import writes (imgsearch/ingest/bulk.py): its products locked in the order every
writer locks them, its writes and staged rows given memory for their rows, and the planner told of
every table it filled."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.db.engine import libpq_conninfo
from imgsearch.ingest import bulk
from tests.helpers import locks_in_key_order, unit


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 32)).astype(np.float32)


def test_an_import_locks_its_products_in_key_order_as_uploads_do(catalog: Catalog) -> None:
    def imported(product_ids: list[str]) -> None:
        rows = [
            {"embedding": unit(catalog.dim, 7 + n), "tenant": "acme", "product_id": p, "category": "again"}
            for n, p in enumerate(reversed(product_ids))
        ]
        assert catalog.import_vectors(rows, progress=False) == 2

    locks_in_key_order(catalog, imported)


def seen_settings(catalog: Catalog, server: dict[str, str], rows: int) -> list[tuple[int, int]]:
    """Import ``rows`` rows into a database whose sessions have the ``server`` settings; the
    ``work_mem`` and ``temp_buffers`` (bytes) each insert into the embeddings ran with."""
    with catalog.engine.begin() as conn:
        database = conn.execute(text("SELECT current_database()")).scalar_one()
        for name, value in server.items():  # the test's own names and values
            conn.execute(text(f"ALTER DATABASE \"{database}\" SET {name} = '{value}'"))
        conn.execute(text("CREATE TABLE public.seen (work_mem text, temp_buffers text)"))
        conn.execute(
            text(
                "CREATE FUNCTION public.see() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "INSERT INTO public.seen VALUES (current_setting('work_mem'), current_setting('temp_buffers')); "
                "RETURN NULL; END $$"
            )
        )
        conn.execute(
            text("CREATE TRIGGER z_seen AFTER INSERT ON imgsearch.embeddings EXECUTE FUNCTION public.see()")
        )
        conn.execute(text("GRANT INSERT ON public.seen TO PUBLIC"))
    given = [{"embedding": v, "tenant": "acme", "product_id": f"p{i}"} for i, v in enumerate(vectors(rows, 9))]
    assert catalog.import_vectors(given, progress=False) == rows
    with catalog.engine.begin() as conn:
        seen = conn.execute(text("SELECT pg_size_bytes(work_mem), pg_size_bytes(temp_buffers) FROM public.seen"))
        return [(int(w), int(t)) for w, t in seen]


def server_setting(catalog: Catalog, name: str) -> int:
    """A setting in a new session of the catalog's database, in bytes."""
    with psycopg.connect(libpq_conninfo(catalog.engine.url)) as fresh:
        row = fresh.execute("SELECT pg_size_bytes(current_setting(%s))", (name,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(("server", "expected"), [("64kB", None), ("1GB", 1024**3)])
def test_an_import_writes_with_room_for_its_rows_never_less_than_the_servers(
    catalog: Catalog, server: str, expected: int | None
) -> None:
    """The import's writes run with ``work_mem`` sized to its rows (its sort and the rows its
    statement triggers read stay in memory), for its transaction only, never below the setting."""
    seen = seen_settings(catalog, {"work_mem": server}, 300)
    wanted = expected or bulk.import_work_mem(300, catalog.dim) // 1024 * 1024
    assert wanted > 64 * 1024
    assert seen and {w for w, _ in seen} == {wanted}  # each of its inserts
    assert bulk.import_work_mem(10_000_000, 768) == bulk.MAX_IMPORT_WORK_MEM
    # for the import's transaction only: a new session of the database has the setting it had
    assert server_setting(catalog, "work_mem") == (expected or 64 * 1024)


@pytest.mark.parametrize(("server", "expected"), [("1MB", None), ("1GB", 1024**3)])
def test_an_import_stages_its_rows_in_buffers_of_their_own_never_less_than_the_servers(
    catalog: Catalog, server: str, expected: int | None
) -> None:
    """The import's temporary tables (its staged rows, the rows chosen from them) live in
    ``temp_buffers`` of :data:`bulk.IMPORT_TEMP_BUFFERS` rather than being written out to files
    and read back, for its transaction only, never below the setting."""
    seen = seen_settings(catalog, {"temp_buffers": server}, 50)
    assert bulk.IMPORT_TEMP_BUFFERS > 1024**2
    assert seen and {t for _, t in seen} == {expected or bulk.IMPORT_TEMP_BUFFERS}
    assert server_setting(catalog, "temp_buffers") == (expected or 1024**2)


def test_a_session_that_had_a_temporary_table_stages_with_the_buffers_it_has(catalog: Catalog) -> None:
    """The server takes ``temp_buffers`` only before a session's first temporary table: an import
    on a session that had one (a pooler's connection handed over again) keeps the session's
    setting, and its transaction goes on."""
    with psycopg.connect(libpq_conninfo(catalog.engine.url)) as conn:
        conn.execute("CREATE TEMPORARY TABLE earlier AS SELECT 1 AS x")  # its buffers taken
        conn.commit()
        with conn.transaction():
            bulk._raise_temp_buffers(conn)
            row = conn.execute("SELECT current_setting('temp_buffers'), 1").fetchone()
        assert row == ("8MB", 1)
    with psycopg.connect(libpq_conninfo(catalog.engine.url)) as conn, conn.transaction():  # a session without
        bulk._raise_temp_buffers(conn)
        row = conn.execute("SELECT pg_size_bytes(current_setting('temp_buffers'))").fetchone()
        assert row is not None and row[0] > 8 * 1024**2


def test_the_planner_knows_every_table_an_import_wrote(catalog: Catalog) -> None:
    """Right after an import, the planner's row counts of each table it wrote (its triggers'
    included) are the rows there, not what they were before the load."""
    rows = [
        {"embedding": v, "tenant": "acme", "product_id": f"p{i}", "category": f"c{i % 3}"}
        for i, v in enumerate(vectors(300, 12))
    ]
    assert catalog.import_vectors(rows, progress=False) == 300
    counted, known = {}, {}
    with catalog.engine.begin() as conn:
        for table in bulk.ANALYZED:
            counted[table] = conn.execute(text(f"SELECT count(*) FROM imgsearch.{table}")).scalar_one()
            known[table] = conn.execute(
                text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:t)"),
                {"t": f"imgsearch.{table}"},
            ).scalar_one()
    assert known == counted
    assert all(
        counted[t] == 300 for t in ("products", "images", "image_products", "embeddings", "facet_members")
    )
