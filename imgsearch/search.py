"""Hybrid search: vector distance and SQL filters in one statement, with the right top-k.

Plain ``ORDER BY embedding <=> q LIMIT k`` with a selective ``WHERE`` lets HNSW return fewer rows
than asked and miss close matches. A filtered search here is one statement
(:func:`filtered_statement`) whose parts run only when cheap counts inside it call for them:

* ``exact``: few rows match (at most :data:`EXACT_MAX_ROWS`): compute every matching row's
  distance. The ORDER BY uses the uncast column, which the per-model HNSW index can't serve, so
  PostgreSQL uses the B-tree/GIN filter indexes and sorts.
* ``hnsw`` (one pass): more match: the matching rows among HNSW's ``ef_search`` nearest, iterative
  scan off. When ``k`` of them match they are the right top-k (a closer matching row would be
  closer than one of those nearest rows too), so a filter whose rows surround the query costs about
  an unfiltered search.
* when the pass comes short, the filter's rows lie away from the query, where HNSW's graph walk
  reaches them late and in no useful order: ``exact`` again when at most :data:`EXACT_MAX_FRACTION`
  of the catalog matches, else ``hnsw_iterative`` (a second statement): ``hnsw.iterative_scan =
  relaxed_order`` collects a pool of matching rows that the outer query re-sorts exactly, with an
  exact scan if even the pool comes short.

Unfiltered searches are one HNSW pass. Statements are built once per shape of filters and run with
each search's values (building one costs more than running it). Shapes whose best plan doesn't
depend on the values (:meth:`Filters.plans_alike`) also run on a plan PostgreSQL caches, planning
the others costs 1-1.5 ms per search. pgvector settings are set with ``SET LOCAL`` inside the
query's transaction only, in one round trip before the statement.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    BigInteger,
    BindParameter,
    ColumnElement,
    Connection,
    Numeric,
    Select,
    Text,
    and_,
    any_,
    bindparam,
    case,
    column,
    func,
    literal_column,
    or_,
    select,
    table,
    text,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.sql.expression import literal

from imgsearch import checks
from imgsearch.db.models import Embedding, Image, Product
from imgsearch.db.vector_index import embedding_expr, model_filter, query_param, send_binary_queries
from imgsearch.errors import InvalidQuery
from imgsearch.records import Hit, ModelInfo
from imgsearch.settings import Settings
from imgsearch.vectors import Vector

log = logging.getLogger(__name__)

# the thresholds' defaults are declared once, on Settings (the class, not the environment)
EXACT_MAX_ROWS: int = Settings.model_fields["exact_max_rows"].default
MAX_K = 1000
MIN_EF_SEARCH = 200  # 100 missed a poorly connected cluster in bench/search.py; 200 found it
MAX_EF_SEARCH = 1000
# a graph's recall at a fixed ef_search falls as it grows (bench/ef_scale.py, clustered 768-d
# rows): ef 200 gave recall@10 1.000 at 100k rows and 0.953 at 1M, where 400 gave 0.980. The
# floor grows as rows ** EF_GROWTH from EF_BASE_ROWS: 200 up to 100k, 400 at 1M, 800 at 10M
EF_BASE_ROWS = 100_000
EF_GROWTH = 0.3
MIN_SCAN_TUPLES = 20_000  # pgvector's default hnsw.max_scan_tuples
EXACT_MAX_FRACTION: float = Settings.model_fields["exact_max_fraction"].default
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
    exclude_image: int | None = None  # "more like this image": the source image itself
    exclude_product: int | None = None  # "more like this product": its images (products.id)

    def conditions(self) -> list[ColumnElement[bool]]:
        """The filters as SQL conditions; each value is a bound parameter named in :meth:`params`."""
        return list(self._conditions)

    def params(self) -> dict[str, Any]:
        """The filter values by parameter name, to run a statement built for the same
        :meth:`shape` with other values (checked once per instance)."""
        return {f"{PARAM_PREFIX}{name}": value for name, value in self._values.items()}

    def tenant_name(self) -> str | None:
        """The tenant as stored (:func:`imgsearch.checks.identifier`, checked once per instance)."""
        tenant: str | None = self._values.get("tenant")
        return tenant

    def value(self, name: str) -> Any:
        """A filter's checked value by name (``tenant``, ``category``, ``categories``, ...), or None."""
        return self._values.get(name)

    def plans_alike(self) -> bool:
        """True when the best way to read every part of a search doesn't depend on the values:
        no filter, one filter on an indexed column (tenant, category or a list of them,
        attributes), or a shop's search, tenant and category (or a list), which one index
        serves; with or without ``exclude_image`` or ``exclude_product``. A statement of such a shape can run on a plan
        cached at its first runs. Prices (a range may match a few rows or every row) and other
        pairs of filters (which index leads depends on the values) are planned for each search."""
        columns = frozenset(self._values) - {"exclude_image", "exclude_product"}
        return self.where is None and columns in PLANS_ALIKE

    def shape(self) -> tuple[Any, ...] | None:
        """What the statement for these filters looks like, apart from the values; None when
        ``where`` makes it unique."""
        if self.where is not None:
            return None
        values = self._values
        return tuple(values)

    @cached_property
    def _values(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if self.tenant is not None:
            values["tenant"] = checks.identifier(self.tenant, "tenant", InvalidQuery)
        if self.category is not None:
            if isinstance(self.category, list | tuple | set | frozenset):
                if not self.category:
                    raise InvalidQuery(
                        f"category must be a string or a non-empty list of strings, got {self.category!r}"
                    )
                categories = [checks.identifier(c, "category", InvalidQuery) for c in self.category]
            else:
                categories = [checks.identifier(self.category, "category", InvalidQuery)]
            values["categories" if len(categories) > 1 else "category"] = (
                categories if len(categories) > 1 else categories[0]
            )
        low, high = _price(self.price_min, "price_min"), _price(self.price_max, "price_max")
        if low is not None and high is not None and low > high:
            raise InvalidQuery(f"price_min {low} is above price_max {high}")
        # every stored price lies in [0, PRICE_LIMIT): a bound past that selects the same rows as
        # the limit does, and one past numeric's range would fail in the statement
        limit = checks.PRICE_LIMIT
        if low is not None:
            values["price_min"] = max(-limit, min(low, limit))
        if high is not None:
            values["price_max"] = max(-limit, min(high, limit))
        if self.attributes is not None:
            values["attributes"] = checks.attributes(self.attributes, "attributes", InvalidQuery)
        if self.exclude_image is not None:
            if not checks.stored_id(self.exclude_image):
                raise InvalidQuery(f"exclude_image must be an image id, got {self.exclude_image!r}")
            values["exclude_image"] = self.exclude_image
        if self.exclude_product is not None:
            if not checks.stored_id(self.exclude_product):
                raise InvalidQuery(f"exclude_product must be a product key, got {self.exclude_product!r}")
            values["exclude_product"] = self.exclude_product
        if self.where is not None and not isinstance(self.where, ColumnElement):
            raise InvalidQuery("where must be a SQLAlchemy expression over the imgsearch models")
        return values

    @cached_property
    def _conditions(self) -> list[ColumnElement[bool]]:
        values = self._values

        def param(name: str, type_: Any = None) -> BindParameter[Any]:
            return bindparam(f"{PARAM_PREFIX}{name}", values[name], type_=type_)

        conds: list[ColumnElement[bool]] = []
        if "tenant" in values:
            conds.append(Embedding.tenant == param("tenant", Text()))
        if "category" in values:
            conds.append(Embedding.category == param("category", Text()))
        if "categories" in values:
            # one array parameter: the same SQL text (and prepared statement) for every list length
            conds.append(Embedding.category == any_(param("categories", ARRAY(Text()))))
        if "price_min" in values:
            conds.append(Embedding.price >= param("price_min", Numeric()))
        if "price_max" in values:
            conds.append(Embedding.price <= param("price_max", Numeric()))
        if "attributes" in values:
            conds.append(Product.attributes.op("@>")(param("attributes", JSONB())))
        if "exclude_image" in values:
            conds.append(Embedding.image_id != param("exclude_image", BigInteger()))
        if "exclude_product" in values:
            conds.append(Embedding.product_pk != param("exclude_product", BigInteger()))
        if self.where is not None:
            conds.append(self.where)
        return conds


PARAM_PREFIX = "imgsearch_filter_"

# the filter columns of Filters.plans_alike shapes: none, one indexed column, or a shop's category
# (embeddings (model_id, tenant, category), migration 0005)
PLANS_ALIKE = {
    frozenset(columns)
    for columns in (
        (),
        ("tenant",),
        ("category",),
        ("categories",),
        ("attributes",),
        ("tenant", "category"),
        ("tenant", "categories"),
    )
}


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
    query: Vector | BindParameter[Any],
    filters: Filters,
    k: int | ColumnElement[Any],
    offset: int = 0,
    with_embeddings: bool = False,
    with_images: bool = False,
    product_pk: bool = False,
) -> Select[Any]:
    """The HNSW form: ORDER BY the indexed expression alone (a tiebreaker would defeat the index).
    ``product_pk`` returns the product's key instead of joining products for its id."""
    distance = embedding_expr(model.dim).cosine_distance(query_param(query, model.dim))
    columns = hit_columns(
        distance, with_embeddings, Embedding.product_pk if product_pk else Product.product_id
    )
    stmt = joined(model, filters, *columns, with_images=with_images, with_products=not product_pk)
    return _page(stmt.order_by(distance), k, offset)


