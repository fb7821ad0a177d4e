"""Per-model embedding registration and HNSW indexes.

All models share ``imgsearch.embeddings``, whose column has no fixed dimension. Each model gets a
partial expression index, the pattern pgvector documents for mixed dimensions::

    CREATE INDEX embeddings_hnsw_m1 ON imgsearch.embeddings
        USING hnsw ((embedding::halfvec(768)) halfvec_cosine_ops) WHERE model_id = 1

A query uses it when it orders by ``embedding::halfvec(768) <=> q`` with ``model_id = 1`` written
as a literal (see :func:`model_filter`); the index expression also makes PostgreSQL reject a
vector of the wrong dimension for that model.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from pgvector.sqlalchemy import HALFVEC
from psycopg.adapt import AdaptersMap, Dumper
from psycopg.pq import Format
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Engine,
    bindparam,
    cast,
    exists,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.types import UserDefinedType

from imgsearch.db.engine import apply_settings, connect, stop_when_client_gone
from imgsearch.db.models import SCHEMA, Embedding, Model
from imgsearch.errors import ConfigurationError, InvalidInput, TransientError
from imgsearch.records import ModelInfo

HNSW_M = 16
# pgvector's default of 64 left 1-2 of bench/search/search.py's 200 clusters out of an ef_search 200
# search's reach in each of 4 builds (those queries found 0 of their top 10); 128 left none in
# 4 of 4, for writes 1.2x and builds 1.5x as costly (bench/search/index_build.py; m 24 at 64 still missed)
HNSW_EF_CONSTRUCTION = 128
# taken exclusively by model switches, shared by every write of embeddings (imgsearch.work.queue)
MODEL_SWITCH_LOCK = 0x696D6775
REGISTER_LOCK = 0x696D6774


INDEX_PREFIX = "embeddings_hnsw_m"  # a model's HNSW index: this and its id


def index_name(model_id: int) -> str:
    return f"{INDEX_PREFIX}{int(model_id)}"


def create_statement(model_id: int, dim: int, *, concurrently: bool = False) -> str:
    """The model's HNSW index's ``CREATE INDEX`` (ids and dims are integers from our own table)."""
    model_id, dim = int(model_id), int(dim)
    if not 1 <= dim <= 4000:
        raise InvalidInput(f"dimension {dim} is outside 1..4000 (pgvector's halfvec HNSW limit)")
    how = "CONCURRENTLY" if concurrently else "IF NOT EXISTS"
    return (
        f"CREATE INDEX {how} {index_name(model_id)} ON {SCHEMA}.embeddings "
        f"USING hnsw ((embedding::halfvec({dim})) halfvec_cosine_ops) "
        f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) WHERE model_id = {model_id}"
    )


def create_index(conn: Connection, model_id: int, dim: int) -> None:
    """Create the model's HNSW index if missing, in the caller's transaction."""
    conn.execute(text(create_statement(model_id, dim)))


def indexed_rows(conn: Connection, model_id: int) -> int:
    """The planner's estimate of the rows in the model's HNSW index (``pg_class.reltuples``, kept
    by VACUUM, ANALYZE and index builds; free to read), 0 when unknown or there is no index."""
    found = conn.execute(
        text("SELECT reltuples FROM pg_catalog.pg_class WHERE oid = to_regclass(:name)"),
        {"name": f"{SCHEMA}.{index_name(int(model_id))}"},
    ).scalar()
    return max(0, int(found)) if found is not None else 0


# each registered model's HNSW index: "valid"; "invalid", a build that was interrupted (an import
# or rebuild killed during its CREATE INDEX CONCURRENTLY); or "missing". Without a valid one, the
# model's searches stay exact but scan every row: `imgsearch model reindex` builds it again
_INDEX_STATES = text(
    f"""SELECT m.name, CASE WHEN i.indisvalid THEN 'valid' WHEN i.indexrelid IS NULL THEN 'missing'
                           ELSE 'invalid' END
        FROM {SCHEMA}.models m
        LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = to_regclass(:prefix || m.id)
        ORDER BY m.id"""
)


def index_states(conn: Connection) -> dict[str, str]:
    """Each registered model's name with the state of its HNSW index: valid, invalid or missing."""
    found = conn.execute(_INDEX_STATES, {"prefix": f"{SCHEMA}.{INDEX_PREFIX}"})
    return {str(row[0]): str(row[1]) for row in found}


