"""Per-value HNSW graphs: a large category's (or tenant's) own partial HNSW index.

A filter whose rows lie away from the query is the hard case of filtered search: the model's one
graph reaches those rows late, so imgsearch scans them exactly or runs an iterative scan, and that
cost grows with the catalog. pgvector's README recommends partial indexes (or partitions) for
filters on a few values. Here each value of ``category`` (or ``tenant``) with at least
``min_rows`` rows gets::

    CREATE INDEX CONCURRENTLY embeddings_hnsw_m1_category_<hash of the value> ON imgsearch.embeddings
        USING hnsw ((embedding::halfvec(768)) halfvec_cosine_ops) WITH (m = 16, ef_construction = 128)
        WHERE model_id = 1 AND category = 'shoes'

so a search filtered to that value can be an unfiltered search of a graph of its rows only.

* Recall first: HNSW's recall depends on the data, and a graph walk from a query far from all of
  a value's rows can do badly (bench/search/value_graphs.py: 0.63 at ef_search 200 on 10,000 rows of
  isotropic noise). Each graph is checked at its build against an exact search of the value's
  rows (:func:`_probe`), and searches use it only from :data:`MIN_RECALL` up. A graph below it
  is refused: its index is dropped (a statement planned for the value would otherwise pick it,
  and every write would keep it up to date for nothing), and its registry row stays, so that
  the value is tried again only once its rows have grown :data:`RETRY_GROWTH` times.
* Partial indexes rather than list partitions: the table, its keys, its triggers and every query
  stay as they are; a product moving to another category just moves between indexes; values come
  and go without DDL on the table. What partitions would add, a Merge Append over a list of
  categories, PostgreSQL can't build over partial indexes of one table: a list whose categories
  all have a graph tries the model's graph first and, when that comes short, runs one pass of
  each category's graph and merges them (:func:`imgsearch.search.per_value_statement`).
* The planner picks a partial index only when it sees the value at planning time, so a search of
  such a value is planned for its values (:meth:`imgsearch.catalog.Catalog.search` reads
  :func:`indexed_values`), where other searches may run on cached plans.
* PostgreSQL keeps the graphs up to date as rows come and go. :func:`refresh` builds graphs for
  values that have grown past ``min_rows`` and drops those that have shrunk below half of it; the
  import runs it, and so do ``imgsearch index refresh`` and the workers' periodic sweep.
* An index's predicate is DDL, which takes no bind parameters: the value is written into the
  statement as a literal quoted by psycopg (:class:`psycopg.sql.Literal`), the one place where
  imgsearch writes a stored value into SQL text. Names come from a hash of the value.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import psycopg
from psycopg import sql
from sqlalchemy import Connection, Engine, text

from imgsearch.db import binary_codes, vector_index
from imgsearch.db.engine import connect
from imgsearch.db.models import SCHEMA
from imgsearch.errors import InvalidInput, TransientError
from imgsearch.records import ModelInfo

log = logging.getLogger(__name__)

COLUMNS = ("category", "tenant")
MIN_RECALL = 0.98  # a graph finding less of an exact search's top 10 at its build isn't used
PROBES = 12  # queries of that check: rows of other values (queries far from the value), then its own
PROBE_K = 10
REFRESH_LOCK = 0x696D6778  # one refresh at a time (pg_advisory_lock)
DROP_BELOW = 0.5  # a value keeps its graph until it shrinks below this share of min_rows
RETRY_GROWTH = 2  # a value whose graph was refused is tried again once its rows grew this many times


@dataclass
class RefreshResult:
    built: list[tuple[str, str]] = field(default_factory=list)  # (column, value)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    kept: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # built, below MIN_RECALL, dropped
    seconds: float = 0.0
    codes_recall: float | None = None  # the model's binary codes, checked again (imgsearch.db.binary_codes)


class _Registered(NamedTuple):
    """A value's registry row as a refresh reads it, with its index's state."""

    name: str
    valid: bool
    rows: int
    refused: bool  # below MIN_RECALL at its build
    indexed: bool  # its index exists (valid or not)


@dataclass(frozen=True)
class Graph:
    column: str
    value: str
    index_name: str
    rows: int  # the value's rows when the graph was built
    recall: float  # recall@10 of its probes at the build; searches use it from MIN_RECALL up
    valid: bool  # False: no usable index (refused, or an interrupted build: the next refresh rebuilds it)
    size_bytes: int

    @property
    def refused(self) -> bool:
        """Below :data:`MIN_RECALL` at its build: its index is dropped, its row kept."""
        return self.recall < MIN_RECALL


def index_name(model_id: int, column: str, value: str) -> str:
    digest = hashlib.sha256(value.encode()).hexdigest()[:16]
    return f"{vector_index.index_name(model_id)}_{column}_{digest}"


def check_column(column: str) -> str:
    if column not in COLUMNS:
        raise InvalidInput(f"per-value indexes are for {' or '.join(COLUMNS)}, not {column!r}")
    return column


def set_rule(conn: Connection, column: str, min_rows: int | None) -> None:
    """Give ``column``'s values of ``min_rows`` rows or more their own graphs; None removes the
    rule (the next :func:`refresh` drops the column's graphs)."""
    check_column(column)
    if min_rows is None:
        conn.execute(text(f"DELETE FROM {SCHEMA}.filter_index_rules WHERE column_name = :c"), {"c": column})
        return
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 1:
        raise InvalidInput(f"min_rows must be a positive integer, got {min_rows!r}")
    conn.execute(
        text(
            f"INSERT INTO {SCHEMA}.filter_index_rules (column_name, min_rows) VALUES (:c, :n) "
            "ON CONFLICT (column_name) DO UPDATE SET min_rows = excluded.min_rows"
        ),
        {"c": column, "n": min_rows},
    )


def rules(conn: Connection) -> dict[str, int]:
    rows = conn.execute(text(f"SELECT column_name, min_rows FROM {SCHEMA}.filter_index_rules"))
    return {str(column): int(n) for column, n in rows}


_READABLE = text(
    f"SELECT CASE WHEN to_regclass('{SCHEMA}.filter_indexes') IS NULL THEN false "
    f"ELSE has_table_privilege(to_regclass('{SCHEMA}.filter_indexes'), 'SELECT') END"
)


def indexed_values(conn: Connection, model_id: int) -> dict[str, frozenset[str]]:
    """The values whose graph searches use (recall at its build at least :data:`MIN_RECALL`), by
    column; none when the login can't read the registry (checked first: an error would abort a
    transaction the caller shares, as Django's connection is shared)."""
    if not conn.execute(_READABLE).scalar():
        return {}
    rows = conn.execute(
        text(f"SELECT column_name, value FROM {SCHEMA}.filter_indexes WHERE model_id = :m AND recall >= :r"),
        {"m": int(model_id), "r": MIN_RECALL},
    )
    found: dict[str, set[str]] = {}
    for column, value in rows:
        found.setdefault(str(column), set()).add(str(value))
    return {column: frozenset(values) for column, values in found.items()}


def graphs(conn: Connection, model_id: int) -> list[Graph]:
    rows = conn.execute(
        text(
            f"""SELECT f.column_name, f.value, f.index_name, f.rows, f.recall, coalesce(i.indisvalid, false),
                       coalesce(pg_relation_size(i.indexrelid), 0)
                FROM {SCHEMA}.filter_indexes f
                LEFT JOIN pg_index i ON i.indexrelid = to_regclass('{SCHEMA}.' || f.index_name)
                WHERE f.model_id = :m ORDER BY f.column_name, f.rows DESC, f.value"""
        ),
        {"m": int(model_id)},
    )
    return [
        Graph(str(c), str(v), str(n), int(r), float(recall), bool(ok), int(size))
        for c, v, n, r, recall, ok, size in rows
    ]


# (column, value, done, total) as the graphs are built
Progress = Callable[[str, str, int, int], None]


def refresh_showing(engine: Engine, model: ModelInfo, *, progress: bool | None = None) -> RefreshResult:
    """:func:`refresh`, with a progress bar of the builds (by default only when stderr is a terminal)."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(desc="indexing values", unit="index", disable=not show) as bar:

        def on_build(column: str, value: str, done: int, total: int) -> None:
            bar.total = total
            bar.set_postfix_str(f"{column} {value}"[:40], refresh=False)
            bar.update(done - bar.n)

        return refresh(engine, model, on_build=on_build)


def refresh(
    engine: Engine,
    model: ModelInfo,
    *,
    maintenance_work_mem: str | None = None,
    on_build: Progress | None = None,
    wait: bool = True,
) -> RefreshResult:
    """Build a graph for each value of a ruled column that has ``min_rows`` rows or more and none
    yet, drop graphs of values below half of that (or of columns without a rule), rebuild those
    an interrupted build left invalid, and try a refused value's again once its rows grew
    :data:`RETRY_GROWTH` times. ``CREATE``/``DROP INDEX CONCURRENTLY``: searches and
    writes go on. One refresh at a time (an advisory lock; ``wait=False`` returns at once, having
    done nothing, when another one runs); returns what changed."""
    started = time.perf_counter()
    result = RefreshResult()
    with connect(engine.url, "to refresh the filter indexes") as conn:
        if wait:
            conn.execute("SELECT pg_advisory_lock(%s)", (REFRESH_LOCK,))
        else:
            locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (REFRESH_LOCK,)).fetchone()
            if not (locked and locked[0]):
                return result
        if maintenance_work_mem:
            conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (maintenance_work_mem,))
        # the codes far filters read, checked on a new model and when its rows doubled or halved
        result.codes_recall = binary_codes.check_if_due(conn, model)
        ruled: dict[str, int] = {
            str(column): int(n)
            for column, n in conn.execute(
                f"SELECT column_name, min_rows FROM {SCHEMA}.filter_index_rules"
            ).fetchall()
        }
        existing = {
            (str(c), str(v)): _Registered(
                str(name), bool(valid), int(rows), float(recall) < MIN_RECALL, found is not None
            )
            for c, v, name, valid, rows, recall, found in conn.execute(
                f"""SELECT f.column_name, f.value, f.index_name, coalesce(i.indisvalid, false), f.rows,
                           f.recall, i.indexrelid
                    FROM {SCHEMA}.filter_indexes f
                    LEFT JOIN pg_index i ON i.indexrelid = to_regclass('{SCHEMA}.' || f.index_name)
                    WHERE f.model_id = %s""",
                (int(model.id),),
            ).fetchall()
        }
        counts: dict[tuple[str, str], int] = {}
        for column, min_rows in ruled.items():
            # a column of the embeddings (kept from the product by triggers): an index-only scan
            for value, n in conn.execute(
                sql.SQL(
                    "SELECT {col}, count(*) FROM {schema}.embeddings WHERE model_id = %s AND {col} IS NOT NULL "
                    "GROUP BY {col} HAVING count(*) >= %s"
                ).format(col=sql.Identifier(check_column(column)), schema=sql.Identifier(SCHEMA)),
                (int(model.id), max(1, int(int(min_rows) * DROP_BELOW))),
            ).fetchall():
                counts[(column, str(value))] = int(n)
        wanted = {
            key
            for key, n in counts.items()
            if n >= int(ruled[key[0]]) or (key in existing and n >= int(ruled[key[0]]) * DROP_BELOW)
        }
        for key, (name, _, _, refused, indexed) in existing.items():
            if key not in wanted:
                _drop(conn, model, key, name)
                result.dropped.append(key)
            elif refused and indexed:  # refused before refused indexes were dropped (or marked so by hand)
                _drop_index(conn, name)

        def due(key: tuple[str, str]) -> bool:
            if key not in existing:
                return True
            entry = existing[key]
            return counts[key] >= entry.rows * RETRY_GROWTH if entry.refused else not entry.valid

        todo = [key for key in sorted(wanted) if due(key)]
        result.kept = sum(1 for key in wanted if key not in todo and not existing[key].refused)
        for done, key in enumerate(todo):
            if on_build is not None:
                on_build(key[0], key[1], done, len(todo))
            if _build(conn, model, key, counts[key]):
                result.built.append(key)
            else:
                result.refused.append(key)
        if on_build is not None and todo:
            on_build("", "", len(todo), len(todo))
        conn.execute("SELECT pg_advisory_unlock(%s)", (REFRESH_LOCK,))
    result.seconds = time.perf_counter() - started
    if result.built or result.dropped:
        log.info(
            "filter indexes of %s: %d built, %d dropped, %d kept in %.1f s",
            model.name,
            len(result.built),
            len(result.dropped),
            result.kept,
            result.seconds,
        )
    return result


def _build(conn: psycopg.Connection, model: ModelInfo, key: tuple[str, str], rows: int) -> bool:
    """Build the value's graph and check it; False: refused (below :data:`MIN_RECALL`), its
    index dropped, its registry row kept."""
    column, value = key
    name = index_name(model.id, column, value)
    _drop_index(conn, name)  # an earlier build that was interrupted left an invalid index under this name
    conn.execute(
        f"DELETE FROM {SCHEMA}.filter_indexes WHERE model_id = %s AND column_name = %s AND value = %s",
        (int(model.id), column, value),
    )
    statement = sql.SQL(
        "CREATE INDEX CONCURRENTLY {name} ON {schema}.embeddings "
        "USING hnsw ((embedding::halfvec({dim})) halfvec_cosine_ops) "
        "WITH (m = {m}, ef_construction = {ef}) WHERE model_id = {model} AND {col} = {value}"
    ).format(
        name=sql.Identifier(name),
        schema=sql.Identifier(SCHEMA),
        dim=sql.Literal(int(model.dim)),
        m=sql.Literal(vector_index.HNSW_M),
        ef=sql.Literal(vector_index.HNSW_EF_CONSTRUCTION),
        model=sql.Literal(int(model.id)),
        col=sql.Identifier(column),
        value=sql.Literal(value),
    )
    try:
        conn.execute(statement)
    except psycopg.OperationalError as exc:
        raise TransientError(
            f"building the index of {column} {value!r} was interrupted "
            f"({str(exc).strip().splitlines()[0]}); run `imgsearch index refresh`"
        ) from exc
    recall = _probe(conn, model, column, value)
    conn.execute(
        f"INSERT INTO {SCHEMA}.filter_indexes (model_id, column_name, value, index_name, rows, recall) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (int(model.id), column, value, name, rows, recall),
    )
    if recall >= MIN_RECALL:
        return True
    _drop_index(conn, name)
    log.warning(
        "the HNSW index of %s %r found %.2f of an exact search's top %d at its build: dropped, "
        "searches filtered to it keep using exact scans and the model's index (tried again at "
        "%d rows)",
        column,
        value,
        recall,
        PROBE_K,
        rows * RETRY_GROWTH,
    )
    return False


def _probe(conn: psycopg.Connection, model: ModelInfo, column: str, value: str) -> float:
    """Recall@10 of the value's new graph against an exact search of its rows, over queries that
    are rows of other values (the far filters the graph is for: a graph walk finds a far query's
    neighbours worst) and rows of its own. HNSW's recall depends on the data, so it is measured on
    the data. 1.0 when there is nothing to probe with."""
    col = sql.Identifier(column)
    dim = int(model.dim)
    queries = conn.execute(
        sql.SQL(
            "(SELECT embedding::text FROM {schema}.embeddings WHERE model_id = %s AND {col} IS DISTINCT FROM %s "
            "ORDER BY image_id DESC LIMIT %s) UNION ALL "
            "(SELECT embedding::text FROM {schema}.embeddings WHERE model_id = %s AND {col} = %s "
            "ORDER BY image_id LIMIT %s)"
        ).format(schema=sql.Identifier(SCHEMA), col=col),
        (int(model.id), value, PROBES * 2 // 3, int(model.id), value, PROBES // 3),
    ).fetchall()
    if not queries:
        return 1.0
    graph = sql.SQL(
        "SELECT image_id FROM {schema}.embeddings WHERE model_id = {model} AND {col} = %s "
        "ORDER BY embedding::halfvec({dim}) <=> %s::halfvec({dim}) LIMIT {k}"
    ).format(
        schema=sql.Identifier(SCHEMA),
        model=sql.Literal(int(model.id)),
        col=col,
        dim=sql.Literal(dim),
        k=sql.Literal(PROBE_K),
    )
    exact = sql.SQL(
        "SELECT image_id FROM {schema}.embeddings WHERE model_id = {model} AND {col} = %s "
        "ORDER BY embedding <=> %s::halfvec LIMIT {k}"
    ).format(schema=sql.Identifier(SCHEMA), model=sql.Literal(int(model.id)), col=col, k=sql.Literal(PROBE_K))
    found = wanted = 0
    with conn.transaction():
        # the search's own settings (imgsearch.search.plans): ef_search 200, planned for the value
        conn.execute("SET LOCAL hnsw.ef_search = 200")
        conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        conn.execute("SET LOCAL enable_seqscan = off")
        for (query,) in queries:
            near = {r[0] for r in conn.execute(graph, (value, query))}
            conn.execute("SET LOCAL enable_indexscan = off")  # the exact top 10: no index orders it
            truth = {r[0] for r in conn.execute(exact, (value, query))}
            conn.execute("SET LOCAL enable_indexscan = on")
            found += len(near & truth)
            wanted += len(truth)
    return found / wanted if wanted else 1.0


def _drop(conn: psycopg.Connection, model: ModelInfo, key: tuple[str, str], name: str) -> None:
    # unregistered first: searches stop planning for it before it goes
    conn.execute(
        f"DELETE FROM {SCHEMA}.filter_indexes WHERE model_id = %s AND column_name = %s AND value = %s",
        (int(model.id), *key),
    )
    _drop_index(conn, name)


def _drop_index(conn: psycopg.Connection, name: str) -> None:
    conn.execute(
        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
            sql.Identifier(SCHEMA), sql.Identifier(name)
        )
    )


def drop_all(engine: Engine, model: ModelInfo) -> int:
    """Drop every graph of the model (a bulk load writes faster without them; :func:`refresh`
    builds them again); the number dropped."""
    with connect(engine.url, "to drop the filter indexes") as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (REFRESH_LOCK,))
        found = conn.execute(
            f"SELECT column_name, value, index_name FROM {SCHEMA}.filter_indexes WHERE model_id = %s",
            (int(model.id),),
        ).fetchall()
        for column, value, name in found:
            _drop(conn, model, (str(column), str(value)), str(name))
        conn.execute("SELECT pg_advisory_unlock(%s)", (REFRESH_LOCK,))
    return len(found)
