"""The synthetic catalog of bench/search/search.py, shared by the search benchmarks: 768-d unit
vectors in 200 clusters, two clusters a category (1% of the catalog each), prices that follow the
clusters, one tenant; kept in the database ``bench_search`` of the embedded server (IMGSEARCH_HOME)
for reruns. ``query_cases`` gives query vectors with their filters at every selectivity."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import _data
import numpy as np
import psycopg
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from sqlalchemy import make_url, text

from imgsearch import Catalog
from imgsearch.db import filter_indexes, vector_index
from imgsearch.db.vector_index import create_index, index_name
from imgsearch.ingest import bulk
from imgsearch.settings import Settings

DB = "bench_search"
CLUSTERS = 200
GROUP = 10  # the calibrated generator's clusters per coarse group (a kind of product: 5 categories)
CALIBRATION = Path(__file__).with_name("calibration.json")  # written by bench/search/calibration.py
DATA = ("clustered", "calibrated")  # the kinds of vectors a search benchmark runs on


def database_url(home: Path, database: str = DB) -> str:
    """The URL of ``database`` (made if missing) on the embedded server at ``home``."""
    return _data.database_url(home, database)


def stored_catalog(
    rows: int, data_kind: str = "clustered", database: str | None = None
) -> tuple[str, np.ndarray, np.ndarray, int]:
    """For the side benchmarks: ``bench_search``'s URL (``bench_search_calibrated`` for the
    calibrated vectors, or ``database``), its catalog's vectors and cluster labels (loaded first
    if missing, as this script does) and the active model's id."""
    settings = Settings()
    name = database or (DB if data_kind == "clustered" else f"{DB}_{data_kind}")
    url = database_url(settings.home, name)
    with Catalog.open(url, model="google/siglip-base-patch16-224", settings=settings) as catalog:
        data, labels = load(catalog, rows, seed=11, data_kind=data_kind)
        model_id = catalog.active_model.id
    return url, data, labels, model_id