def _page(stmt: Select[Any], k: int | ColumnElement[Any], offset: int) -> Select[Any]:
    """LIMIT ``k``, and OFFSET only when there is one (a cached plan takes a parameter OFFSET for
    a tenth of the table)."""
    stmt = stmt.limit(k)
    return stmt.offset(offset) if offset else stmt


MIN_FETCH = 16


def fetch_size(wanted: int) -> int:
    """How many rows a statement fetches to give ``wanted`` hits: the next power of two from
    :data:`MIN_FETCH`. It is written into the statement's text (a number of this module's
    choosing, one of a few), so a plan cached for the statement knows its LIMIT: PostgreSQL plans
    a LIMIT parameter as a tenth of the table, and then turns HNSW down for a sort."""
    size = MIN_FETCH
    while size < wanted:
        size *= 2
    return size


def fetch_limit(wanted: int) -> ColumnElement[Any]:
    """``fetch_size(wanted)`` as a constant of the SQL text."""
    return literal_column(str(fetch_size(int(wanted))))


def exact_statement(
    model: ModelInfo,
    query: Vector | BindParameter[Any],
    filters: Filters,
    k: int,
    offset: int = 0,
    with_embeddings: bool = False,
) -> Select[Any]:
    """The exact form: the uncast column's distance, which no HNSW index serves, over the filtered
    rows; products are joined to the ``k`` rows found, not to every row scanned."""
    top_k = _exact_top(model, query_param(query, model.dim), filters, k, offset, with_embeddings).subquery(
        "top"
    )
    return (
        select(*_with_product_id(top_k))
        .join_from(top_k, Product, Product.id == top_k.c.product_pk)
        .order_by(top_k.c.distance)
    )