def drop_index(conn: Connection, model_id: int) -> None:
    conn.execute(text(f"DROP INDEX IF EXISTS {SCHEMA}.{index_name(int(model_id))}"))


# progress(blocks done, blocks total, phase) while an index builds
Progress = Callable[[int, int, str], None]
PROGRESS_INTERVAL_SECONDS = 0.5


def rebuild_index(
    engine: Engine, model: ModelInfo, *, maintenance_work_mem: str = "1GB", progress: Progress | None = None
) -> float:
    """Rebuild ``model``'s HNSW index with the current :data:`HNSW_M` and
    :data:`HNSW_EF_CONSTRUCTION` while searches and writes go on (``REINDEX CONCURRENTLY``: the
    old index serves until the new one replaces it); returns the seconds taken.

    An index built with other parameters (an older imgsearch's) keeps its graph until rebuilt:
    only later inserts use new parameters. ``maintenance_work_mem`` is the build's memory, in
    PostgreSQL's units (``"1GB"``); a graph that doesn't fit builds far slower. A rebuild that is
    interrupted (cancelled, a timeout) raises :class:`TransientError` and leaves an invalid copy,
    which the next one drops first.

    An index left invalid by an interrupted build is rebuilt the same way; a missing one (an import
    killed between its drop and its build) is built once, by ``CREATE INDEX CONCURRENTLY``.

        rebuild_index(catalog.engine, catalog.active_model)
    """
    name = index_name(model.id)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        stop_when_client_gone(conn)
        try:
            conn.execute(
                text("SELECT set_config('maintenance_work_mem', :m, false)"), {"m": maintenance_work_mem}
            )
        except DBAPIError as exc:
            raise InvalidInput(
                f"maintenance_work_mem must be a size such as '1GB', got {maintenance_work_mem!r}"
            ) from exc
        for leftover in conn.execute(
            text(
                "SELECT c.relname FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
                "WHERE c.relnamespace = CAST(:schema AS regnamespace) AND NOT i.indisvalid "
                "AND c.relname LIKE :prefix"
            ),
            {"schema": SCHEMA, "prefix": f"{name}_ccnew%"},
        ).scalars():
            if re.fullmatch(rf"{name}_ccnew\d*", leftover):  # our own name, safe in the statement
                conn.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {SCHEMA}.{leftover}"))
        # a lost index (an import killed between its drop and its build) is built once, concurrently;
        # one there, valid or left invalid by an interrupted build, is rebuilt in place
        missing = conn.execute(text("SELECT to_regclass(:name)"), {"name": f"{SCHEMA}.{name}"}).scalar() is None
        if not missing:
            conn.execute(
                text(f"ALTER INDEX {SCHEMA}.{name} SET (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})")
            )
        statement = (
            create_statement(model.id, model.dim, concurrently=True)
            if missing
            else f"REINDEX INDEX CONCURRENTLY {SCHEMA}.{name}"
        )
        pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        done = threading.Event()
        watcher = None
        if progress is not None:
            watcher = threading.Thread(target=watch_build, args=(engine, pid, progress, done), daemon=True)
            watcher.start()
        start = time.perf_counter()
        try:
            conn.execute(text(statement))
        except OperationalError as exc:  # cancelled, a timeout, a deadlock with another DDL
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
            raise TransientError(
                f"rebuilding the HNSW index of {model.name} was interrupted ({reason}); the old "
                "index still serves searches: run the rebuild again"
            ) from exc
        finally:
            done.set()
            if watcher is not None:
                watcher.join()
        return time.perf_counter() - start


