"""Bulk import against the plain pgvector way of loading the same rows, in one run.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/ingest/import.py --rows 1000000

A Parquet file of ``--rows`` 768-d vectors (clustered, as bench/search/search.py's) with product ids,
categories, prices, one tenant and a JSON attribute, written once to ``--file`` and reused.

1. **Load.** ``imgsearch import`` (``catalog.import_report``: every row checked, binary ``COPY``
   into a staging table, products, images and embeddings written in one transaction, the HNSW
   index dropped first) into an empty catalog, against reading the same file and ``COPY``-ing its
   rows, in binary, into a plain pgvector table (the same columns, a ``halfvec(768)``, a primary
   key): rows/s, and their ratio (target >= 0.8x). The same run measures the **floor** of
   imgsearch's schema: the same rows ``COPY``-ed straight into its products, images, image links
   and embeddings tables, ids assigned by the script, no checks, no staging, no deduplication beyond the content
   hash every row needs, the HNSW index dropped. What those tables' keys, foreign keys, filter
   indexes and triggers cost is the least any import into them pays. ``--floors-only`` adds the
   tables with their primary keys only, and those with every other index, constraint and trigger
   made after the rows (timed together): the floor of an import that defers the schema's indexes.
2. **Index build.** imgsearch's ``CREATE INDEX CONCURRENTLY`` after the load against plain
   ``CREATE INDEX`` on the plain table, with the same m, ef_construction, ``maintenance_work_mem``
   and parallel workers (target <= 1.2x).
3. **Total.** The whole import (load, HNSW build, the set-aside search indexes' build) against
   plain ``COPY`` + ``CREATE INDEX`` (target <= 1.3x), also with both sides given the import's own
   build time (the builds' noise taken out), and the import's whole call (its ``ANALYZE`` and the
   binary codes' check too); against ``add_many`` of a ``--sample`` of the rows into a catalog
   of its own (the index built as it goes, as uploads build it), extrapolated to ``--rows``
   (target: the import >= 20x faster).

``--imports-only N`` runs only the import, N times: run it in two checkouts in turns to compare
their code on a noisy machine.

Each database is made for the run and dropped after it (``bench_import_*``).

The figure it produces: docs/benchmarks.md, "Bulk import" (with ``--floors-only``: its floors
table).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb
from sqlalchemy import make_url

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[2]))

from _data import fresh_database

from imgsearch import Catalog
from imgsearch.db import embedded, vector_index
from imgsearch.ingest import bulk
from imgsearch.settings import Settings

DIM = 768
CLUSTERS = 200
CHUNK = 20_000


def write_file(path: Path, rows: int, seed: int = 11) -> None:
    """The rows, written a chunk at a time (memory stays flat)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    schema = pa.schema(
        [
            ("embedding", pa.list_(pa.float32())),
            ("product_id", pa.string()),
            ("tenant", pa.string()),
            ("category", pa.string()),
            ("price", pa.float64()),
            ("attributes", pa.string()),
        ]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            labels = rng.integers(0, CLUSTERS, n)
            data = centres[labels] + rng.standard_normal((n, DIM)) * 0.6 / np.sqrt(DIM)
            data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
            table = pa.table(
                {
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(data.reshape(-1)), DIM).cast(
                        pa.list_(pa.float32())
                    ),
                    "product_id": [f"sku-{start + i}" for i in range(n)],
                    "tenant": ["acme"] * n,
                    "category": [f"cat-{label // 2:03d}" for label in labels],
                    "price": [round(float(5 * label + rng.uniform(0, 5)), 2) for label in labels],
                    "attributes": [json.dumps({"bucket": int(b)}) for b in rng.integers(0, 10_000, n)],
                },
                schema=schema,
            )
            writer.write_table(table)
            print(f"  wrote {start + n} rows", flush=True)


def raw_json(text: str) -> Jsonb:
    """A JSON text as jsonb, as it is (psycopg's dumper would make a str a JSON string)."""
    return Jsonb(text, dumps=lambda value: value)


