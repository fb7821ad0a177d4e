"""What each part of a bulk import's writes costs: its phases, and the embeddings' insert with each
table part turned off in turn (issue 72: "say what each table and column an import now writes
costs").

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/ingest/import_costs.py --rows 100000

1. **Phases.** ``catalog.import_report`` of ``--rows`` 768-d vectors (clustered, as
   bench/search/search.py's; one product each, 100 categories, a price and an attribute) into an
   empty catalog, timed from its own log: staging (each row checked, binary ``COPY`` into a
   temporary table), products, choosing the new rows, then images, links and embeddings
   together, and the HNSW build after.
2. **The embeddings' insert, part by part.** The import's rows copied aside, then, in a
   transaction rolled back each time (the HNSW index dropped in it, as the import drops it), the
   table emptied and the same ``INSERT ... SELECT`` timed: as the import runs it (each row with
   its product's category and price, migration 0048), and with one part off or on: the facet
   counts' statement trigger (migration 0039), the filter columns' recheck (0046), the filter
   columns not given (as other writers write: the row trigger reads each row's product), the index
   carrying the binary codes (0043), the code column with it, every secondary index, every
   trigger, every trigger and foreign key (``session_replication_role = replica``), and the
   floor: primary key only, nothing else; what migration 0050 dropped, put back (the product's
   key, the ``image_id`` index, each and both); and with the server's ``work_mem`` rather than the
   import's (its sort and the rows the statement triggers read spill to temporary files). The
   variants run in turns, each round starting at the next one, ``--rounds`` times; the median is
   reported, with what the part costs (the insert as imported, less the insert
   without it).
3. **The images' insert, part by part**, the same way (the table emptied with what references
   it): as imported, without the webhook trigger (migration 0037's row trigger made a shop
   without endpoints pay a call per image; 0047's statement trigger one probe), without the link
   trigger (0019: each new image's first link), without any trigger, and without triggers and
   foreign keys.
4. **The products' upsert, part by part**, the import's own statement from a copy of its
   products: as imported, without the text indexes (full text and trigrams), without the
   attributes' index, without the single-column indexes that serve filters naming no tenant,
   without those of a shop's filters, without any index but the keys, and the floor: the keys
   only, no trigger or foreign key.

``--phases-only``: step 1 alone (a minute at 100k rows).

Run as the embedded server's superuser (it turns foreign keys off); the database
``bench_import_costs`` is dropped after (``--keep`` keeps it).

The figure it produces: docs/benchmarks.md, "Bulk import" (what each part costs).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import make_url

sys.path.insert(0, str(Path(__file__).parents[1]))
from _data import clustered, fresh_database

from imgsearch import Catalog
from imgsearch.db import embedded
from imgsearch.ingest import bulk, bulk_statements
from imgsearch.settings import Settings

DIM = 768
INDEXES = (
    "embeddings_category_price_idx",
    "embeddings_price_idx",
    "embeddings_product_pk_idx",
    "embeddings_tenant_category_price_idx",
)
OFF = "ALTER TABLE imgsearch.embeddings DISABLE TRIGGER"
# what migration 0050 dropped: a key the image's and the link's imply, an index the primary key's prefix is
PRODUCT_KEY = (
    "ALTER TABLE imgsearch.embeddings ADD CONSTRAINT embeddings_product_fkey "
    "FOREIGN KEY (product_pk, tenant) REFERENCES imgsearch.products (id, tenant) ON DELETE CASCADE"
)
IMAGE_ID_INDEX = "CREATE INDEX embeddings_image_id_idx ON imgsearch.embeddings (image_id)"


def drop(indexes: tuple[str, ...]) -> str:
    """The statement dropping ``indexes`` of imgsearch's schema (the script's own names)."""
    return "DROP INDEX " + ", ".join(f"imgsearch.{i}" for i in indexes)


VARIANTS: dict[str, str] = {
    "as the import writes them": "",
    "facet counts' trigger off (0039)": f"{OFF} embeddings_facets_added",
    "filter columns' recheck off (0046)": f"{OFF} embeddings_filters_rechecked",
    "filter columns not given: the row trigger looks each product up (before 0048)": "",
    "index carrying the codes dropped (0043)": "DROP INDEX imgsearch.embeddings_tenant_category_price_idx",
    "code column dropped, with that index": "ALTER TABLE imgsearch.embeddings DROP COLUMN code CASCADE",
    "every secondary index dropped": drop(INDEXES),
    "every trigger off": f"{OFF} USER",
    "every trigger and foreign key off": "SET LOCAL session_replication_role = replica",
    "the product's key and the image_id index back (before 0050)": f"{PRODUCT_KEY}; {IMAGE_ID_INDEX}",
    "the product's key back": PRODUCT_KEY,
    "the image_id index back": IMAGE_ID_INDEX,
    "the server's work_mem (4MB): the sort and the statement triggers' rows spill": "SET LOCAL work_mem TO DEFAULT",
    "floor: primary key only": f"SET LOCAL session_replication_role = replica; {drop(INDEXES)}",
}
# as the import writes them: each row with its product's filter columns (migration 0048)
INSERT = (
    "INSERT INTO imgsearch.embeddings (model_id, image_id, product_pk, tenant, category, price, embedding) "
    "SELECT model_id, image_id, product_pk, tenant, category, price, embedding FROM imgsearch_costs_rows "
    "ORDER BY image_id"
)
# as other writers do: the row trigger (``embeddings_product_filters_added``) reads each product
LOOKED_UP = {
    "filter columns not given: the row trigger looks each product up (before 0048)": (
        "INSERT INTO imgsearch.embeddings (model_id, image_id, product_pk, tenant, embedding) "
        "SELECT model_id, image_id, product_pk, tenant, embedding FROM imgsearch_costs_rows ORDER BY image_id"
    )
}
IMAGE_OFF = "ALTER TABLE imgsearch.images DISABLE TRIGGER"
IMAGE_VARIANTS: dict[str, str] = {
    "as the import writes them": "",
    "webhook trigger off (0037, 0047)": f"{IMAGE_OFF} images_webhook_inserted",
    "link trigger off (0019)": f"{IMAGE_OFF} images_link_new",
    "every trigger off": f"{IMAGE_OFF} USER",
    "every trigger and foreign key off": "SET LOCAL session_replication_role = replica",
}
PRODUCT_INDEXES = {
    "text": ("products_search_doc_idx", "products_lexical_text_idx"),
    "attributes": ("products_attributes_idx",),
    "without a tenant": (
        "products_category_idx",
        "products_price_idx",
        "products_product_id_idx",
        "products_updated_at_idx",
    ),
    "with a tenant": (
        "products_tenant_category_idx",
        "products_tenant_price_idx",
        "products_tenant_updated_at_idx",
    ),
}
EVERY_PRODUCT_INDEX = drop(tuple(i for group in PRODUCT_INDEXES.values() for i in group))
PRODUCT_VARIANTS: dict[str, str] = {
    "as the import writes them": "",
    "text indexes dropped (full text, trigrams: 0020, 0025)": drop(PRODUCT_INDEXES["text"]),
    "attributes' index dropped": drop(PRODUCT_INDEXES["attributes"]),
    "indexes for filters without a tenant dropped (category, price, SKU, updated)": drop(
        PRODUCT_INDEXES["without a tenant"]
    ),
    "indexes for a shop's filters dropped (category, price, updated)": drop(PRODUCT_INDEXES["with a tenant"]),
    "every index but the keys dropped": EVERY_PRODUCT_INDEX,
    "floor: the keys only, no trigger or foreign key": f"SET LOCAL session_replication_role = replica; {EVERY_PRODUCT_INDEX}",
}
# the import's own upsert, from a copy of its staged products
PRODUCT_INSERT = bulk_statements.PRODUCTS.replace("FROM imgsearch_import", "FROM imgsearch_costs_products")
IMAGE_COLUMNS = "id, product_pk, tenant, sha256, uri, content, width, height, format, byte_size"
IMAGE_INSERT = (
    f"INSERT INTO imgsearch.images ({IMAGE_COLUMNS}, state) SELECT {IMAGE_COLUMNS}, 'ready' "
    "FROM imgsearch_costs_images ORDER BY id ON CONFLICT (tenant, sha256) DO NOTHING"
)


class Phases(logging.Handler):
    """The import's own log lines ("import: ... at 5.9 s"), with when each came."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.marks: list[tuple[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.marks.append((record.getMessage(), time.perf_counter()))