def _with_product_id(rows: Any) -> list[Any]:
    """The columns of a subquery of hits with ``product_pk`` swapped for the joined product's id."""
    return [Product.product_id if c is rows.c.product_pk else c for c in rows.c]


def _exact_top(
    model: ModelInfo,
    query: BindParameter[Any],
    filters: Filters,
    k: int | ColumnElement[Any],
    offset: int,
    with_embeddings: bool,
    gate: ColumnElement[bool] | None = None,
) -> Select[Any]:
    """The exact top-k with ``product_pk`` for its product; ``gate``, a condition without columns,
    lets PostgreSQL skip the scan when it is false."""
    distance = Embedding.embedding.cosine_distance(query)
    top = joined(model, filters, *hit_columns(distance, with_embeddings, product=Embedding.product_pk))
    if gate is not None:
        top = top.where(gate)
    return _page(top.order_by(distance), k, offset)


@dataclass(frozen=True)
class Plan:
    strategy: str  # "exact", "hnsw" (one pass) or "hnsw_iterative" (a pool, then an exact re-sort)
    matching: int  # rows the filters match, counted up to a bound (-1: not counted)
    ef_search: int = 0
    max_scan_tuples: int = 0
    pool: int = 0  # rows the iterative HNSW scan collects before the exact re-sort
    iterative_scan: str = "off"


