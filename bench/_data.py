"""Synthetic catalogs with realistic structure, shared by the benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt


def fresh_database(home: Path, name: str) -> str:
    """The URL of an empty database ``name`` (dropped first if it exists) on the embedded server
    of ``home``, started if needed (:func:`database_url`)."""
    return database_url(home, name, fresh=True)


def database_url(home: Path, name: str, *, fresh: bool = False) -> str:
    """The URL of database ``name`` on the embedded server of ``home``, started if needed; made
    if missing (dropped and made again with ``fresh``). Its sessions stop their statement within
    5 s of their client going away: a benchmark killed mid-statement leaves nothing running on the
    server to skew the next."""
    import psycopg
    from sqlalchemy import make_url

    from imgsearch.db import embedded
    from imgsearch.db.engine import GONE_CLIENT_CHECK_MS

    url = make_url(embedded.ensure_started(home))
    with psycopg.connect(host=url.query["host"], user="postgres", dbname="postgres", autocommit=True) as conn:
        if fresh:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f'ALTER DATABASE "{name}" SET client_connection_check_interval = {GONE_CLIENT_CHECK_MS}')
    return url.set(database=name).render_as_string()


def clustered(
    n: int, dim: int, clusters: int = 100, spread: float = 0.6, seed: int = 0
) -> npt.NDArray[np.float32]:
    """``n`` unit vectors around ``clusters`` random centres (like embeddings of product photos:
    tight groups per product type, with overlap)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, clusters, n)
    noise = rng.standard_normal((n, dim)) * spread / np.sqrt(dim)
    data = centres[labels] + noise
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    return data.astype(np.float32)


def exact_top_k(
    data: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int
) -> npt.NDArray[np.int64]:
    """Indices of the ``k`` nearest rows by cosine distance, in float32 (the ground truth)."""
    sims = queries @ data.T
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)
