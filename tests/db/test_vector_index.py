"""Query vectors bound as halfvec text: the server reads back exactly the float16 values that
pgvector's own writer sends, for every finite float16."""

from __future__ import annotations

import numpy as np
from pgvector import HalfVector
from sqlalchemy import create_engine, text

from imgsearch.db.vector_index import halfvec_text


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
