"""Query vectors bound as halfvec text or binary: the server reads back exactly the float16 values
that pgvector's own writer sends, for every finite float16."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from pgvector import HalfVector
from pgvector.sqlalchemy import HALFVEC
from psycopg.adapt import PyFormat
from psycopg.pq import Format
from sqlalchemy import Engine, Text, cast, create_engine, select, text

from imgsearch.db.vector_index import HalfvecValue, halfvec_text, query_param, send_binary_queries


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