def min_ef_search(rows: int) -> int:
    """The least ``hnsw.ef_search`` for a graph of ``rows`` rows: :data:`MIN_EF_SEARCH` up to
    :data:`EF_BASE_ROWS`, then growing as ``rows ** EF_GROWTH`` (see there), at most
    :data:`MAX_EF_SEARCH`."""
    if rows <= EF_BASE_ROWS:
        return MIN_EF_SEARCH
    grown = MIN_EF_SEARCH * (rows / EF_BASE_ROWS) ** EF_GROWTH
    return min(MAX_EF_SEARCH, math.ceil(float(grown)))


def one_pass_plan(wanted: int, min_ef: int = MIN_EF_SEARCH) -> Plan | None:
    """One HNSW pass over the ``ef_search`` nearest rows (at least ``min_ef``), or None when
    ``wanted`` rows need more candidates than :data:`MAX_EF_SEARCH`."""
    ef_search = max(min_ef, 2 * wanted)
    return Plan("hnsw", -1, ef_search=ef_search) if ef_search <= MAX_EF_SEARCH else None


def iterative_plan(wanted: int, matching: int, total: int, min_ef: int = MIN_EF_SEARCH) -> Plan:
    """An iterative (relaxed order) scan that collects a pool of matching rows."""
    return Plan(
        "hnsw_iterative",
        matching,
        ef_search=min(MAX_EF_SEARCH, max(min_ef, 2 * wanted)),
        # relaxed_order stops as soon as the pool is full; the cap only bounds a hopeless scan
        max_scan_tuples=min(max(MIN_SCAN_TUPLES, total), 10_000_000),
        pool=min(MAX_POOL, max(MIN_POOL, 4 * wanted)),
        iterative_scan="relaxed_order",
    )


def _total_rows(conn: Connection) -> int:
    return int(conn.execute(select(_reltuples())).scalar_one())


def _reltuples() -> ColumnElement[Any]:
    """The planner's row estimate of the embeddings table (free: no scan)."""
    pg_class = table("pg_class", column("oid"), column("reltuples"), schema="pg_catalog")
    found = (
        select(func.greatest(pg_class.c.reltuples, 1).cast(BigInteger))
        .where(pg_class.c.oid == text("'imgsearch.embeddings'::regclass"))
        .scalar_subquery()
    )
    return func.coalesce(found, 1)


def open_ended_plan(conn: Connection, k: int) -> Plan:
    """Settings for a statement whose filters we don't know (a composed Select): a strict-order
    scan (the caller's ORDER BY must stay exact) that may visit every row before giving up."""
    total = _total_rows(conn)
    ef_search = min(MAX_EF_SEARCH, max(min_ef_search(total), 2 * k))
    return Plan("hnsw", -1, ef_search, min(max(MIN_SCAN_TUPLES, 2 * total), 10_000_000), k, "strict_order")


def planner_settings(conn: Connection) -> None:
    """Planner settings for this transaction: JIT compiling an exact scan's distance expressions
    costs more than it saves at these sizes, catalogs live in memory, where random reads of the
    filter indexes cost about what sequential ones do (bench/search.py: 1% filter 26 -> 14 ms),
    and plans must see the actual query values."""
    # psycopg prepares a statement after 5 runs and PostgreSQL may then switch to a generic plan,
    # planned without the query vector and the filter values: plan for the actual values, unless
    # set_local says the statement's shape plans alike for every value
    _set_local(conn, PLANNER_SETTINGS)


PLANNER_SETTINGS = {"jit": "off", "random_page_cost": "1.1", "plan_cache_mode": "force_custom_plan"}