def watch_build(engine: Engine, pid: int, progress: Progress, done: threading.Event) -> None:
    """Report backend ``pid``'s index build (``pg_stat_progress_create_index``) until ``done``."""
    with engine.connect() as conn:
        while not done.wait(PROGRESS_INTERVAL_SECONDS):
            row = conn.execute(
                text(
                    "SELECT blocks_done, blocks_total, phase FROM pg_stat_progress_create_index "
                    "WHERE pid = :pid"
                ),
                {"pid": pid},
            ).first()
            conn.rollback()  # each look at the view in a snapshot of its own
            if row is not None:
                progress(int(row.blocks_done), int(row.blocks_total), str(row.phase))


def register_model(
    conn: Connection, name: str, dim: int, *, activate: bool = False, external: bool = False
) -> ModelInfo:
    """Add ``name`` to the models table (idempotent) with its index; optionally make it active.
    ``external``: its vectors come from elsewhere (an existing row must say the same)."""
    # concurrent first opens of one catalog serialise here instead of racing on the unique name
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REGISTER_LOCK})
    found = conn.execute(select(Model.id, Model.dim, Model.external).where(Model.name == name)).first()
    if found is None:
        model_id = conn.execute(
            insert(Model).values(name=name, dim=dim, external=external).returning(Model.id)
        ).scalar_one()
    elif found.dim != dim:
        raise InvalidInput(f"model {name!r} is registered with dimension {found.dim}, not {dim}")
    elif found.external != external:
        made = "elsewhere (imgsearch model add)" if found.external else "by imgsearch"
        raise InvalidInput(f"model {name!r} is registered with vectors made {made}")
    else:
        model_id = found.id
    create_index(conn, model_id, dim)
    if activate:
        conn.execute(update(Model).where(Model.active).values(active=False))
        conn.execute(update(Model).where(Model.id == model_id).values(active=True))
    return _model(conn, model_id)


def _model(conn: Connection, model_id: int) -> ModelInfo:
    row = conn.execute(
        select(Model.id, Model.name, Model.dim, Model.active, Model.external, Model.serves_images).where(
            Model.id == model_id
        )
    ).one()
    return ModelInfo(row.id, row.name, row.dim, row.active, row.external, row.serves_images)


def has_embeddings(conn: Connection, model_id: int) -> bool:
    """Whether any image has an embedding of the model (one index probe)."""
    return bool(conn.execute(select(exists().where(Embedding.model_id == model_id))).scalar())


def get_model(conn: Connection, name: str) -> ModelInfo | None:
    row = conn.execute(select(Model.id).where(Model.name == name)).first()
    return None if row is None else _model(conn, row.id)


def active_model(conn: Connection) -> ModelInfo | None:
    row = conn.execute(select(Model.id).where(Model.active)).first()
    return None if row is None else _model(conn, row.id)


def image_model(conn: Connection) -> ModelInfo | None:
    """The model image queries and "more like this" use: the one that serves images when the
    catalog keeps one beside its text model, else the active model."""
    row = conn.execute(select(Model.id).where(Model.serves_images)).first()
    return active_model(conn) if row is None else _model(conn, row.id)


def model_filter(model_id: int) -> ColumnElement[bool]:
    """``embeddings.model_id = <id>`` with the id inlined, so the planner can use the partial index."""
    return Embedding.model_id == literal(int(model_id), literal_execute=True)


def embedding_expr(dim: int) -> ColumnElement[Any]:
    """The indexed expression ``embedding::halfvec(dim)``."""
    return cast(Embedding.embedding, HALFVEC(int(dim)))


