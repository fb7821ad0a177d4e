"""The SQL of a search: an HNSW pass, an exact scan, an iterative pool, the filtered statement that
chooses among them inside PostgreSQL, and one pass per category's own graph.

Each is built with bound parameters only; :mod:`imgsearch.search.strategy` builds each once per
shape of filters and runs it with each search's values."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from sqlalchemy import (
    BigInteger,
    BindParameter,
    ColumnElement,
    Float,
    Select,
    Text,
    and_,
    bindparam,
    case,
    func,
    literal_column,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.sql.expression import literal

from imgsearch.db import binary_codes
from imgsearch.db.models import Embedding, Image, Product
from imgsearch.db.vector_index import embedding_expr, model_filter, query_param
from imgsearch.ingest.vectors import Vector
from imgsearch.records import ModelInfo
from imgsearch.search.filters import PARAM_PREFIX, Filters
from imgsearch.search.plans import reltuples


def mentions(filters: Filters, table: Any) -> bool:
    """Whether the filters' ``where`` reads ``table`` (a statement joins it then)."""
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
    if with_products or filters.on_products or mentions(filters, Product.__table__):
        stmt = stmt.join(
            Product, filters.same_shop(Product, Product.id, Embedding.product_pk, Embedding.tenant)
        )
    if with_images or mentions(filters, Image.__table__):
        stmt = stmt.join(Image, filters.same_shop(Image, Image.id, Embedding.image_id, Embedding.tenant))
    return stmt.where(model_filter(model.id), *filters.conditions())


# what a hit shows of its product (statements that join products once, to the hits, swap
# ``product_pk`` for these: :func:`_with_product_id`)
PRODUCT_COLUMNS = (Product.product_id, Product.title, Product.brand, Product.currency)


def hit_columns(
    distance: ColumnElement[Any], with_embeddings: bool = False, product: Any = None, box: bool = False
) -> list[Any]:
    """A hit's columns; ``product`` (e.g. ``Embedding.product_pk``) instead of the joined
    product's :data:`PRODUCT_COLUMNS`; ``box``: the row's region (where images have region rows)."""
    columns = [
        Embedding.image_id,
        *((product,) if product is not None else PRODUCT_COLUMNS),
        Embedding.tenant,
        Embedding.category,
        Embedding.price,
        distance.label("distance"),
        *((Embedding.box,) if box else ()),
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
        distance, with_embeddings, Embedding.product_pk if product_pk else None, filters.region_rows is not None
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
    k: int | ColumnElement[Any],
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
        .join_from(top_k, Product, _product_of(filters, top_k))
        .order_by(top_k.c.distance)
    )


def _with_product_id(rows: Any) -> list[Any]:
    """The columns of a subquery of hits with ``product_pk`` swapped for the joined product's
    :data:`PRODUCT_COLUMNS`."""
    columns: list[Any] = []
    for c in rows.c:
        columns.extend(PRODUCT_COLUMNS if c is rows.c.product_pk else (c,))
    return columns


def _product_of(filters: Filters, rows: Any) -> ColumnElement[bool]:
    """The join of a subquery of hits to their products (:meth:`Filters.same_shop`)."""
    return filters.same_shop(Product, Product.id, rows.c.product_pk, rows.c.tenant)


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
    columns = hit_columns(distance, with_embeddings, Embedding.product_pk, filters.region_rows is not None)
    top = joined(model, filters, *columns)
    if gate is not None:
        top = top.where(gate)
    return _page(top.order_by(distance), k, offset)


def pooled_statement(
    model: ModelInfo,
    query: Vector | BindParameter[Any],
    filters: Filters,
    pool: int | ColumnElement[Any],
    k: int | ColumnElement[Any],
    offset: int,
    with_embeddings: bool,
) -> Select[Any]:
    """HNSW collects ``pool`` matching rows (a plan's, :mod:`imgsearch.search.plans`; relaxed
    order, in a materialised CTE so the planner can't push the outer sort into the index scan);
    the outer query re-sorts them exactly.

    The re-sort is by ``distance + 0``: PostgreSQL 17+ knows the CTE's rows come in its ORDER BY's
    order, and sorting by the same ``distance`` it would skip the sort and keep the relaxed scan's
    first ``k`` rows (pgvector's README documents the ``+ 0``)."""
    rows = (
        hnsw_statement(model, query, filters, pool, 0, with_embeddings)
        .cte("pool")
        .prefix_with("MATERIALIZED")
    )
    return _page(select(*rows.c).order_by(rows.c.distance + 0), k, offset)