def set_local(conn: Connection, p: Plan, with_planner: bool = False, cached_plan: bool = False) -> None:
    """pgvector settings for this transaction only (integers computed here, never user text);
    ``with_planner`` adds :func:`planner_settings` in the same round trip.

    ``cached_plan``: the next statement may run on the plan PostgreSQL cached for it
    (``force_generic_plan``; psycopg prepares a statement at its 5th run on a connection). Only
    for statements whose every LIMIT is in their text and whose filters
    :meth:`Filters.plans_alike`: planning the filtered statement for each search costs 1-1.5 ms,
    half an unfiltered search. Otherwise each run is planned for its values.

    A cached plan is planned without the values, from average row estimates, so it is made
    without sequential scans or sorts where there is another way: an average that is most of the
    table (one tenant, few categories) would otherwise make the exact scan, which runs only when
    few rows match, a read of the whole table; and a small average would sort the filter's rows
    for the HNSW pass, which runs only when many rows match. The exact scan's sort has no other
    way, and stays."""
    mode = p.iterative_scan if p.iterative_scan in ("strict_order", "relaxed_order") else "off"
    settings = {
        "hnsw.ef_search": str(int(p.ef_search)),
        "hnsw.iterative_scan": mode,
        "plan_cache_mode": "force_generic_plan" if cached_plan else "force_custom_plan",
        "enable_seqscan": "off" if cached_plan else "on",
        "enable_sort": "off" if cached_plan else "on",
    }
    if mode != "off":
        settings["hnsw.max_scan_tuples"] = str(int(p.max_scan_tuples))
        # iterative scans also stop at work_mem x this multiplier; long scans need the room
        settings["hnsw.scan_mem_multiplier"] = str(SCAN_MEM_MULTIPLIER)
    _set_local(conn, {**PLANNER_SETTINGS, **settings} if with_planner else settings)


def _set_local(conn: Connection, settings: dict[str, str]) -> None:
    """``SET LOCAL`` each setting, in one round trip. Names and values are constants and integers
    of this module, never user input."""
    conn.exec_driver_sql("; ".join(f"SET LOCAL {name} = {value}" for name, value in settings.items()))


def pooled_statement(
    model: ModelInfo,
    query: Vector | BindParameter[Any],
    filters: Filters,
    p: Plan,
    k: int,
    offset: int,
    with_embeddings: bool,
) -> Select[Any]:
    """HNSW collects ``p.pool`` matching rows (relaxed order, in a materialised CTE so the planner
    can't push the outer sort into the index scan); the outer query re-sorts them exactly.

    The re-sort is by ``distance + 0``: PostgreSQL 17+ knows the CTE's rows come in its ORDER BY's
    order, and sorting by the same ``distance`` it would skip the sort and keep the relaxed scan's
    first ``k`` rows (pgvector's README documents the ``+ 0``)."""
    pool = (
        hnsw_statement(model, query, filters, p.pool, 0, with_embeddings)
        .cte("pool")
        .prefix_with("MATERIALIZED")
    )
    return select(*pool.c).order_by(pool.c.distance + 0).limit(k).offset(offset)