class QueryHalfvec(UserDefinedType[Any]):
    """A query vector bound as a halfvec, rounded to float16 first (what halfvec stores), so the
    server gets the very value an exact scan uses.

    ``binary``: bound as a :class:`HalfvecValue`, which psycopg sends in halfvec's binary form:
    microseconds to write and to read, where text takes ~0.2-0.4 ms to print 768 numbers and
    ~0.07 ms for the server to parse them. Only for statements run on a connection prepared by
    :func:`send_binary_queries` (the library's own searches). Statements handed to other code
    (:meth:`Catalog.search_select`) bind text, which every connection can send, printed with the
    5 significant digits that give back the same float16 (~4x faster than pgvector's writer)."""

    cache_ok = True

    def __init__(self, dim: int, binary: bool = False) -> None:
        self.dim = int(dim)
        self.binary = bool(binary)

    def get_col_spec(self, **kw: Any) -> str:
        return f"HALFVEC({self.dim})"

    def bind_processor(self, dialect: Any) -> Callable[[Any], Any]:
        return HalfvecValue if self.binary else halfvec_text


def halfvec_text(value: Any) -> str:
    """``[v1,v2,...]`` for a sequence of numbers, as halfvec reads it back exactly."""
    values = np.asarray(value, dtype=np.float16).astype(np.float32).tolist()
    return "[" + ",".join(map("{:.5g}".format, values)) + "]"


class HalfvecValue:
    """A sequence of numbers rounded to float16, for psycopg to send as a halfvec parameter."""

    __slots__ = ("values",)

    def __init__(self, value: Any) -> None:
        self.values = np.asarray(value, dtype=np.float16)


class EncodedHalfvec(bytes):
    """A halfvec already in pgvector's binary form (:func:`encoded_halfvecs`): what a binary
    ``COPY`` sends of it, on a connection given :func:`copy_encoded_halfvecs`."""


def encoded_halfvecs(matrix: npt.NDArray[np.float32]) -> list[EncodedHalfvec]:
    """Each row of ``matrix`` as ``halfvec_recv`` reads it (see :class:`HalfvecBinaryDumper`),
    rounded to float16 in one numpy pass: ~3 us a row for a bulk import (most of it numpy's
    float16 conversion), where pgvector's ``HalfVector`` and its writer take 7-9 (a conversion
    and two copies of each row)."""
    rows, dim = matrix.shape
    words = np.empty((rows, dim + 2), dtype=">u2")
    words[:, 0], words[:, 1] = dim, 0
    words[:, 2:] = np.asarray(matrix, dtype=">f2").view(">u2")
    data, width = words.tobytes(), (dim + 2) * 2
    return [EncodedHalfvec(data[i * width : (i + 1) * width]) for i in range(rows)]


class EncodedHalfvecDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        encoded: bytes = obj  # sent as it is
        return encoded


def copy_encoded_halfvecs(conn: psycopg.Connection[Any]) -> None:
    """Make ``conn``'s binary ``COPY`` write a halfvec column from :class:`EncodedHalfvec` values
    (a ``COPY`` picks its columns' writers by type, the last registered for it)."""
    info = conn.adapters.types.get("halfvec")  # registered by pgvector's register_vector
    if info is None:
        raise ConfigurationError("halfvec isn't registered on this connection: call pgvector's register_vector first")
    dumper = type("HalfvecCopyDumper", (EncodedHalfvecDumper,), {"oid": info.oid})
    conn.adapters.register_dumper(EncodedHalfvec, dumper)


class HalfvecTextDumper(Dumper):
    """Writes a :class:`HalfvecValue` as text, for cursors that put parameters into the statement
    on the client (Django's). Its type is left unnamed (oid 0), as psycopg leaves a string's: the
    server takes it from the statement (a halfvec beside ``<=>``)."""

    format = Format.TEXT

    def dump(self, obj: Any) -> bytes:
        return halfvec_text(obj.values).encode()


class HalfvecBinaryDumper(Dumper):
    """Writes a :class:`HalfvecValue` as pgvector's ``halfvec_recv`` reads it: the dimension and an
    unused field (big-endian 16-bit integers), then each value as a big-endian float16. Type
    unnamed, as for text: the server reads the bytes with the binary reader of the type it infers."""

    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        values: npt.NDArray[np.float16] = obj.values
        return struct.pack(">HH", values.shape[0], 0) + values.astype(">f2").tobytes()