def filtered_statement(
    model: ModelInfo,
    query: Vector | BindParameter[Any],
    filters: Filters,
    k: int | ColumnElement[Any],
    offset: int,
    *,
    exact_max_rows: int,
    exact_max_fraction: float,
    one_pass: bool,
    with_embeddings: bool,
    sized: bool = False,
    codes: bool = False,
) -> Select[Any]:
    """Strategy and search of a filtered search in one statement.

    ``k``: a number, or a parameter (the SQL console's, :mod:`imgsearch.search.console`, with
    ``offset`` 0): every part then fetches that many rows.

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
    * ``codes`` (when asked for, :func:`codes_cover` the filters, more than
      :data:`binary_codes.MIN_ROWS` and at most ``bound`` match, and the pass came short) in
      place of ``exact``: the :data:`binary_codes.POOL` rows nearest by their codes' Hamming
      distance, read from an index that carries them, re-ranked by their full distance
      (:func:`_codes_top`).
    * neither (more than ``bound`` match, the pass came short): no hits; the caller runs an
      iterative scan (:func:`pooled_statement`) next.

    Products are joined once, to the hits found (PostgreSQL plans this statement on every run, for
    the actual values: each join and table reference left out is planning time saved).

    ``sized``: the catalog's row estimate and the bound come as the parameters of :func:`sizes`
    instead of from ``pg_class`` (a Citus coordinator's tables are empty shells, and a sharded
    statement takes no subquery in a LIMIT).
    """
    q = query_param(query, model.dim)
    small = int(exact_max_rows)
    wanted: Any
    if isinstance(k, int):
        wanted = k + offset
        fetched = fetch_limit(wanted)
    else:
        wanted = fetched = k
    bound: Any
    if sized:
        bound = bindparam(BOUND_PARAM, type_=BigInteger())
        limits = select(bound.label("bound"), bindparam(TOTAL_PARAM, type_=BigInteger()).label("total")).cte(
            "limits"
        )
    else:
        total = select(reltuples().label("total")).subquery("sizes")
        limits = select(
            exact_bound(total.c.total, wanted, small, exact_max_fraction).label("bound"), total.c.total
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
    scanned = and_(short, matching_many <= bound)
    if codes:
        by_codes = literal(binary_codes.MIN_ROWS) < matching_many
        pool: Any = (
            max(binary_codes.POOL, fetch_size(wanted))
            if isinstance(wanted, int)
            else func.greatest(literal(binary_codes.POOL), wanted)  # the console's k, a parameter
        )
        coded = _codes_top(model, q, filters, fetched, pool, with_embeddings, and_(scanned, by_codes))
        parts.append(select(literal("codes").label("source"), *coded.subquery("codes").c))
        scanned = and_(scanned, ~by_codes)
    gate = or_(matching_few <= small, scanned)
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
        .outerjoin(Product, _product_of(filters, hits))
    )


def codes_cover(filters: Filters) -> bool:
    """Whether the index that carries the codes (``embeddings_tenant_category_price_idx``: the
    keys tenant, category, price, and each row's image, product and region) answers every filter,
    so the codes' scan reads no table: a tenant or a category leads it (a price range alone
    reads ``embeddings_price_idx`` and the table: 21 ms against the exact scan's 17 at 10,000
    rows), no condition on products (brand, attributes not listed by
    :mod:`imgsearch.search.shop_filters`), no ``where``, not sharded (a Citus coordinator)."""
    led = any(filters.value(name) is not None for name in ("tenant", "category", "categories"))
    return led and not filters.on_products and filters.where is None and not filters.sharded


def _codes_top(
    model: ModelInfo,
    query: BindParameter[Any],
    filters: Filters,
    fetched: Any,
    pool: int | ColumnElement[Any],
    with_embeddings: bool,
    gate: ColumnElement[bool],
) -> Select[Any]:
    """The ``pool`` matching rows nearest by Hamming distance between their
    codes and the query's (an index-only scan, in a materialised CTE so the planner can't fold
    it into the re-rank), then those rows by their full distance: their ``fetched`` nearest, as
    :func:`_exact_top` gives them."""
    # the query's code as a subquery: computed once (a cached plan would compute it for each row)
    hamming = Embedding.code.op("<~>", return_type=Float())(
        select(func.binary_quantize(query)).scalar_subquery()
    )
    nearest = (
        joined(model, filters, Embedding.image_id, Embedding.product_pk, Embedding.region)
        .where(gate)
        .order_by(hamming)
        .limit(pool)
        .cte("code_pool")
        .prefix_with("MATERIALIZED")
    )
    distance = Embedding.embedding.cosine_distance(query)
    columns = hit_columns(distance, with_embeddings, Embedding.product_pk, filters.region_rows is not None)
    same_row = and_(
        Embedding.image_id == nearest.c.image_id,
        Embedding.product_pk == nearest.c.product_pk,
        Embedding.region == nearest.c.region,
    )
    rows = select(*columns).join_from(nearest, Embedding, same_row).where(model_filter(model.id))
    return rows.order_by(distance).limit(fetched)


TOTAL_PARAM, BOUND_PARAM = "imgsearch_rows_total", "imgsearch_rows_bound"


def exact_bound(
    total: Any, wanted: Any, exact_max_rows: int, exact_max_fraction: float
) -> ColumnElement[Any]:
    """The most rows an exact scan may take, in SQL: ``exact_max_rows``, ``exact_max_fraction``
    of the catalog's row estimate ``total``, or ``wanted`` (:func:`sizes` in Python)."""
    wanted = literal(wanted) if isinstance(wanted, int) else wanted
    fraction = func.ceil(literal(float(exact_max_fraction)) * total)
    return func.greatest(literal(int(exact_max_rows)), fraction, wanted).cast(BigInteger)


def sizes(total: int, wanted: int, exact_max_rows: int, exact_max_fraction: float) -> dict[str, int]:
    """A ``sized`` :func:`filtered_statement`'s values: the row estimate ``total`` and the bound
    it computes itself from ``pg_class`` otherwise."""
    bound = max(int(exact_max_rows), math.ceil(float(exact_max_fraction) * total), wanted)
    return {TOTAL_PARAM: total, BOUND_PARAM: bound}


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
    columns = hit_columns(distance, with_embeddings, Embedding.product_pk, filters.region_rows is not None)
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
    return select(*_with_product_id(rows)).join_from(rows, Product, _product_of(others, rows))