def filtered_statement(
    model: ModelInfo,
    query: Vector | BindParameter[Any],
    filters: Filters,
    k: int,
    offset: int,
    *,
    exact_max_rows: int,
    exact_max_fraction: float,
    one_pass: bool,
    with_embeddings: bool,
) -> Select[Any]:
    """Strategy and search of a filtered search in one statement.

    Each part fetches the nearest :func:`fetch_size` ``(k + offset)`` rows, a number in the SQL
    text; the caller keeps hits ``offset`` to ``offset + k``. Every row carries ``matching`` (the
    rows the filters match, counted up to ``exact_max_rows + 1`` and, when the one pass came
    short, up to ``bound + 1``), ``bound`` (the most rows an exact scan
    may take: ``exact_max_rows``, ``exact_max_fraction`` of the catalog's row estimate, or
    ``k + offset``), ``total`` (that estimate) and ``source``, then the hit's columns; with no hits,
    one row of NULL hit columns. Each part runs only when its gate (a condition on materialised
    counts, evaluated once) holds:

    * ``one_pass`` (more than ``exact_max_rows`` match): the matching rows among HNSW's
      ``ef_search`` nearest, iterative scan off. When ``k + offset`` of them match, they are the
      right top-k: a closer matching row would be closer than an ef_search-nearest candidate.
    * the full count, up to ``bound + 1``: only when the one pass came short.
    * ``exact`` (at most ``exact_max_rows`` match, or at most ``bound`` and the pass came short):
      every matching row's distance.
    * neither (more than ``bound`` match, the pass came short): no hits; the caller runs an
      iterative scan (:func:`pooled_statement`) next.

    Products are joined once, to the hits found (PostgreSQL plans this statement on every run, for
    the actual values: each join and table reference left out is planning time saved).
    """
    q = query_param(query, model.dim)
    wanted, small = k + offset, int(exact_max_rows)
    fetched = fetch_limit(wanted)
    sizes = select(_reltuples().label("total")).subquery("sizes")
    limits = select(
        func.greatest(
            literal(small), func.ceil(literal(float(exact_max_fraction)) * sizes.c.total), literal(wanted)
        )
        .cast(BigInteger)
        .label("bound"),
        sizes.c.total,
    ).cte("limits")
    bound = select(limits.c.bound).scalar_subquery()

    def counted(name: str, limit: Any, gate: ColumnElement[bool] | None = None) -> Any:
        rows = joined(model, filters, Embedding.image_id)
        if gate is not None:
            rows = rows.where(gate)
        limited = rows.limit(limit + 1).subquery(f"{name}_rows")
        return select(func.count().label("matching")).select_from(limited).cte(name)

    few = counted("few", literal(small))
    matching_few = select(few.c.matching).scalar_subquery()
    parts = []
    if one_pass:
        first = (
            hnsw_statement(model, q, filters, fetched, 0, with_embeddings, product_pk=True)
            .where(matching_few > small)
            .cte("one_pass")
            .prefix_with("MATERIALIZED")
        )
        found = select(func.count()).select_from(first).scalar_subquery()
        parts.append(select(literal("hnsw").label("source"), *first.c).where(found >= wanted))
        short = and_(matching_few > small, found < wanted)
    else:
        short = matching_few > small
    many = counted("many", bound, gate=short)
    matching_many = select(many.c.matching).scalar_subquery()
    gate = or_(matching_few <= small, and_(short, matching_many <= bound))
    exact = _exact_top(model, q, filters, fetched, 0, with_embeddings, gate).subquery("exact")
    parts.append(select(literal("exact").label("source"), *exact.c))
    hits = union_all(*parts).subquery("hits") if len(parts) > 1 else parts[0].subquery("hits")
    matching = case(
        (few.c.matching <= small, few.c.matching), (many.c.matching > 0, many.c.matching), else_=-1
    )
    return (
        select(matching.label("matching"), limits.c.bound, limits.c.total, *_with_product_id(hits))
        .select_from(few)
        .join(many, true())
        .join(limits, true())
        .outerjoin(hits, true())
        .outerjoin(Product, Product.id == hits.c.product_pk)
    )


@dataclass
class Result:
    hits: list[Hit]
    plan: Plan
    embeddings: npt.NDArray[np.float32] | None = None  # unit rows of the hits, when asked for