def drop_database(home: Path, name: str) -> None:
    url = make_url(embedded.ensure_started(home))
    with psycopg.connect(host=url.query["host"], user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def plain_copy(database_url: str, path: Path) -> float:
    """Read the file and COPY its rows, in binary, into a plain pgvector table; seconds."""
    url = make_url(database_url)
    with psycopg.connect(host=url.query["host"], user="postgres", dbname=url.database) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(
            f"""CREATE TABLE plain (id bigint PRIMARY KEY, tenant text, product_id text, category text,
                price numeric(14, 4), attributes jsonb, embedding halfvec({DIM}))"""
        )
        conn.commit()
        register_vector(conn)
        start = time.perf_counter()
        with conn.cursor().copy(
            "COPY plain (id, tenant, product_id, category, price, attributes, embedding) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "text", "text", "text", "numeric", "jsonb", "halfvec"])
            row_id = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
                vectors = batch.column("embedding").flatten().to_numpy().reshape(batch.num_rows, DIM)
                columns = {
                    name: batch.column(name).to_pylist()
                    for name in ("tenant", "product_id", "category", "price", "attributes")
                }
                for i in range(batch.num_rows):
                    row_id += 1
                    copy.write_row(
                        (row_id, columns["tenant"][i], columns["product_id"][i], columns["category"][i],
                         Decimal(str(columns["price"][i])), raw_json(columns["attributes"][i]), HalfVector(vectors[i]))
                    )  # fmt: skip
        conn.commit()
        return time.perf_counter() - start


BARE = """
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT conrelid::regclass AS tab, conname FROM pg_constraint
             WHERE connamespace = 'imgsearch'::regnamespace AND contype IN ('f', 'u', 'c')
               AND conrelid::regclass::text IN ('imgsearch.products', 'imgsearch.images', 'imgsearch.image_products', 'imgsearch.embeddings')
             ORDER BY contype = 'f' DESC LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.tab, r.conname);
    END LOOP;
    FOR r IN SELECT i.indexrelid::regclass AS idx FROM pg_index i
             WHERE i.indrelid::regclass::text IN ('imgsearch.products', 'imgsearch.images', 'imgsearch.image_products', 'imgsearch.embeddings')
               AND NOT i.indisprimary LOOP
        EXECUTE format('DROP INDEX %s', r.idx);
    END LOOP;
    ALTER TABLE imgsearch.products DISABLE TRIGGER ALL;
    ALTER TABLE imgsearch.images DISABLE TRIGGER ALL;
    ALTER TABLE imgsearch.image_products DISABLE TRIGGER ALL;
    ALTER TABLE imgsearch.embeddings DISABLE TRIGGER ALL;
END $$
"""


# what BARE drops, as statements that make it again: plain indexes, then unique and check
# constraints, then foreign keys (which need the referenced keys' indexes)
RESTORE = """
SELECT pg_get_indexdef(i.indexrelid) || ';', 0
FROM pg_index i
WHERE i.indrelid::regclass::text IN ('imgsearch.products', 'imgsearch.images', 'imgsearch.image_products', 'imgsearch.embeddings')
  AND NOT i.indisprimary
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
UNION ALL
SELECT format('ALTER TABLE %s ADD CONSTRAINT %I %s;', conrelid::regclass, conname, pg_get_constraintdef(oid)),
       CASE contype WHEN 'f' THEN 2 ELSE 1 END
FROM pg_constraint
WHERE connamespace = 'imgsearch'::regnamespace AND contype IN ('f', 'u', 'c')
  AND conrelid::regclass::text IN ('imgsearch.products', 'imgsearch.images', 'imgsearch.image_products', 'imgsearch.embeddings')
ORDER BY 2
"""


def numbered_vectors(file: pq.ParquetFile) -> Iterator[tuple[int, str, np.ndarray]]:
    """Each row's id (1, 2, ...), tenant and vector, a batch at a time."""
    row_id = 0
    for batch in file.iter_batches(batch_size=4096, columns=["embedding", "tenant"]):
        vectors = batch.column("embedding").flatten().to_numpy().reshape(batch.num_rows, DIM)
        for tenant, vector in zip(batch.column("tenant").to_pylist(), vectors, strict=True):
            row_id += 1
            yield row_id, tenant, vector


def schema_floor(
    database_url: str, path: Path, settings: Settings, bare: bool = False, restore: str | None = None
) -> float:
    """COPY the rows straight into imgsearch's own tables (see the module's doc); seconds.
    ``bare``: the three tables with their primary keys only (no other index, constraint or
    trigger): what writing three tables costs by itself. ``restore`` (a ``maintenance_work_mem``,
    with ``bare``): then make every index, constraint and trigger dropped again, timed with the
    load: the floor of an import that builds the schema's indexes after its rows, as it does the
    HNSW index, and leaves the catalog as it must be."""
    with Catalog.open(database_url, settings=settings) as catalog:
        catalog.import_vectors([])  # registers the model
    url = make_url(database_url)
    with psycopg.connect(host=url.query["host"], user="postgres", dbname=url.database) as conn:
        row = conn.execute("SELECT id FROM imgsearch.models WHERE active").fetchone()
        assert row is not None
        model_id = int(row[0])
        conn.execute(f"DROP INDEX IF EXISTS imgsearch.{vector_index.index_name(model_id)}")
        rebuild = [str(r[0]) for r in conn.execute(RESTORE).fetchall()] if restore else []
        if bare:
            conn.execute(BARE)
        conn.commit()
        register_vector(conn)
        file = pq.ParquetFile(path)
        start = time.perf_counter()
        with conn.cursor().copy(
            "COPY imgsearch.products (id, tenant, product_id, category, price, attributes) "
            "FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "text", "text", "text", "numeric", "jsonb"])
            row_id = 0
            columns = ["tenant", "product_id", "category", "price", "attributes"]
            for batch in file.iter_batches(batch_size=4096, columns=columns):
                values = {name: batch.column(name).to_pylist() for name in columns}
                for i in range(batch.num_rows):
                    row_id += 1
                    copy.write_row(
                        (row_id, values["tenant"][i], values["product_id"][i], values["category"][i],
                         Decimal(str(values["price"][i])), raw_json(values["attributes"][i]))
                    )  # fmt: skip
        with conn.cursor().copy(
            "COPY imgsearch.images (id, product_pk, tenant, sha256, state) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "int8", "text", "bytea", "text"])
            for row_id, tenant, vector in numbered_vectors(file):
                copy.write_row((row_id, row_id, tenant, bulk.vector_hash(vector), "ready"))
        if bare:  # each image's link to its product, which the images' trigger writes otherwise (0019)
            with conn.cursor().copy(
                "COPY imgsearch.image_products (image_id, product_pk, tenant) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "int8", "text"])
                for row_id, tenant, _ in numbered_vectors(file):
                    copy.write_row((row_id, row_id, tenant))
        with conn.cursor().copy(
            "COPY imgsearch.embeddings (model_id, image_id, product_pk, tenant, embedding) "
            "FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int2", "int8", "int8", "text", "halfvec"])
            for row_id, tenant, vector in numbered_vectors(file):
                copy.write_row((model_id, row_id, row_id, tenant, HalfVector(vector)))
        conn.commit()
        if rebuild:
            conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (restore,))
            conn.execute(
                "SELECT set_config('max_parallel_maintenance_workers', %s, false)",
                (str(vector_index.auto_parallel_workers()),),
            )
            for statement in rebuild:
                conn.execute(statement)  # DDL the server wrote (pg_get_indexdef), no user value
            for table in ("products", "images", "image_products", "embeddings"):
                conn.execute(f"ALTER TABLE imgsearch.{table} ENABLE TRIGGER ALL")
            conn.commit()
        return time.perf_counter() - start


def plain_index(database_url: str, memory: str, workers: int) -> float:
    url = make_url(database_url)
    with psycopg.connect(
        host=url.query["host"], user="postgres", dbname=url.database, autocommit=True
    ) as conn:
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (memory,))
        conn.execute("SELECT set_config('max_parallel_maintenance_workers', %s, false)", (str(workers),))
        start = time.perf_counter()
        conn.execute(
            f"CREATE INDEX ON plain USING hnsw (embedding halfvec_cosine_ops) "
            f"WITH (m = {vector_index.HNSW_M}, ef_construction = {vector_index.HNSW_EF_CONSTRUCTION})"
        )
        return time.perf_counter() - start


def sizes(database_url: str) -> dict[str, int]:
    url = make_url(database_url)
    with psycopg.connect(host=url.query["host"], user="postgres", dbname=url.database) as conn:
        rows = conn.execute(
            "SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname IN ('imgsearch', 'public') AND c.relkind IN ('r', 'i')"
        ).fetchall()
    return {name: size for name, size in rows}


def add_many_rate(database_url: str, path: Path, sample: int) -> float:
    """Rows/s of add_many on the first ``sample`` rows, 1,000 at a time."""
    with Catalog.open(database_url, settings=Settings()) as catalog:
        rows: list[dict[str, Any]] = []
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            vectors = batch.column("embedding").flatten().to_numpy().reshape(batch.num_rows, DIM)
            meta = batch.drop_columns(["embedding"]).to_pylist()
            for vector, row in zip(vectors, meta, strict=True):
                row["attributes"] = json.loads(row["attributes"])
                rows.append({**row, "embedding": vector})
                if len(rows) == sample:
                    break
            if len(rows) == sample:
                break
        start = time.perf_counter()
        for offset in range(0, sample, 1000):
            catalog.add_many(rows[offset : offset + 1000], progress=False)
        return sample / (time.perf_counter() - start)


def imgsearch_import(
    database_url: str, path: Path, settings: Settings, memory: str, workers: int
) -> tuple[bulk.ImportResult, float]:
    """The import of the file into an empty catalog, and the seconds of the whole call (its
    ANALYZE and the binary codes' check after the build included)."""
    with Catalog.open(database_url, settings=settings) as catalog:
        start = time.perf_counter()
        result = catalog.import_report(
            path, progress=sys.stderr.isatty(), maintenance_work_mem=memory, parallel_workers=workers
        )
        return result, time.perf_counter() - start


def imports_only(path: Path, settings: Settings, memory: str, workers: int, rounds: int) -> None:
    loads, builds, walls = [], [], []
    for n in range(rounds):
        url = fresh_database(settings.home, "bench_import_imgsearch")
        result, wall = imgsearch_import(url, path, settings, memory, workers)
        loads.append(result.load_seconds)
        builds.append((result.build_seconds or 0) + (result.set_aside_build_seconds or 0))
        walls.append(wall)
        print(f"    round {n + 1}: load {loads[-1]:.2f} s, builds {builds[-1]:.1f} s, the whole call {wall:.1f} s", flush=True)
    drop_database(settings.home, "bench_import_imgsearch")
    print(
        f"median of {rounds}: load {statistics.median(loads):.2f} s, builds {statistics.median(builds):.1f} s, "
        f"the whole call {statistics.median(walls):.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=20_000, help="rows for the add_many extrapolation")
    parser.add_argument(
        "--file", default=None, help="the Parquet file (default /tmp/imgsearch-bench-<rows>.parquet)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument(
        "--floors-only",
        action="store_true",
        help="only the load's baseline and floors: plain COPY, COPY into imgsearch's tables, "
        "into those tables with their primary keys only, and the same with the rest made after",
    )
    parser.add_argument(
        "--imports-only",
        type=int,
        default=0,
        metavar="N",
        help="only the imgsearch import, N times, each into a database of its own: its load and build "
        "(run it in two checkouts in turns to compare their code)",
    )
    args = parser.parse_args()
    settings = Settings()
    path = Path(args.file or f"/tmp/imgsearch-bench-{args.rows}.parquet")
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        write_file(path, args.rows)
    print(f"file: {path.stat().st_size / 1024**2:.0f} MiB", flush=True)
    memory = bulk.auto_maintenance_work_mem(args.rows, DIM)
    workers = vector_index.auto_parallel_workers()
    if args.imports_only:
        imports_only(path, settings, memory, workers, args.imports_only)
        return

    print("1a. plain COPY ...", flush=True)
    plain_url = fresh_database(settings.home, "bench_import_plain")
    copy_seconds = plain_copy(plain_url, path)
    print(f"    {copy_seconds:.1f} s", flush=True)

    print("1b. imgsearch's schema floor: COPY into its tables ...", flush=True)
    floor_url = fresh_database(settings.home, "bench_import_floor")
    floor_seconds = schema_floor(floor_url, path, settings)
    drop_database(settings.home, "bench_import_floor")
    print(f"    {floor_seconds:.1f} s", flush=True)

    if args.floors_only:
        bare_url = fresh_database(settings.home, "bench_import_bare")
        bare_seconds = schema_floor(bare_url, path, settings, bare=True)
        print(f"    primary keys only: {bare_seconds:.1f} s", flush=True)
        deferred_url = fresh_database(settings.home, "bench_import_deferred")
        deferred_seconds = schema_floor(deferred_url, path, settings, bare=True, restore=memory)
        print(f"    primary keys only, the rest made after: {deferred_seconds:.1f} s", flush=True)
        for name in ("bench_import_bare", "bench_import_deferred", "bench_import_plain"):
            drop_database(settings.home, name)
        rows = args.rows
        print(f"\n| {rows:,} rows x {DIM} | seconds | rows/s | plain COPY / this |")
        print("|---|---|---|---|")
        for what, seconds in (
            ("plain COPY into one pgvector table", copy_seconds),
            ("COPY into imgsearch's tables", floor_seconds),
            ("COPY into imgsearch's tables, primary keys only", bare_seconds),
            ("the same, then every other index, constraint and trigger made", deferred_seconds),
        ):
            print(f"| {what} | {seconds:.1f} | {rows / seconds:,.0f} | {copy_seconds / seconds:.2f}x |")
        return

    print("1c. imgsearch import ...", flush=True)
    import_url = fresh_database(settings.home, "bench_import_imgsearch")
    result, wall = imgsearch_import(import_url, path, settings, memory, workers)
    print(f"    {result}; the whole call {wall:.1f} s", flush=True)

    print(f"2. plain CREATE INDEX ({memory}, {workers} parallel workers) ...", flush=True)
    index_seconds = plain_index(plain_url, memory, workers)
    print(f"    {index_seconds:.1f} s", flush=True)
    plain_sizes, import_sizes = sizes(plain_url), sizes(import_url)

    print(f"3. add_many of {args.sample} rows ...", flush=True)
    sample_url = fresh_database(settings.home, "bench_import_add_many")
    rate = add_many_rate(sample_url, path, args.sample)
    print(f"    {rate:.0f} rows/s", flush=True)

    if not args.keep:
        for name in ("bench_import_plain", "bench_import_imgsearch", "bench_import_add_many"):
            drop_database(settings.home, name)

    rows = args.rows
    filters_build = result.set_aside_build_seconds or 0
    total = result.load_seconds + (result.build_seconds or 0) + filters_build
    extrapolated = rows / rate
    print()
    print(f"| {rows:,} rows x {DIM} | plain pgvector | imgsearch import | ratio | target |")
    print("|---|---|---|---|---|")
    print(
        f"| load | {copy_seconds:.0f} s, {rows / copy_seconds:,.0f} rows/s | {result.load_seconds:.0f} s, {rows / result.load_seconds:,.0f} rows/s | **{copy_seconds / result.load_seconds:.2f}x** | >= 0.8x |"
    )
    print(
        f"| load, floor of the schema | | COPY into imgsearch's tables: {floor_seconds:.0f} s, {rows / floor_seconds:,.0f} rows/s | {copy_seconds / floor_seconds:.2f}x | |"
    )
    print(
        f"| HNSW build | {index_seconds:.0f} s (`CREATE INDEX`) | {result.build_seconds or 0:.0f} s (`CONCURRENTLY`) | **{(result.build_seconds or 0) / index_seconds:.2f}x** | <= 1.2x |"
    )
    print(
        f"| search indexes set aside, built after | | {filters_build:.1f} s (`CONCURRENTLY`) | | |"
    )
    print(
        f"| total | add_many: {extrapolated / 60:.0f} min ({rate:.0f} rows/s on {args.sample:,}) | {total / 60:.1f} min | **{extrapolated / total:.1f}x faster** | >= 20x |"
    )
    plain = copy_seconds + index_seconds
    print(
        f"| total against plain COPY + plain build ({plain:.0f} s) | | {total:.0f} s | **{total / plain:.2f}x** | <= 1.3x |"
    )
    print(
        f"| the import's whole call (its ANALYZE and codes' check too) | | {wall:.0f} s | {wall / plain:.2f}x | |"
    )
    print(
        f"| at equal builds: plain COPY + the import's build ({copy_seconds + (result.build_seconds or 0):.0f} s) "
        f"| | {total:.0f} s | {total / (copy_seconds + (result.build_seconds or 0)):.2f}x | |"
    )
    print(f"| the floor + the plain build | {floor_seconds + index_seconds:.0f} s | | {(floor_seconds + index_seconds) / plain:.2f}x | |")
    print()
    print(f"build settings: maintenance_work_mem {memory}, {workers} parallel workers")
    plain_table = plain_sizes.get("plain", 0)
    print(
        f"sizes: plain table {plain_table / 1024**2:.0f} MiB; imgsearch "
        + ", ".join(
            f"{name} {size / 1024**2:.0f} MiB"
            for name, size in sorted(import_sizes.items(), key=lambda kv: -kv[1])[:8]
        )
    )


if __name__ == "__main__":
    main()
