"""Hybrid search: vector distance and SQL filters in one statement, with the right top-k.

Plain ``ORDER BY embedding <=> q LIMIT k`` with a selective ``WHERE`` lets HNSW return fewer rows
than asked and miss close matches. Each search here picks a strategy from a cheap, bounded count
of the rows its filters match:

* ``exact``: few rows match (at most :data:`EXACT_MAX_ROWS`, or :data:`EXACT_MAX_FRACTION` of the
  catalog): compute every matching row's distance. The ORDER BY uses the uncast column, which the
  per-model HNSW index can't serve, so PostgreSQL uses the B-tree/GIN filter indexes and sorts.
* ``hnsw``: many rows match: the HNSW index with ``hnsw.iterative_scan = relaxed_order`` collects a
  pool of matching rows (it keeps scanning until the pool is full, however many rows the filters
  reject), in a materialised CTE that the outer query re-sorts exactly. If the pool still holds
  fewer rows than asked, the search falls back to ``exact``.

Why these bounds: HNSW's graph walk reaches rows far from the query late and in no useful order, so
with a filter whose rows all lie far away it misses the true nearest ones; the exact scan has no
such blind spot and, up to 15% of the catalog, costs about what such a walk costs (docs/benchmarks.md).
Unfiltered searches skip the count. pgvector settings are set with ``SET LOCAL`` inside the query's
transaction only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import ColumnElement, Connection, Select, func, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.expression import literal

from imgsearch.db.models import Embedding, Image, Product
from imgsearch.db.vector_index import embedding_expr, model_filter
from imgsearch.errors import InvalidQuery
from imgsearch.records import Hit, ModelInfo
from imgsearch.vectors import Vector

log = logging.getLogger(__name__)

EXACT_MAX_ROWS = 4000  # below this many matching rows an exact scan beats HNSW here (bench/search.py)
MAX_K = 1000
MIN_EF_SEARCH = 200  # 100 missed a poorly connected cluster in bench/search.py; 200 found it
MAX_EF_SEARCH = 1000
MIN_SCAN_TUPLES = 20_000  # pgvector's default hnsw.max_scan_tuples
EXACT_MAX_FRACTION = 0.15  # filters matching up to 15% of the catalog scan exactly (bench/search.py)
MIN_POOL = 200
MAX_POOL = 4000
SCAN_MEM_MULTIPLIER = 4


@dataclass(frozen=True)
class Filters:
    """What a search restricts its rows to; every field is optional."""

    tenant: str | None = None
    category: str | Sequence[str] | None = None
    price_min: Any = None
    price_max: Any = None
    attributes: dict[str, Any] | None = None
    where: ColumnElement[bool] | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        conds: list[ColumnElement[bool]] = []
        if self.tenant is not None:
            if not isinstance(self.tenant, str) or not self.tenant:
                raise InvalidQuery(f"tenant must be a non-empty string, got {self.tenant!r}")
            conds.append(Embedding.tenant == self.tenant)
        if self.category is not None:
            if isinstance(self.category, str):
                categories = [self.category]
            elif isinstance(self.category, list | tuple | set | frozenset):
                categories = list(self.category)
            else:
                categories = []
            if not categories or not all(isinstance(c, str) for c in categories):
                raise InvalidQuery(
                    f"category must be a string or a non-empty list of strings, got {self.category!r}"
                )
            conds.append(
                Embedding.category.in_(categories)
                if len(categories) > 1
                else Embedding.category == categories[0]
            )
        low, high = _price(self.price_min, "price_min"), _price(self.price_max, "price_max")
        if low is not None:
            conds.append(Embedding.price >= low)
        if high is not None:
            conds.append(Embedding.price <= high)
        if low is not None and high is not None and low > high:
            raise InvalidQuery(f"price_min {low} is above price_max {high}")
        if self.attributes is not None:
            if not isinstance(self.attributes, dict):
                raise InvalidQuery(
                    f"attributes must be a dict for JSONB containment, got {type(self.attributes).__name__}"
                )
            conds.append(Product.attributes.op("@>")(literal(self.attributes, JSONB)))
        if self.where is not None:
            if not isinstance(self.where, ColumnElement):
                raise InvalidQuery("where must be a SQLAlchemy expression over the imgsearch models")
            conds.append(self.where)
        return conds


def _price(value: Any, name: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise InvalidQuery(f"{name} must be a number, got {type(value).__name__}")
    try:
        price = Decimal(str(value))
    except InvalidOperation as exc:
        raise InvalidQuery(f"{name} must be a number, got {value!r}") from exc
    if not price.is_finite():
        raise InvalidQuery(f"{name} must be finite, got {value!r}")
    return price


def check_page(k: Any, offset: Any) -> tuple[int, int]:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidQuery(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= 10 * MAX_K:
        raise InvalidQuery(f"offset must be an integer from 0 to {10 * MAX_K}, got {offset!r}")
    return k, offset


def _mentions(filters: Filters, table: Any) -> bool:
    from sqlalchemy.sql.util import find_tables

    return filters.where is not None and table in find_tables(
        filters.where, check_columns=True, include_crud=True
    )


def joined(
    model: ModelInfo, filters: Filters, *columns: Any, with_images: bool = False, with_products: bool = False
) -> Select[Any]:
    """``SELECT columns FROM embeddings [JOIN products] [JOIN images] WHERE <model> AND <filters>``.

    Embeddings carry their product's tenant, category and price (kept by triggers), so those
    filters read one table; products are joined when asked for or when ``attributes`` or
    ``where`` need them, images when asked for or when ``where`` mentions them.
    """
    stmt = select(*columns).select_from(Embedding)
    if with_products or filters.attributes is not None or _mentions(filters, Product.__table__):
        stmt = stmt.join(Product, Product.id == Embedding.product_pk)
    if with_images or _mentions(filters, Image.__table__):
        stmt = stmt.join(Image, Image.id == Embedding.image_id)
    return stmt.where(model_filter(model.id), *filters.conditions())


def hit_columns(
    distance: ColumnElement[Any], with_embeddings: bool = False, product: Any = Product.product_id
) -> list[Any]:
    columns = [
        Embedding.image_id,
        product,
        Embedding.tenant,
        Embedding.category,
        Embedding.price,
        distance.label("distance"),
    ]
    return [*columns, Embedding.embedding] if with_embeddings else columns


def hnsw_statement(
    model: ModelInfo,
    query: Vector,
    filters: Filters,
    k: int,
    offset: int = 0,
    with_embeddings: bool = False,
    with_images: bool = False,
) -> Select[Any]:
    """The HNSW form: ORDER BY the indexed expression alone (a tiebreaker would defeat the index)."""
    distance = embedding_expr(model.dim).cosine_distance(query)
    columns = hit_columns(distance, with_embeddings)
    stmt = joined(model, filters, *columns, with_images=with_images, with_products=True)
    return stmt.order_by(distance).limit(k).offset(offset)


def exact_statement(
    model: ModelInfo, query: Vector, filters: Filters, k: int, offset: int = 0, with_embeddings: bool = False
) -> Select[Any]:
    """The exact form: the uncast column's distance, which no HNSW index serves, over the filtered
    rows; products are joined to the ``k`` rows found, not to every row scanned."""
    distance = Embedding.embedding.cosine_distance(query)
    columns = hit_columns(distance, with_embeddings, product=Embedding.product_pk)
    top = joined(model, filters, *columns).order_by(distance).limit(k).offset(offset).subquery("top")
    outer = [Product.product_id if column is top.c.product_pk else column for column in top.c]
    return select(*outer).join_from(top, Product, Product.id == top.c.product_pk).order_by(top.c.distance)


@dataclass(frozen=True)
class Plan:
    strategy: str
    matching: int  # rows the filters match, counted up to a bound (-1: not counted)
    ef_search: int = 0
    max_scan_tuples: int = 0
    pool: int = 0  # rows the HNSW scan collects before the exact re-sort
    iterative_scan: str = "relaxed_order"


def _total_rows(conn: Connection) -> int:
    total = conn.execute(
        text(
            "SELECT greatest(reltuples, 1)::bigint FROM pg_class WHERE oid = 'imgsearch.embeddings'::regclass"
        )
    ).scalar_one()
    return int(total)


def plan(
    conn: Connection,
    model: ModelInfo,
    filters: Filters,
    k: int,
    offset: int,
    exact_max_rows: int = EXACT_MAX_ROWS,
    exact_max_fraction: float = EXACT_MAX_FRACTION,
) -> Plan:
    """Choose a strategy from a bounded count of the matching rows (cheap: it stops at the bound)."""
    if not filters.conditions():
        return unfiltered_plan(k, offset)
    wanted = k + offset
    total = _total_rows(conn)
    hnsw = Plan(
        "hnsw",
        -1,
        ef_search=min(MAX_EF_SEARCH, max(MIN_EF_SEARCH, 2 * wanted)),
        # relaxed_order stops as soon as the pool is full; the cap only bounds a hopeless scan
        max_scan_tuples=min(max(MIN_SCAN_TUPLES, total), 10_000_000),
        pool=min(MAX_POOL, max(MIN_POOL, 4 * wanted)),
    )
    bound = max(exact_max_rows, math.ceil(exact_max_fraction * total), wanted)
    limited = joined(model, filters, Embedding.image_id).limit(bound + 1).subquery()
    matching = int(conn.execute(select(func.count()).select_from(limited)).scalar_one())
    if matching <= bound:
        return Plan("exact", matching)
    return replace(hnsw, matching=matching)


def unfiltered_plan(k: int, offset: int) -> Plan:
    """No filters: every row matches, so the pool fills within its first rows; no count needed."""
    wanted = k + offset
    return Plan(
        "hnsw",
        -1,
        ef_search=min(MAX_EF_SEARCH, max(MIN_EF_SEARCH, 2 * wanted)),
        max_scan_tuples=MIN_SCAN_TUPLES,
        pool=min(MAX_POOL, max(MIN_POOL, 4 * wanted)),
    )


def open_ended_plan(conn: Connection, k: int) -> Plan:
    """Settings for a statement whose filters we don't know (a composed Select): a strict-order
    scan (the caller's ORDER BY must stay exact) that may visit every row before giving up."""
    total = _total_rows(conn)
    ef_search = min(MAX_EF_SEARCH, max(MIN_EF_SEARCH, 2 * k))
    return Plan("hnsw", -1, ef_search, min(max(MIN_SCAN_TUPLES, 2 * total), 10_000_000), k, "strict_order")


def planner_settings(conn: Connection) -> None:
    """Planner settings for this transaction: JIT compiling an exact scan's distance expressions
    costs more than it saves at these sizes, catalogs live in memory, where random reads of the
    filter indexes cost about what sequential ones do (bench/search.py: 1% filter 26 -> 14 ms),
    and plans must see the actual query values."""
    # psycopg prepares a statement after 5 runs and PostgreSQL may then switch to a generic plan,
    # planned without the query vector and the filter values: always plan for the actual values
    _set_local(conn, PLANNER_SETTINGS)


PLANNER_SETTINGS = {"jit": "off", "random_page_cost": "1.1", "plan_cache_mode": "force_custom_plan"}


def set_local(conn: Connection, p: Plan, with_planner: bool = False) -> None:
    """pgvector settings for this transaction only (integers computed here, never user text);
    ``with_planner`` adds :func:`planner_settings` in the same round trip."""
    mode = "strict_order" if p.iterative_scan == "strict_order" else "relaxed_order"
    settings = {
        "hnsw.ef_search": str(int(p.ef_search)),
        "hnsw.iterative_scan": mode,
        "hnsw.max_scan_tuples": str(int(p.max_scan_tuples)),
        # iterative scans also stop at work_mem x this multiplier; long scans need the room
        "hnsw.scan_mem_multiplier": str(SCAN_MEM_MULTIPLIER),
    }
    _set_local(conn, {**PLANNER_SETTINGS, **settings} if with_planner else settings)


def _set_local(conn: Connection, settings: dict[str, str]) -> None:
    """``SET LOCAL`` each setting, in one round trip. Names and values are constants and integers
    of this module, never user input."""
    conn.exec_driver_sql("; ".join(f"SET LOCAL {name} = {value}" for name, value in settings.items()))


def pooled_statement(
    model: ModelInfo, query: Vector, filters: Filters, p: Plan, k: int, offset: int, with_embeddings: bool
) -> Select[Any]:
    """HNSW collects ``p.pool`` matching rows (relaxed order, in a materialised CTE so the planner
    can't push the outer sort into the index scan); the outer query re-sorts them exactly."""
    pool = (
        hnsw_statement(model, query, filters, p.pool, 0, with_embeddings)
        .cte("pool")
        .prefix_with("MATERIALIZED")
    )
    return select(*pool.c).order_by(pool.c.distance).limit(k).offset(offset)


@dataclass
class Result:
    hits: list[Hit]
    plan: Plan
    embeddings: npt.NDArray[np.float32] | None = None  # unit rows of the hits, when asked for


def _result(rows: Any, chosen: Plan, with_embeddings: bool) -> Result:
    # HNSW orders by the distance between the index's normalised half-precision copies, which can
    # swap near-ties by ~1e-4 against the distance reported; re-sorting the k rows fetched keeps
    # "nearest first" exact without touching the SQL ORDER BY.
    rows = sorted(rows, key=lambda r: float(r.distance))
    hits = [
        Hit(
            image_id=r.image_id,
            product_id=r.product_id,
            tenant=r.tenant,
            category=r.category,
            price=r.price,
            distance=float(r.distance),
            score=1.0 - float(r.distance),
        )
        for r in rows
    ]
    embeddings = None
    if with_embeddings:
        embeddings = np.array([r.embedding for r in rows], dtype=np.float32).reshape(len(rows), -1)
        embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    return Result(hits, chosen, embeddings)


def search_vector(
    conn: Connection,
    model: ModelInfo,
    query: Vector,
    filters: Filters,
    k: int,
    offset: int = 0,
    *,
    exact_max_rows: int = EXACT_MAX_ROWS,
    exact_max_fraction: float = EXACT_MAX_FRACTION,
    with_embeddings: bool = False,
) -> Result:
    """Top ``k`` (after ``offset``) rows by cosine distance, inside the caller's transaction.

    Returns ``min(k, matching rows - offset)`` hits.
    """
    filtered = bool(filters.conditions())
    if filtered:  # the planner settings apply to the count too
        planner_settings(conn)
    chosen = plan(conn, model, filters, k, offset, exact_max_rows, exact_max_fraction)
    if chosen.strategy == "hnsw":
        # unfiltered: every setting in one round trip
        set_local(conn, chosen, with_planner=not filtered)
        stmt = pooled_statement(model, query, filters, chosen, k, offset, with_embeddings)
        log.debug("hnsw search %s: %s", chosen, stmt)
        result = _result(conn.execute(stmt), chosen, with_embeddings)
        if len(result.hits) == k:
            return result
        log.info("hnsw returned %d of %d rows; falling back to an exact scan", len(result.hits), k)
        chosen = Plan("exact", chosen.matching)
    stmt = exact_statement(model, query, filters, k, offset, with_embeddings)
    log.debug("exact search %s: %s", chosen, stmt)
    return _result(conn.execute(stmt), chosen, with_embeddings)