def _result(rows: Any, chosen: Plan, with_embeddings: bool, skip: int = 0, k: int | None = None) -> Result:
    # HNSW orders by the distance between the index's normalised half-precision copies, which can
    # swap near-ties by ~1e-4 against the distance reported; re-sorting the rows fetched keeps
    # "nearest first" exact without touching the SQL ORDER BY.
    rows = sorted(rows, key=lambda r: float(r.distance))[skip : None if k is None else skip + k]
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
    cached_plans: bool = True,
    with_embeddings: bool = False,
    per_value: bool = False,
    min_ef: int = MIN_EF_SEARCH,
) -> Result:
    """Top ``k`` (after ``offset``) rows by cosine distance, inside the caller's transaction.

    Returns ``min(k, matching rows - offset)`` hits. One statement in the common case (after one
    round trip of ``SET LOCAL``): :func:`filtered_statement`, or for no filters a single HNSW
    pass. A second one only when a pass comes short: an iterative scan over a large filter, or
    an exact scan. ``cached_plans=False`` plans every statement for its values. ``per_value``: each
    category of the filter's list has an HNSW index of its own: one pass of each, merged
    (:func:`per_value_statement`), when each gives enough rows. ``min_ef``: the least
    ``ef_search`` of its HNSW passes (:func:`min_ef_search` of the model's rows).
    """
    run = _Run(conn, model, query, filters, with_embeddings)
    wanted = k + offset
    first = one_pass_plan(wanted, min_ef)
    cached_plan = cached_plans and filters.plans_alike()
    if not filters.conditions():
        chosen = first or iterative_plan(wanted, -1, MIN_SCAN_TUPLES, min_ef)
        set_local(conn, chosen, with_planner=True, cached_plan=cached_plan and first is not None)
        if first is not None:
            rows = run.hnsw_pass(wanted)
            if len(rows) >= wanted:
                return _result(rows, first, with_embeddings, skip=offset, k=k)
            chosen = iterative_plan(wanted, -1, _total_rows(conn), min_ef)
            set_local(conn, chosen)
        return run.pooled(chosen, k, offset)
    categories = filters.value("categories")
    if per_value and first is not None and categories and len(categories) <= MAX_PER_VALUE_ARMS:
        # the model's graph first: when the list's rows surround the query, its one pass is the
        # answer at the cost of an unfiltered search; when it comes short, the rows lie away
        # from the query, and each category's own graph finds them
        set_local(conn, first, with_planner=True)
        rows = run.hnsw_pass(wanted)
        if len(rows) >= wanted:
            return _result(rows, first, with_embeddings, skip=offset, k=k)
        hits = _per_value(run, first, categories, k, offset)
        if hits is not None:
            return hits
    # settings for the one pass (ignored by the exact scan and the count)
    set_local(conn, first or Plan("exact", -1, ef_search=min_ef), with_planner=True, cached_plan=cached_plan)
    rows = run.execute(
        ("filtered", k, offset, exact_max_rows, exact_max_fraction, first is not None),
        lambda q: filtered_statement(
            model,
            q,
            filters,
            k,
            offset,
            exact_max_rows=exact_max_rows,
            exact_max_fraction=exact_max_fraction,
            one_pass=first is not None,
            with_embeddings=with_embeddings,
        ),
    )
    matching, bound, total = rows[0].matching, rows[0].bound, rows[0].total
    found = [r for r in rows if r.source is not None]
    log.debug("filtered search: %d rows match (bound %d), hits from %s", matching, bound, rows[0].source)
    if rows[0].source == "hnsw":
        assert first is not None
        return _result(found, replace(first, matching=matching), with_embeddings, skip=offset, k=k)
    if 0 <= matching <= bound:  # the exact scan ran (and found every matching row when fewer than k)
        return _result(found, Plan("exact", matching), with_embeddings, skip=offset, k=k)
    chosen = iterative_plan(wanted, matching, total, min_ef)
    set_local(conn, chosen)
    return run.pooled(chosen, k, offset)


MAX_PER_VALUE_ARMS = 32
ARM_PREFIX = f"{PARAM_PREFIX}arm_"


def per_value_statement(
    model: ModelInfo,
    query: Vector | BindParameter[Any],
    filters: Filters,
    arms: int,
    fetched: int | ColumnElement[Any],
    with_embeddings: bool,
) -> Select[Any]:
    """A filter's list of categories, each with an HNSW index of its own: one HNSW pass per
    category (``category = :arm_i``, which the planner, planning for the values, serves from that
    category's index), each returning its ``fetched`` nearest rows with its ``arm`` number, all of
    them together. The caller keeps the nearest when every arm gave ``fetched`` rows: a category's
    rows beyond its own nearest can't be among the nearest of all."""
    q = query_param(query, model.dim)
    others = replace(filters, category=None)
    distance = embedding_expr(model.dim).cosine_distance(q)
    columns = hit_columns(distance, with_embeddings, product=Embedding.product_pk)
    parts = []
    for i in range(arms):
        arm = (
            joined(model, others, literal(i).label("arm"), *columns)
            .where(Embedding.category == bindparam(f"{ARM_PREFIX}{i}", type_=Text()))
            .order_by(distance)
            .limit(fetched)
        )
        parts.append(arm.subquery(f"arm_{i}").select())
    rows = union_all(*parts).subquery("arms")
    return select(*_with_product_id(rows)).join_from(rows, Product, Product.id == rows.c.product_pk)


