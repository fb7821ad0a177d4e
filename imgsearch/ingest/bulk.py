"""Bulk import of existing embeddings: rows checked as uploads are, loaded with binary ``COPY``,
made visible in one transaction, the HNSW index built after the load when that is faster.

``add_many`` costs ~6 ms a row of bring-your-own vectors, almost all of it the HNSW index taking
each row in. A catalog moving over from another system brings millions. Here:

1. Each row is checked as ``add_many`` checks it (:func:`imgsearch.ingest.rows.prepare_row`) while it is
   copied, in pgvector's binary form, into a temporary table of the import's transaction. A bad row
   fails the import with its place (``file.parquet:5000``); nothing was made visible.
2. When the import's new rows at least double the model's indexed rows (10,000 or more), the
   model's HNSW index is dropped (``DROP INDEX CONCURRENTLY``) before the rows go in, and built
   again after (``CREATE INDEX CONCURRENTLY``, with ``maintenance_work_mem`` and parallel workers
   set for the build). Searches keep working meanwhile, exactly: without the index an ORDER BY
   of the distance is a scan of every row. The indexes only searches read of each table they at
   least double (embeddings, every model's; products) are set aside the same way and built
   first (:mod:`imgsearch.db.load_indexes`).
3. One transaction writes products (merged like ``add_many``'s: a product's rows each give what
   they give, the fields given replace the stored ones, attributes are merged), images and
   embeddings from the temporary table, and commits. Its ``work_mem`` is sized to the rows
   (:func:`import_work_mem`, never below the server's, for the transaction only): the embeddings'
   sort and the rows their statement triggers read stay in memory rather than spill to temporary
   files. Its ``temp_buffers`` too (:data:`IMPORT_TEMP_BUFFERS`): the staged rows and the tables
   chosen from them are read from the session's own buffers rather than written out and read back.

An interrupted import leaves nothing visible (the transaction never committed) or, interrupted
during the index build, the rows and an invalid index, which the next import or
``imgsearch model reindex`` builds again. Running it again is safe: an image is identified by the
hash of its bytes, or of its vector when it has none, so rows already stored are counted as
duplicates, as ``add`` does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import Engine

from imgsearch.access import tenancy
from imgsearch.db import citus, filter_indexes, load_indexes, vector_index
from imgsearch.db.engine import apply_settings, connect
from imgsearch.db.models import SCHEMA
from imgsearch.errors import ImgSearchError, InvalidInput, TransientError
from imgsearch.ingest import bulk_statements as statements
from imgsearch.ingest import checks, images, vectors
from imgsearch.ingest.rows import prepare_row
from imgsearch.records import ModelInfo

log = logging.getLogger(__name__)

CHECK_BATCH = 1024  # rows whose vectors are checked in one numpy pass
REBUILD_MIN_ROWS = 10_000  # below this, inserting into the index costs less than building one
MAX_AUTO_MAINTENANCE_MEM = 8 * 1024**3
MAX_IMPORT_WORK_MEM = 256 * 1024**2  # a sort or hash of the import's writes (a few may run at once)
# the session's buffers for its temporary tables (taken as they fill: a small import takes little);
# the server's default, 8 MB, writes 100k staged rows (200 MB) out to files and reads them back
IMPORT_TEMP_BUFFERS = 256 * 1024**2
HASH_PREFIX = b"imgsearch vector\0"  # an imported vector's hash can't equal an image file's

# where a row came from, for errors ("file.parquet:5000", "row 12")
Source = Iterable[tuple[str, Mapping[str, Any]]]


@dataclass
class ImportResult:
    rows: int  # rows read and checked
    imported: int  # new images (with their embeddings)
    duplicates: int  # rows whose content the tenant had already, or that repeat another row
    index: str  # "kept": the rows went into the index as they were written; "rebuilt"
    load_seconds: float
    build_seconds: float | None = None
    maintenance_work_mem: str | None = None  # the build's settings, when it was rebuilt
    parallel_workers: int | None = None
    value_indexes: int = 0  # per-value indexes built after the load (imgsearch.db.filter_indexes)
    linked: int = 0  # of the duplicates, rows whose stored image is now their product's too (shared)
    set_aside_build_seconds: float | None = None  # the search indexes set aside for the load, built after


def vector_hash(vector: np.ndarray) -> bytes:
    """The content hash of an image that is only a vector: its float32 values, little-endian."""
    digest = hashlib.sha256(HASH_PREFIX)
    digest.update(np.ascontiguousarray(vector, dtype="<f4").data)
    return digest.digest()


def auto_maintenance_work_mem(rows: int, dim: int) -> str:
    """Memory for building an HNSW graph of ``rows`` ``dim``-d halfvecs in one go: the vectors,
    their neighbour lists and some room; a graph that doesn't fit builds many times slower."""
    per_row = dim * 2 + 2 * vector_index.HNSW_M * 2 * 6 + 64
    wanted = min(MAX_AUTO_MAINTENANCE_MEM, max(64 * 1024**2, int(rows * per_row * 1.3)))
    return f"{-(-wanted // 1024**2)}MB"