def rows(n: int) -> list[dict[str, Any]]:
    vectors = clustered(n, DIM, seed=7)
    rng = np.random.default_rng(7)
    return [
        {
            "tenant": "shop",
            "product_id": f"p{i}",
            "category": f"c{i % 100}",
            "price": round(float(rng.uniform(5, 500)), 2),
            "attributes": {"colour": f"c{i % 24}"},
            "embedding": vectors[i],
        }
        for i in range(n)
    ]


def phases(catalog: Catalog, n: int) -> list[tuple[str, float]]:
    """Seconds of each of the import's phases."""
    handler = Phases()
    log = logging.getLogger(bulk.__name__)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    given = rows(n)
    try:
        start = time.perf_counter()
        result = catalog.import_report(given, tenant="shop", progress=False)
    finally:
        log.removeHandler(handler)
    names = {
        "staged": "staging: rows checked, COPY into a temporary table",
        "index dropped": "HNSW index (and search indexes) dropped",
        "products at": "products",
        "new rows chosen": "new rows chosen",
        "images written": "images, links and embeddings",
    }
    out, last = [], start
    for message, at in handler.marks:
        if "indexes built" in message:  # after the load (and its ANALYZE): the build's row below
            continue
        name = next((v for k, v in names.items() if k in message), message)
        out.append((name, at - last))
        last = at
    out.append(("HNSW build (CONCURRENTLY)", result.build_seconds or 0.0))
    out.append(("search indexes set aside, built (CONCURRENTLY)", result.set_aside_build_seconds or 0.0))
    return out