def load(catalog: Catalog, rows: int, seed: int, data_kind: str = "clustered") -> tuple[np.ndarray, np.ndarray]:
    make = calibrated_with_labels if data_kind == "calibrated" else clustered_with_labels
    data, labels = make(rows, catalog.dim, seed)
    with catalog.engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM imgsearch.embeddings")).scalar_one()
        first = conn.execute(
            text("SELECT embedding::text FROM imgsearch.embeddings WHERE image_id = 1 LIMIT 1")
        ).scalar()
        graded = conn.execute(text("SELECT attributes ? 'grade' FROM imgsearch.products WHERE id = 1")).scalar()
    drop_value_indexes(catalog)
    # the same vectors as these (not an older generator's or calibration's): the first row agrees;
    # and the same attributes (an older generator's had no tone nor grade)
    same = first is not None and graded and np.allclose(np.array(json.loads(first)), data[0], atol=2e-3)
    if stored == rows and same:
        print(f"reusing the stored catalog of {rows} rows", flush=True)
        return data, labels
    print(f"loading {rows} rows ...", flush=True)
    rng = np.random.default_rng(seed + 1)
    url = make_url(catalog.engine.url)
    model = catalog.registered_model()  # a fresh catalog registers its model at its first embedding
    with psycopg.connect(host=url.query["host"], user="postgres", dbname=url.database) as conn:
        register_vector(conn)
        conn.execute("TRUNCATE imgsearch.products CASCADE")
        conn.execute(f"DROP INDEX IF EXISTS imgsearch.{index_name(model.id)}")
        with conn.cursor().copy(
            "COPY imgsearch.products (id, tenant, product_id, category, price, attributes) FROM STDIN"
        ) as copy:
            for i, label in enumerate(labels):
                price = round(float(5 * label + rng.uniform(0, 5)), 2)
                bucket = int(rng.integers(0, 10000))
                copy.write_row(
                    (
                        i + 1,
                        "acme",
                        f"sku-{i}",
                        f"cat-{label // 2:03d}",
                        price,
                        # one value in 10,000 products, in 100 (tone) and in 10 (grade)
                        f'{{"bucket": {bucket}, "tone": {bucket % 100}, "grade": {bucket % 10}}}',
                    )
                )
        with conn.cursor().copy("COPY imgsearch.images (id, product_pk, tenant, state) FROM STDIN") as copy:
            for i in range(rows):
                copy.write_row((i + 1, i + 1, "acme", "ready"))
        with conn.cursor().copy(
            "COPY imgsearch.embeddings (model_id, image_id, product_pk, tenant, embedding) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["smallint", "bigint", "bigint", "text", "halfvec"])
            for i, vec in enumerate(data):
                copy.write_row((model.id, i + 1, i + 1, "acme", HalfVector(vec)))
                if (i + 1) % 20000 == 0:
                    print(f"  copied {i + 1}", flush=True)
        conn.execute("SELECT setval(pg_get_serial_sequence('imgsearch.products', 'id'), %s)", (rows,))
        conn.execute("SELECT setval(pg_get_serial_sequence('imgsearch.images', 'id'), %s)", (rows,))
        conn.commit()
    memory = bulk.auto_maintenance_work_mem(rows, catalog.dim)
    workers = vector_index.auto_parallel_workers()
    with catalog.engine.begin() as conn:
        conn.execute(text("SELECT set_config('maintenance_work_mem', :m, true)"), {"m": memory})
        conn.execute(
            text("SELECT set_config('max_parallel_maintenance_workers', :w, true)"), {"w": str(workers)}
        )
        start = time.perf_counter()
        create_index(conn, model.id, model.dim)
        built = time.perf_counter() - start
        conn.execute(text("CREATE TABLE IF NOT EXISTS public.bench_meta (key text PRIMARY KEY, value text)"))
        conn.execute(
            text(
                "INSERT INTO public.bench_meta VALUES ('build', :v) ON CONFLICT (key) DO UPDATE SET value = :v"
            ),
            {"v": f"{built:.0f} s ({memory}, {workers} parallel workers)"},
        )
        print(f"  HNSW index built in {built:.0f} s ({memory}, {workers} parallel workers)", flush=True)
    with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("products", "images", "embeddings"):
            conn.execute(text(f"VACUUM ANALYZE imgsearch.{table}"))
    return data, labels


def drop_value_indexes(catalog: Catalog) -> None:
    """A stored catalog starts without per-value indexes (an earlier run's ``--category-indexes``)."""
    with catalog.engine.begin() as conn:
        filter_indexes.set_rule(conn, "category", None)
    filter_indexes.refresh(catalog.engine, catalog.active_model)


def clustered_with_labels(rows: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, CLUSTERS, rows)
    data = centres[labels] + rng.standard_normal((rows, dim)) * 0.6 / np.sqrt(dim)
    return (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32), labels


def calibrated_with_labels(rows: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors shaped as real embeddings are (bench/search/calibration.py measures them and
    writes ``calibration.json``): a common offset (a cone, not a sphere around the origin); the
    rest of the variance split between coarse groups of ``GROUP`` clusters, the clusters within
    them and the items within a cluster, in the measured shares; every part's variance falling
    as ``i ** -alpha`` (a low effective dimension) along directions turned at random from the
    coordinate axes, as a trained model's are (calibration.py's "axes": 0.1-0.2 where aligned
    axes give 1; until 2026-11-27 the generator kept them on the axes, which only coordinate-wise
    methods such as binary codes notice). Labels as :func:`clustered_with_labels`' (a category is
    two clusters)."""
    p = json.loads(CALIBRATION.read_text())["generator"]
    rng = np.random.default_rng(seed)
    scale = np.arange(1, dim + 1) ** (-p["alpha"] / 2)
    scale /= np.sqrt((scale**2).sum())  # each part's expected squared norm is 1
    groups = rng.standard_normal((CLUSTERS // GROUP, dim)) * scale
    centres = rng.standard_normal((CLUSTERS, dim)) * scale
    offset = rng.standard_normal(dim)
    offset *= np.sqrt(p["offset"]) / np.linalg.norm(offset)
    labels = rng.integers(0, CLUSTERS, rows)
    turn = np.linalg.qr(np.random.default_rng(seed + 1).standard_normal((dim, dim)))[0]
    data = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 50_000):  # in slices: 1M x 768 float64 at once is 6 GB
        part = labels[start : start + 50_000]
        items = rng.standard_normal((len(part), dim)) * scale
        block = (
            offset
            + np.sqrt(p["group"]) * groups[part // GROUP]
            + np.sqrt(p["cluster"]) * centres[part]
            + np.sqrt(p["item"]) * items
        )
        block = block @ turn
        data[start : start + len(part)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return data, labels


def filters_for(
    query_cluster: int, centres: np.ndarray, rng: np.random.Generator
) -> list[tuple[str, dict[str, Any]]]:
    far = farthest_cluster(centres, query_cluster)
    near_cat, far_cat = query_cluster // 2, far // 2
    near10 = [f"cat-{(near_cat + i) % 100:03d}" for i in range(10)]
    far10 = [f"cat-{(far_cat + i) % 100:03d}" for i in range(10)]
    near3, far3 = near10[:3], far10[:3]
    low_near = 5 * (2 * near_cat)
    low_far = 5 * (2 * far_cat)
    return [
        ("100%", {}),
        ("100% tenant", {"tenant": "acme"}),
        ("10% near", {"category": near10}),
        ("10% far", {"category": far10}),
        ("3% near", {"category": near3}),
        ("3% far", {"category": far3}),
        ("1% near", {"category": f"cat-{near_cat:03d}"}),
        ("1% far", {"category": f"cat-{far_cat:03d}"}),
        ("1% near, shop", {"tenant": "acme", "category": f"cat-{near_cat:03d}"}),
        ("1% far, shop", {"tenant": "acme", "category": f"cat-{far_cat:03d}"}),
        ("0.1% near", {"category": f"cat-{near_cat:03d}", "price_min": low_near, "price_max": low_near + 1}),
        ("0.1% far", {"category": f"cat-{far_cat:03d}", "price_min": low_far, "price_max": low_far + 1}),
        ("0.01%", {"attributes": {"bucket": int(rng.integers(0, 10000))}}),
    ]


def cluster_centres(data: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each cluster's mean row, unit length, in cluster order."""
    centres = np.stack([data[labels == c].mean(axis=0) for c in range(CLUSTERS)])
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def farthest_cluster(centres: np.ndarray, cluster: int) -> int:
    """The cluster least like ``cluster``: where the "far" filters' rows lie."""
    return int(np.argmin(centres @ centres[cluster]))


def query_cases(
    data: np.ndarray, labels: np.ndarray, count: int
) -> list[tuple[np.ndarray, list[tuple[str, dict[str, Any]]]]]:
    """``count`` query vectors (a catalog row plus noise), each with its filters by selectivity."""
    centres = cluster_centres(data, labels)
    rng = np.random.default_rng(5)
    dim = data.shape[1]
    cases = []
    for _ in range(count):
        row = int(rng.integers(0, len(data)))
        q = data[row] + rng.standard_normal(dim).astype(np.float32) * 0.3 / np.sqrt(dim)
        cases.append((q / np.linalg.norm(q), filters_for(int(labels[row]), centres, rng)))
    return cases