def import_work_mem(rows: int, dim: int) -> int:
    """Bytes of ``work_mem`` for the import's writes: room for its rows' vectors, so that the
    sort of the embeddings' insert and the rows its statement triggers read (their transition
    tables) stay in memory rather than spill to temporary files; at most 256 MiB."""
    return min(MAX_IMPORT_WORK_MEM, int(rows * (dim * 2 + 512) * 1.25))


def import_rows(
    engine: Engine,
    model: ModelInfo,
    source: Source,
    *,
    limits: images.Limits,
    tenant: str | None = None,
    rebuild_index: bool | None = None,
    maintenance_work_mem: str | None = None,
    parallel_workers: int | None = None,
    progress: bool | None = False,
) -> ImportResult:
    """Import rows of embeddings (``source``: each row with where it came from) for ``model``;
    ``tenant`` for rows that name none (a row naming another tenant is refused).
    ``rebuild_index``: True, False, or None to decide by size (see the module's doc)."""
    from pgvector.psycopg import register_vector
    from tqdm import tqdm

    progress = sys.stderr.isatty() if progress is None else progress
    started = time.perf_counter()
    if tenant is not None:
        tenant = checks.identifier(tenant, "tenant")
    conn = connect(engine.url, "for the import", autocommit=False)
    dropped = set_aside = False
    try:
        register_vector(conn)
        vector_index.copy_encoded_halfvecs(conn)
        with conn.transaction():
            # the build's settings the caller chose, refused before anything is read or dropped
            # (tried for this transaction only; the builds set them on their own connections)
            chosen = {"maintenance_work_mem": maintenance_work_mem, "max_parallel_maintenance_workers": parallel_workers}
            apply_settings(conn, {k: str(v) for k, v in chosen.items() if v is not None}, local=True)
            # the tenant's row-level security, as for add_many; on a Citus coordinator the rows go
            # to the shards through COPY, which row-level security refuses: there the import runs
            # as the catalog's login, and only the check of each row's tenant (_checked) holds it
            if tenant is not None and not _on_citus(conn):
                conn.execute(
                    "SELECT set_config('role', %s, true), set_config('imgsearch.tenant', %s, true)",
                    (tenancy.APP_ROLE, tenant),
                )
            _raise_temp_buffers(conn)
            conn.execute(statements.STAGE.format(dim=int(model.dim)))
            with (
                tqdm(desc="loading", unit="row", disable=not progress) as bar,
                conn.cursor().copy(statements.COPY) as copy,
            ):
                copy.set_types(statements.TYPES)
                count = 0
                for count, values in enumerate(_checked(source, model.dim, limits, tenant), start=1):
                    copy.write_row(values)
                    if count % 1000 == 0:
                        bar.update(1000)
                bar.update(count % 1000)
            if count == 0:
                return ImportResult(0, 0, 0, "kept", time.perf_counter() - started)
            conn.execute(statements.RAISE_SETTING, {"name": "work_mem", "bytes": import_work_mem(count, model.dim)})
            conn.execute(statements.EXISTING)
            indexed = _indexed_rows(conn, model)
            new = count  # at most
            if rebuild_index is None:
                fresh = conn.execute(statements.NEW_CONTENTS).fetchone()
                new = int(fresh[0]) if fresh else 0
                rebuild = new >= REBUILD_MIN_ROWS and new >= indexed
            else:
                rebuild = rebuild_index
            log.info(
                "import: %d rows staged in %.1f s; %d indexed", count, time.perf_counter() - started, indexed
            )
            if rebuild:
                # before anything is written: a changed price reaches embeddings through a trigger,
                # and a transaction holding a lock on them would keep this drop waiting on itself.
                # On a connection of its own, it waits only for the searches running now
                vector_index.drop_index_concurrently(engine, model)
                dropped = True
                # the per-value graphs too: each of their rows is an insert into a graph as well
                filter_indexes.drop_all(engine, model)
                if not _on_citus(conn):  # and the search indexes of the tables it at least doubles
                    set_aside = bool(load_indexes.set_aside(engine, new))
                log.info("import: index dropped at %.1f s", time.perf_counter() - started)
            _check_products_agree(conn)
            conn.execute(statements.PRODUCTS)
            log.info("import: products at %.1f s", time.perf_counter() - started)
            for statement in statements.KEEP.split(";\n"):
                conn.execute(statement)
            log.info("import: new rows chosen at %.1f s", time.perf_counter() - started)
            imported = conn.execute(statements.WRITE).rowcount
            for statement in statements.LINK.split(";\n"):
                conn.execute(statement)
            links = conn.execute("SELECT count(*) FROM imgsearch_links").fetchone()
            _lock_linked(conn)
            for statement in statements.EMBED.split(";\n"):
                conn.execute(statement, {"model": int(model.id)} if "%(model)s" in statement else None)
            log.info("import: %d images written at %.1f s", imported, time.perf_counter() - started)
        load_seconds = time.perf_counter() - started
    except psycopg.OperationalError as exc:
        if dropped:
            _build_index_after_failure(engine, model)
        raise TransientError(
            f"the import was interrupted ({str(exc).strip().splitlines()[0]}); run it again"
        ) from exc
    except BaseException:
        if dropped:
            _build_index_after_failure(engine, model)
        raise
    finally:
        conn.close()
    if imported:
        _analyze(engine)
    result = ImportResult(count, imported, count - imported, "rebuilt" if rebuild else "kept", load_seconds)
    # the search indexes set aside, or one an interrupted import left missing or invalid
    restored = load_indexes.restore(
        engine, maintenance_work_mem=maintenance_work_mem or auto_maintenance_work_mem(indexed + imported, model.dim)
    )
    if set_aside or restored.names:
        result.set_aside_build_seconds = restored.seconds
        log.info("import: set-aside indexes built in %.1f s", restored.seconds)
    result.linked = int(links[0]) if links else 0
    if not rebuild and not vector_index.index_valid(engine, model):
        rebuild = True  # an earlier import's build was interrupted: finish its work
        result.index = "rebuilt"
    if rebuild:
        memory = maintenance_work_mem or auto_maintenance_work_mem(indexed + imported, model.dim)
        workers = vector_index.auto_parallel_workers() if parallel_workers is None else parallel_workers
        result.build_seconds = vector_index.build_index(
            engine, model, maintenance_work_mem=memory, parallel_workers=workers, progress=progress
        )
        result.maintenance_work_mem, result.parallel_workers = memory, workers
    if imported:  # values that grew past their rule's min_rows get their graphs
        try:
            refreshed = filter_indexes.refresh(
                engine,
                model,
                maintenance_work_mem=maintenance_work_mem or auto_maintenance_work_mem(imported, model.dim),
            )
            result.value_indexes = len(refreshed.built)
        except (psycopg.Error, ImgSearchError) as exc:  # the rows are in: report, don't fail the import
            log.warning(
                "per-value indexes not refreshed after the import (%s): run `imgsearch index refresh`", exc
            )
    return result