def send_binary_queries(conn: Connection) -> bool:
    """Let ``conn``'s database connection send :class:`HalfvecValue` parameters (binary, or text
    where its cursors bind on the client); False when its driver isn't psycopg 3, whose
    statements then bind text. Registered on that connection only (the class is imgsearch's own,
    so nothing else changes), once per pooled connection; a borrowed one (Django's) is registered
    each time, a dictionary update."""
    record = conn.connection
    registered = record.info.get("imgsearch_halfvec_dumpers")
    if registered is None:
        adapters = getattr(record.driver_connection, "adapters", None)
        if registered := isinstance(adapters, AdaptersMap):
            adapters.register_dumper(HalfvecValue, HalfvecTextDumper)
            adapters.register_dumper(HalfvecValue, HalfvecBinaryDumper)  # the last one is the default
        record.info["imgsearch_halfvec_dumpers"] = registered
    return bool(registered)


def query_param(query: Any, dim: int, name: str | None = None, binary: bool = False) -> BindParameter[Any]:
    """The query vector as one bound parameter (a statement that uses it twice sends it once);
    ``name`` makes it a named parameter whose value an execution can supply; ``binary``: see
    :class:`QueryHalfvec`."""
    if isinstance(query, BindParameter):
        return query
    return bindparam(name or "query_vector", query, type_=QueryHalfvec(dim, binary), unique=name is None)


def auto_parallel_workers() -> int:
    """Workers beside the leader for a build: one per other core, as PostgreSQL allows at most 7."""
    return max(0, min((os.cpu_count() or 1) - 1, 7))


def index_valid(engine: Engine, model: ModelInfo) -> bool:
    with engine.connect() as conn:
        return index_states(conn).get(model.name) == "valid"


def drop_index_concurrently(engine: Engine, model: ModelInfo) -> None:
    with connect(engine.url, "to drop the index") as conn:
        conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {SCHEMA}.{index_name(model.id)}")


def build_index(
    engine: Engine,
    model: ModelInfo,
    *,
    maintenance_work_mem: str | None,
    parallel_workers: int | None,
    progress: bool,
) -> float:
    """``CREATE INDEX CONCURRENTLY`` of the model's HNSW index (an invalid one left by an
    interrupted build is dropped first); the seconds it took. Searches and writes go on."""
    from tqdm import tqdm

    name = index_name(model.id)
    settings = {
        "maintenance_work_mem": maintenance_work_mem or "1GB",
        "max_parallel_maintenance_workers": str(
            auto_parallel_workers() if parallel_workers is None else parallel_workers
        ),
    }
    conn = connect(engine.url, "to build the index")
    with conn, tqdm(total=0, unit="block", desc="indexing", disable=not progress) as bar:
        apply_settings(conn, settings)
        state = conn.execute(
            "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", (f"{SCHEMA}.{name}",)
        ).fetchone()
        if state is not None and state[0]:
            return 0.0
        if state is not None:  # left invalid by an interrupted build
            conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {SCHEMA}.{name}")
        pid = conn.info.backend_pid
        done = threading.Event()

        def show(blocks: int, total: int, phase: str) -> None:
            bar.total = total
            bar.set_description(phase, refresh=False)
            bar.update(blocks - bar.n)

        watcher = threading.Thread(target=watch_build, args=(engine, pid, show, done), daemon=True)
        if progress:
            watcher.start()
        start = time.perf_counter()
        try:
            conn.execute(create_statement(model.id, model.dim, concurrently=True))
        except psycopg.OperationalError as exc:
            raise TransientError(
                f"building the HNSW index of {model.name} was interrupted ({str(exc).strip().splitlines()[0]}); "
                "searches run exactly until it is built: run `imgsearch model reindex`"
            ) from exc
        finally:
            done.set()
            if progress:
                watcher.join()
        return time.perf_counter() - start
