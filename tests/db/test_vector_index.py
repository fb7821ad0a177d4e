"""Query vectors bound as halfvec text or binary: the server reads back exactly the float16 values
that pgvector's own writer sends, for every finite float16."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from pgvector import HalfVector
from pgvector.sqlalchemy import HALFVEC
from psycopg.adapt import PyFormat
from psycopg.pq import Format
from sqlalchemy import Engine, Text, cast, create_engine, select, text

from imgsearch import Catalog
from imgsearch.db import vector_index
from imgsearch.db.vector_index import HalfvecValue, halfvec_text, query_param, send_binary_queries
from imgsearch.errors import InvalidInput, TransientError
from tests.helpers import clustered, exact_similarities, run_cli, unit


def test_every_float16_value_reaches_the_server_unchanged(database_url: str) -> None:
    values = np.arange(0, 2**16, dtype=np.uint16).view(np.float16)
    values = values[np.isfinite(values)]
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            for chunk in np.array_split(values, 8):  # halfvec holds at most 16,000 dimensions
                ours, theirs = conn.execute(
                    text("SELECT CAST(:ours AS halfvec)::text, CAST(:theirs AS halfvec)::text"),
                    {"ours": halfvec_text(chunk), "theirs": HalfVector(chunk).to_text()},
                ).one()
                assert ours == theirs
    finally:
        engine.dispose()


def test_float32_queries_are_rounded_as_halfvec_rounds_them() -> None:
    rng = np.random.default_rng(0)
    query = rng.standard_normal(768).astype(np.float32)
    query /= np.linalg.norm(query)
    written = np.array(halfvec_text(query)[1:-1].split(","), dtype=np.float32).astype(np.float16)
    assert np.array_equal(written, query.astype(np.float16))


def test_a_bulk_imports_encoded_halfvecs_are_what_pgvector_writes_and_copy_reads(database_url: str) -> None:
    """:func:`vector_index.encoded_halfvecs` (a bulk import's vectors, a batch at a time) against
    pgvector's own writer, row by row, and through a binary COPY into a halfvec column: unit
    rows, rows of float16's edge values (zero, subnormals, the largest, rounding ties), one row."""
    rng = np.random.default_rng(3)
    unit_rows = rng.standard_normal((50, 768)).astype(np.float32)
    unit_rows /= np.linalg.norm(unit_rows, axis=1, keepdims=True)
    finite = np.arange(0, 2**16, dtype=np.uint16).view(np.float16)
    edges = finite[np.isfinite(finite)].astype(np.float32)[: 64 * 960].reshape(64, 960)
    ties = (np.float32(1) + np.arange(64, dtype=np.float32) * np.float32(2**-11)).reshape(1, 64)
    for matrix in (unit_rows, edges, ties, unit_rows[:1]):
        encoded = vector_index.encoded_halfvecs(matrix)
        assert [bytes(e) for e in encoded] == [HalfVector(row).to_binary() for row in matrix]
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        from pgvector.psycopg import register_vector

        register_vector(conn)
        vector_index.copy_encoded_halfvecs(conn)
        conn.execute("CREATE TEMPORARY TABLE copied (i int, v halfvec(768))")
        with conn.cursor().copy("COPY copied (i, v) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "halfvec"])
            for i, value in enumerate(vector_index.encoded_halfvecs(unit_rows)):
                copy.write_row((i, value))
        stored = conn.execute("SELECT v::text FROM copied ORDER BY i").fetchall()
    read = np.array([row[0][1:-1].split(",") for row in stored], dtype=np.float32).astype(np.float16)
    assert np.array_equal(read, unit_rows.astype(np.float16))


def _binary_and_text(engine: Engine, chunk: np.ndarray) -> tuple[str, str]:
    with engine.connect() as conn:
        send_binary_queries(conn)
        return conn.execute(
            select(
                cast(query_param(chunk, len(chunk), name="ours", binary=True), HALFVEC()).cast(Text),
                text("CAST(:theirs AS halfvec)::text"),
            ),
            {"theirs": HalfVector(chunk).to_text()},
        ).one()


@pytest.mark.parametrize("cursor", ["server-side binding", "client-side binding (Django's)"])
def test_query_vectors_sent_as_halfvec_values_arrive_unchanged(database_url: str, cursor: str) -> None:
    """A search's query vector goes as a HalfvecValue: binary where the cursor binds on the server,
    text where it binds on the client; either way the server reads every float16 exactly."""
    values = np.arange(0, 2**16, dtype=np.uint16).view(np.float16)
    values = values[np.isfinite(values)]
    connect_args = {"cursor_factory": psycopg.ClientCursor} if cursor.startswith("client") else {}
    engine = create_engine(database_url, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            send_binary_queries(conn)
            dumper = conn.connection.driver_connection.adapters.get_dumper(HalfvecValue, PyFormat.AUTO)  # type: ignore[union-attr]
            assert dumper.format == Format.BINARY
        for chunk in np.array_split(values, 8):
            ours, theirs = _binary_and_text(engine, chunk)
            assert ours == theirs
    finally:
        engine.dispose()


# --- HNSW parameters and rebuilding an index -------------------------------------------------


def _index(engine: Engine, model_id: int) -> tuple[list[str], int, bool]:
    """The model's HNSW index: its options, its file (a rebuild makes a new one) and validity."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT c.reloptions, c.relfilenode, i.indisvalid FROM pg_class c "
                "JOIN pg_index i ON i.indexrelid = c.oid WHERE c.oid = to_regclass(:name)"
            ),
            {"name": f"imgsearch.{vector_index.index_name(model_id)}"},
        ).one()
    return sorted(row.reloptions), int(row.relfilenode), bool(row.indisvalid)


def _invalid_indexes(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT c.relname FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
                    "WHERE c.relnamespace = 'imgsearch'::regnamespace AND NOT i.indisvalid"
                )
            ).scalars()
        )


CURRENT = sorted([f"m={vector_index.HNSW_M}", f"ef_construction={vector_index.HNSW_EF_CONSTRUCTION}"])


@pytest.fixture
def filled(database_url: str) -> Iterator[tuple[Catalog, np.ndarray, np.ndarray]]:
    """A catalog of 600 clustered 768-d rows: the catalog, its vectors and their image ids."""
    vectors, _ = clustered(600, 768, 12, seed=9)
    with Catalog.open(database_url) as catalog:
        ids = catalog.add_many(
            [{"embedding": v, "tenant": "acme", "product_id": f"p{i}"} for i, v in enumerate(vectors)],
            progress=False,
        )
        yield catalog, vectors, np.array(ids)


def _exact_top(vectors: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int = 10) -> list[int]:
    return ids[np.argsort(-exact_similarities(vectors, q))[:k]].tolist()


def test_new_indexes_are_built_with_ef_construction_128(database_url: str) -> None:
    with Catalog.open(database_url) as catalog:
        options, _, valid = _index(catalog.engine, catalog.registered_model().id)
    assert vector_index.HNSW_EF_CONSTRUCTION == 128
    assert options == ["ef_construction=128", "m=16"] and valid


def test_rebuild_gives_an_old_index_the_current_parameters(
    filled: tuple[Catalog, np.ndarray, np.ndarray],
) -> None:
    catalog, vectors, ids = filled
    model = catalog.active_model
    with catalog.engine.begin() as conn:  # as an index built by imgsearch before ef_construction 128
        conn.execute(
            text(f"ALTER INDEX imgsearch.{vector_index.index_name(model.id)} SET (ef_construction = 64)")
        )
    before = _index(catalog.engine, model.id)
    assert "ef_construction=64" in before[0]
    reports: list[tuple[int, int, str]] = []
    seconds = vector_index.rebuild_index(catalog.engine, model, progress=lambda *r: reports.append(r))
    options, filenode, valid = _index(catalog.engine, model.id)
    assert options == CURRENT and valid and seconds > 0
    assert filenode != before[1]  # a new graph, not only new options
    assert all(total >= done >= 0 for done, total, _ in reports)
    for n in range(5):
        q = unit(768, seed=n)
        assert [h.image_id for h in catalog.search(vector=q, k=10)] == _exact_top(vectors, ids, q)
    assert _invalid_indexes(catalog.engine) == []


def test_searches_go_on_during_a_rebuild_and_an_interrupted_one_is_cleaned_up(
    filled: tuple[Catalog, np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer's open transaction holds the rebuild in "waiting for writers before build", after
    it has made its new copy: searches still run then; cancelled there, it leaves that copy
    invalid, and the next rebuild drops it."""
    catalog, vectors, ids = filled
    model = catalog.active_model
    monkeypatch.setattr(vector_index, "PROGRESS_INTERVAL_SECONDS", 0.02)
    q = unit(768, seed=42)
    seen: list[list[int]] = []

    def search_then_cancel(done: int, total: int, phase: str) -> None:
        if phase == "waiting for writers before build" and not seen:
            seen.append([h.image_id for h in catalog.search(vector=q, k=10)])
            with catalog.engine.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_cancel_backend(pid) FROM pg_stat_progress_create_index "
                        "WHERE relid = 'imgsearch.embeddings'::regclass"
                    )
                )

    writer = catalog.engine.connect()
    try:
        with writer.begin():
            writer.execute(
                text("UPDATE imgsearch.embeddings SET created_at = now() WHERE image_id = :i"),
                {"i": int(ids[0])},
            )
            with pytest.raises(
                TransientError,
                match=r"was interrupted \(canceling statement due to user request\); the old index still serves",
            ):
                vector_index.rebuild_index(catalog.engine, model, progress=search_then_cancel)
    finally:
        writer.close()
    assert seen == [_exact_top(vectors, ids, q)]
    assert _invalid_indexes(catalog.engine) == [f"{vector_index.index_name(model.id)}_ccnew"]
    vector_index.rebuild_index(catalog.engine, model)
    assert _invalid_indexes(catalog.engine) == []
    assert _index(catalog.engine, model.id)[0] == CURRENT
    assert [h.image_id for h in catalog.search(vector=q, k=10)] == _exact_top(vectors, ids, q)


@pytest.mark.parametrize(
    "memory", ["", "lots", "-1GB", "1GB'; DROP TABLE imgsearch.products; --", "1 GB\x00", "9" * 40]
)
def test_bad_maintenance_work_mem_is_refused_before_anything_changes(database_url: str, memory: str) -> None:
    with Catalog.open(database_url) as catalog:
        model = catalog.registered_model()
        before = _index(catalog.engine, model.id)
        with pytest.raises(InvalidInput, match="maintenance_work_mem must be a size"):
            vector_index.rebuild_index(catalog.engine, model, maintenance_work_mem=memory)
        assert _index(catalog.engine, catalog.active_model.id) == before
        with catalog.engine.connect() as conn:
            assert conn.execute(text("SELECT to_regclass('imgsearch.products') IS NOT NULL")).scalar_one()


def test_model_reindex_command(filled: tuple[Catalog, np.ndarray, np.ndarray]) -> None:
    catalog, _, _ = filled
    env = {"IMGSEARCH_DATABASE_URL": str(catalog.engine.url.render_as_string(hide_password=False))}
    before = _index(catalog.engine, catalog.active_model.id)
    run = run_cli("model", "reindex", **env)
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(
        rf"rebuilt the HNSW index of {re.escape(catalog.model)} \(m 16, ef_construction 128\) in \d+\.\d s\n",
        run.stdout,
    )
    assert _index(catalog.engine, catalog.active_model.id)[1] != before[1]
    named = run_cli("model", "reindex", catalog.model, "--maintenance-work-mem", "256MB", **env)
    assert named.returncode == 0, named.stderr
    unknown = run_cli("model", "reindex", "no/such-model", **env)
    assert (unknown.returncode, unknown.stderr) == (3, "imgsearch: model 'no/such-model' is not registered\n")
    bad = run_cli("model", "reindex", "--maintenance-work-mem", "lots", **env)
    assert (bad.returncode, bad.stderr) == (
        2,
        "imgsearch: maintenance_work_mem must be a size such as '1GB', got 'lots'\n",
    )


def test_rebuild_makes_a_lost_index_again(filled: tuple[Catalog, np.ndarray, np.ndarray]) -> None:
    catalog, vectors, ids = filled
    model = catalog.active_model
    with catalog.engine.begin() as conn:
        vector_index.drop_index(conn, model.id)
    vector_index.rebuild_index(catalog.engine, model)
    assert _index(catalog.engine, model.id)[0] == CURRENT
    q = unit(768, seed=7)
    assert [h.image_id for h in catalog.search(vector=q, k=10)] == _exact_top(vectors, ids, q)