def _raise_temp_buffers(conn: psycopg.Connection[Any]) -> None:
    """:data:`IMPORT_TEMP_BUFFERS` for this transaction, where the server's own setting is lower.
    The server takes it only before the session first uses a temporary table: a session that did
    (a pooler's connection handed over again) keeps its setting."""
    try:
        with conn.transaction():  # a savepoint: a refusal leaves the import's transaction as it was
            conn.execute(statements.RAISE_SETTING, {"name": "temp_buffers", "bytes": IMPORT_TEMP_BUFFERS})
    except psycopg.errors.InvalidParameterValue as exc:
        log.info("import: temp_buffers kept (%s)", str(exc).strip().splitlines()[0])


def _on_citus(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(citus.IS_COORDINATOR).fetchone()
    return bool(row and row[0])


def _lock_linked(conn: psycopg.Connection[Any]) -> None:
    """Wait for any worker storing an image stored before and linked now: it holds the image's
    row until it commits, and then its embeddings are there to copy to the new links. A tenant's
    images at a time (Citus locks rows only in a statement of one tenant)."""
    linked = conn.execute(
        "SELECT tenant, array_agg(DISTINCT image_id ORDER BY image_id) FROM imgsearch_gained GROUP BY 1 ORDER BY 1"
    ).fetchall()
    for tenant, ids in linked:
        conn.execute(
            f"SELECT 1 FROM {SCHEMA}.images WHERE tenant = %s AND id = ANY(%s) ORDER BY id FOR SHARE", (tenant, ids)
        )


def _checked(
    source: Source, dim: int, limits: images.Limits, tenant: str | None
) -> Iterator[tuple[Any, ...]]:
    """Each row checked as ``add_many`` checks it, as the values of a staging row. Vectors are
    checked and normalised a batch at a time (one numpy pass), rows one at a time."""
    rows = enumerate(iter(source))
    while batch := list(islice(rows, CHECK_BATCH)):
        matrix = vectors.as_vectors(
            [row.get("embedding") if isinstance(row, Mapping) else None for _, (_, row) in batch], dim
        )
        if matrix is None:  # a bad or odd vector among them: each row is checked, and encoded, alone
            for ord_, (where, row) in batch:
                yield _staged(ord_, where, row, dim, limits, tenant, None, None)
            continue
        encoded = vector_index.encoded_halfvecs(matrix)
        for i, (ord_, (where, row)) in enumerate(batch):
            yield _staged(ord_, where, row, dim, limits, tenant, matrix[i], encoded[i])


def _staged(
    ord_: int,
    where: str,
    row: Any,
    dim: int,
    limits: images.Limits,
    tenant: str | None,
    vector: vectors.Vector | None,
    encoded: vector_index.EncodedHalfvec | None,
) -> tuple[Any, ...]:
    try:
        if not isinstance(row, Mapping):
            raise InvalidInput(f"a row must be a mapping of fields, got {type(row).__name__}")
        if tenant is not None:
            given = row.get("tenant")
            if given is not None and str(given).strip() != tenant:
                raise InvalidInput(f"tenant {given!r} differs from the import's tenant {tenant!r}")
            row = {**row, "tenant": tenant}
        if row.get("embedding") is None:
            raise InvalidInput("each imported row needs an embedding")
        prepared = prepare_row(row, dim=dim, limits=limits, vector=vector)
    except ImgSearchError as exc:
        exc.at_row(ord_, where)
        raise
    assert prepared.embedding is not None
    info = prepared.info
    return (
        ord_,
        prepared.tenant,
        prepared.product_id,
        prepared.category,
        prepared.price,
        prepared.currency,
        prepared.attributes or None,
        prepared.uri,
        prepared.content,
        info.sha256 if info else vector_hash(prepared.embedding),
        info.width if info else None,
        info.height if info else None,
        info.format if info else None,
        info.byte_size if info else None,
        encoded if encoded is not None else vector_index.encoded_halfvecs(prepared.embedding[np.newaxis, :])[0],
        where,
        prepared.title,
        prepared.description,
        prepared.brand,
    )


def _check_products_agree(conn: psycopg.Connection[Any]) -> None:
    """:class:`InvalidInput` naming both rows when two rows give one product different values."""
    found = conn.execute(statements.DISAGREEING).fetchone()
    if found is None:
        return
    ord_, origin, first_origin, product_id, tenant, field_name, value, first_value = found
    raise InvalidInput(
        f"{field_name} of product {product_id!r} of tenant {tenant!r} is {_json(value)} here, "
        f"but {_json(first_value)} in {first_origin}"
    ).at_row(ord_, origin)


def _json(value: Any) -> str:  # a price as written (9, not 9.0000), anything else as JSON
    return checks.shown(Decimal(str(value))) if type(value) in (int, float) else json.dumps(value)


def _indexed_rows(conn: psycopg.Connection[Any], model: ModelInfo) -> int:
    """The planner's count of the model's index entries (free: no scan); 0 without an index."""
    row = conn.execute(
        "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(%s)",
        (f"{SCHEMA}.{vector_index.index_name(model.id)}",),
    ).fetchone()
    return int(row[0]) if row else 0


# the tables an import fills, its triggers' included
ANALYZED = ("products", "images", "image_products", "embeddings", "facet_members", "facet_counts")


def _analyze(engine: Engine) -> None:
    """Fresh statistics for the planner: after a bulk load its estimates of the tables are off by
    the load (it would scan every row rather than use the HNSW index, or sort every link to join
    a few), until autovacuum comes by."""
    with connect(engine.url, "to analyze the imported rows") as conn:
        conn.execute("ANALYZE " + ", ".join(f"{SCHEMA}.{table}" for table in ANALYZED))


def _build_index_after_failure(engine: Engine, model: ModelInfo) -> None:
    try:
        load_indexes.restore(engine)
        vector_index.build_index(
            engine, model, maintenance_work_mem=None, parallel_workers=None, progress=False
        )
        filter_indexes.refresh(engine, model)
    except Exception as exc:  # the import's own error is the one to report
        log.error(
            "the HNSW index of %s is missing after a failed import (%s): run `imgsearch model reindex`",
            model.name,
            exc,
        )