def insert_times(
    url: str,
    rounds: int,
    model_id: int,
    table: str,
    variants: dict[str, str],
    insert: str,
    inserts: dict[str, str] | None = None,
) -> dict[str, list[float]]:
    """Seconds of ``insert`` (or a variant's own, ``inserts``) into an emptied ``table`` (its
    dependants emptied with it) under each of ``variants``' settings, in turns, each rolled back."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT count(*) FROM imgsearch_costs_rows").fetchone()
        work_mem = bulk.import_work_mem(int(rows[0]) if rows else 0, DIM)
        for round_ in range(rounds):
            turn = round_ % len(names)  # each round starts at another variant: none always goes first
            for name in names[turn:] + names[:turn]:
                setup = variants[name]
                with conn.transaction(force_rollback=True):
                    conn.execute(bulk_statements.RAISE_SETTING, {"name": "work_mem", "bytes": work_mem})  # as the import sets it
                    conn.execute(f"DROP INDEX imgsearch.embeddings_hnsw_m{model_id}")
                    conn.execute(f"TRUNCATE imgsearch.{table} CASCADE")
                    for statement in filter(None, setup.split("; ")):
                        conn.execute(statement)  # the script's own DDL, no user value
                    start = time.perf_counter()
                    conn.execute((inserts or {}).get(name, insert))
                    times[name].append(time.perf_counter() - start)
            print(f"  round {round_ + 1}: " + ", ".join(f"{t[-1]:.1f}" for t in times.values()), flush=True)
    return times


def copy_aside(url: str) -> None:
    """The imported images and embeddings rows, copied into tables of their own."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE UNLOGGED TABLE imgsearch_costs_rows AS "
            "SELECT model_id, image_id, product_pk, tenant, category, price, embedding FROM imgsearch.embeddings"
        )
        conn.execute(
            f"CREATE UNLOGGED TABLE imgsearch_costs_images AS SELECT {IMAGE_COLUMNS} FROM imgsearch.images"
        )
        conn.execute(
            "CREATE UNLOGGED TABLE imgsearch_costs_products AS SELECT row_number() OVER () AS ord, tenant, "
            "product_id, category, price, currency, attributes, title, description, brand FROM imgsearch.products"
        )
        conn.execute("VACUUM ANALYZE imgsearch_costs_rows, imgsearch_costs_images, imgsearch_costs_products")
        conn.execute("CHECKPOINT")


def table(title: str, times: dict[str, list[float]]) -> None:
    base = statistics.median(next(iter(times.values())))
    print(f"\n| {title} | median s | what the part costs |")
    print("|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {'' if median == base else f'{base - median:+.2f} s'} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--phases-only", action="store_true", help="only the import's phases (step 1)")
    args = parser.parse_args()
    settings = Settings()
    url = fresh_database(settings.home, "bench_import_costs")
    print(f"1. import of {args.rows:,} rows ...", flush=True)
    with Catalog.open(url, settings=settings) as catalog:
        parts = phases(catalog, args.rows)
        model_id = catalog.registered_model().id
    sa_url = make_url(url)
    conninfo = f"host={sa_url.query['host']} user=postgres dbname={sa_url.database}"
    if args.phases_only:
        print_phases(args.rows, parts)
        drop(settings, args.keep)
        return
    copy_aside(conninfo)
    print(f"2. the embeddings' insert, part by part, {args.rounds} rounds ...", flush=True)
    times = insert_times(conninfo, args.rounds, model_id, "embeddings", VARIANTS, INSERT, LOOKED_UP)
    print(f"3. the images' insert, part by part, {args.rounds} rounds ...", flush=True)
    image_times = insert_times(conninfo, args.rounds, model_id, "images", IMAGE_VARIANTS, IMAGE_INSERT)
    print(f"4. the products' upsert, part by part, {args.rounds} rounds ...", flush=True)
    product_times = insert_times(
        conninfo, args.rounds, model_id, "products", PRODUCT_VARIANTS, PRODUCT_INSERT
    )

    print_phases(args.rows, parts)
    table(f"the embeddings' {args.rows:,} rows written", times)
    table(f"the images' {args.rows:,} rows written", image_times)
    table(f"the products' {args.rows:,} rows upserted", product_times)
    drop(settings, args.keep)


def print_phases(rows: int, parts: list[tuple[str, float]]) -> None:
    load = sum(seconds for name, seconds in parts if not name.endswith("(CONCURRENTLY)"))
    print(f"\n| import of {rows:,} rows, phase | seconds | share of the load |")
    print("|---|---|---|")
    for name, seconds in parts:
        share = "" if name.endswith("(CONCURRENTLY)") else f"{seconds / load:.0%}"
        print(f"| {name} | {seconds:.1f} | {share} |")


def drop(settings: Settings, keep: bool) -> None:
    if keep:
        return
    server = make_url(embedded.ensure_started(settings.home))
    with psycopg.connect(
        host=str(server.query["host"]), user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute("DROP DATABASE IF EXISTS bench_import_costs WITH (FORCE)")


if __name__ == "__main__":
    main()