def _per_value(run: _Run, plan: Plan, categories: Sequence[str], k: int, offset: int) -> Result | None:
    wanted = k + offset
    arms = len(categories)
    rows = run.execute(
        ("per_value", arms, fetch_size(wanted)),
        lambda q: per_value_statement(
            run.model, q, run.filters, arms, fetch_limit(wanted), run.with_embeddings
        ),
        {f"{ARM_PREFIX}{i}": category for i, category in enumerate(categories)},
    )
    counts = [0] * arms
    for row in rows:
        counts[row.arm] += 1
    if min(counts) < wanted:  # an arm came short: its category's other filters are far, or few
        return None
    return _result(rows, replace(plan, strategy="hnsw"), run.with_embeddings, skip=offset, k=k)


STATEMENT_CACHE_SIZE = 512
_statements: dict[tuple[Any, ...], Select[Any]] = {}


class _Run:
    """One search's statements: built once per shape of filters and reused with new values
    (building one costs more than running it), executed with this search's values."""

    def __init__(
        self, conn: Connection, model: ModelInfo, query: Vector, filters: Filters, with_embeddings: bool
    ) -> None:
        self.conn, self.model, self.filters, self.with_embeddings = conn, model, filters, with_embeddings
        binary = send_binary_queries(conn)
        self.query = query_param(query, model.dim, name=QUERY_PARAM, binary=binary)
        self.params = {QUERY_PARAM: query, **filters.params()}
        shape = filters.shape()
        self.key = None if shape is None else (model.id, model.dim, with_embeddings, binary, shape)

    def execute(
        self,
        kind: tuple[Any, ...],
        build: Callable[[BindParameter[Any]], Select[Any]],
        extra: dict[str, Any] | None = None,
    ) -> Sequence[Any]:
        if self.key is None:
            stmt = build(self.query)
        else:
            key = (*self.key, *kind)
            found = _statements.get(key)
            if found is None:
                if len(_statements) >= STATEMENT_CACHE_SIZE:
                    _statements.clear()
                found = _statements[key] = build(self.query)
            stmt = found
        return self.conn.execute(stmt, {**self.params, **extra} if extra else self.params).all()

    def hnsw_pass(self, wanted: int) -> Sequence[Any]:
        """One HNSW pass with the filters in its WHERE, iterative scan as set: the matching rows
        among the ``ef_search`` nearest, at most :func:`fetch_size` ``(wanted)``."""
        model, filters, embeddings = self.model, self.filters, self.with_embeddings
        return self.execute(
            ("hnsw", fetch_size(wanted)),
            lambda q: hnsw_statement(model, q, filters, fetch_limit(wanted), 0, embeddings),
        )

    def pooled(self, chosen: Plan, k: int, offset: int) -> Result:
        """The iterative scan's pool, re-sorted exactly; an exact scan if even it comes short."""
        model, filters, embeddings = self.model, self.filters, self.with_embeddings
        rows = self.execute(
            ("pool", chosen.pool, k, offset),
            lambda q: pooled_statement(model, q, filters, chosen, k, offset, embeddings),
        )
        result = _result(rows, chosen, embeddings)
        if len(result.hits) == k:
            return result
        log.info("hnsw returned %d of %d rows; falling back to an exact scan", len(result.hits), k)
        rows = self.execute(
            ("exact", k, offset), lambda q: exact_statement(model, q, filters, k, offset, embeddings)
        )
        return _result(rows, Plan("exact", chosen.matching), embeddings)


QUERY_PARAM = "imgsearch_query"
