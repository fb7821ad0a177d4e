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
  of the catalog matches (``codes`` past a few thousand rows, where the model's binary codes
  passed their check: the rows nearest by their codes, re-ranked exactly,
  :mod:`imgsearch.db.binary_codes`), else ``hnsw_iterative`` (a second statement): ``hnsw.iterative_scan =
  relaxed_order`` collects a pool of matching rows that the outer query re-sorts exactly, with an
  exact scan if even the pool comes short.

Unfiltered searches are one HNSW pass. Statements are built once per shape of filters and run with
each search's values (building one costs more than running it). Shapes whose best plan doesn't
depend on the values (:meth:`Filters.plans_alike`) also run on a plan PostgreSQL caches, planning
the others costs 1-1.5 ms per search. pgvector settings are set for the query's transaction only
(``set_config(..., true)``, the function form of ``SET LOCAL``), sent with the statement in its
round trip (:mod:`imgsearch.db.wire`).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    BindParameter,
    Connection,
    Select,
)

from imgsearch.db import wire
from imgsearch.db.compiled import Statements
from imgsearch.db.feedback_models import Boost
from imgsearch.db.vector_index import query_param, send_binary_queries
from imgsearch.ingest.vectors import Vector
from imgsearch.records import Hit, ModelInfo
from imgsearch.search.boosting import Boosting, ranked
from imgsearch.search.filters import Filters
from imgsearch.search.plans import (
    EXACT_MAX_FRACTION,
    EXACT_MAX_ROWS,
    MIN_EF_SEARCH,
    MIN_SCAN_TUPLES,
    Plan,
    iterative_plan,
    local_settings,
    one_pass_plan,
    total_rows,
)
from imgsearch.search.statements import (
    ARM_PREFIX,
    MAX_PER_VALUE_ARMS,
    codes_cover,
    exact_statement,
    fetch_limit,
    fetch_size,
    filtered_statement,
    hnsw_statement,
    per_value_statement,
    pooled_statement,
    sizes,
)

log = logging.getLogger(__name__)


@dataclass
class Result:
    hits: list[Hit]
    plan: Plan
    embeddings: npt.NDArray[np.float32] | None = None  # unit rows of the hits, when asked for


def hit_of(row: Any, **extra: Any) -> Hit:
    """A hit from a statement's row (its hit columns: statements.hit_columns with the product's);
    a NULL distance (a lexical hit, no query vector) gives no distance nor score; ``extra``: its
    other fields.

    Made as ``Hit(...)`` makes it, every field set, without its frozen ``__init__`` (a call of
    ``object.__setattr__`` a field: 3.4 us a hit against 1.1 us; tests/search/test_strategy.py
    holds the two equal)."""
    distance = None if row.distance is None else float(row.distance)
    hit: Hit = _new_hit(Hit)
    hit.__dict__.update(
        image_id=row.image_id,
        product_id=row.product_id,
        tenant=row.tenant,
        category=row.category,
        price=row.price,
        distance=distance,
        score=None if distance is None else 1.0 - distance,
        probability=None,
        title=row.title,
        brand=row.brand,
        currency=row.currency,
        matched_by={},
        relevance=None,
        boost=None,
        region=None,
    )
    if extra:
        unknown = extra.keys() - _HIT_FIELDS
        if unknown:
            raise TypeError(f"Hit has no field {sorted(unknown)[0]!r}")
        hit.__dict__.update(extra)
    return hit


_new_hit = object.__new__
# a row's distance (double precision: a float): a sort key with no Python call per row
_DISTANCE = operator.attrgetter("distance")
_HIT_FIELDS = frozenset(f.name for f in fields(Hit))


def _result(
    rows: Any, chosen: Plan, with_embeddings: bool, skip: int = 0, k: int | None = None, boosted: bool = False
) -> Result:
    # HNSW orders by the distance between the index's normalised half-precision copies, which can
    # swap near-ties by ~1e-4 against the distance reported; re-sorting the rows fetched keeps
    # "nearest first" exact without touching the SQL ORDER BY. Boosted rows come in the order
    # their statement gave them (boosting.ranked: its places are ranks by the reported distance).
    if boosted:
        rows = sorted(rows, key=lambda r: (float(r.boosted_place), -float(r.boost), r.place))
        rows = rows[skip : None if k is None else skip + k]
        hits = [hit_of(r, boost=float(r.boost)) for r in rows]
    else:
        rows = sorted(rows, key=_DISTANCE)[skip : None if k is None else skip + k]
        hits = [hit_of(r) for r in rows]
    if rows and "box" in rows[0]._fields:  # images with region rows: the region each hit matched by
        for hit, r in zip(hits, rows, strict=True):
            hit.__dict__["region"] = None if r.box is None else list(r.box)
    embeddings = None
    if with_embeddings and not rows:
        embeddings = np.empty((0, 0), dtype=np.float32)
    elif with_embeddings:
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
    row_estimate: int | None = None,
    boosting: Boosting | None = None,
    codes: bool = False,
) -> Result:
    """Top ``k`` (after ``offset``) rows by cosine distance, inside the caller's transaction.

    Returns ``min(k, matching rows - offset)`` hits. One statement in the common case (after one
    round trip of ``SET LOCAL``): :func:`filtered_statement`, or for no filters a single HNSW
    pass. A second one only when a pass comes short: an iterative scan over a large filter, or
    an exact scan. ``cached_plans=False`` plans every statement for its values. ``per_value``: each
    category of the filter's list has an HNSW index of its own: one pass of each, merged
    (:func:`per_value_statement`), when each gives enough rows. ``min_ef``: the least
    ``ef_search`` of its HNSW passes (:func:`min_ef_search` of the model's rows). ``boosting``:
    each statement orders its rows by their boosted places (:func:`boosting.ranked`); the caller
    asks for the ``k`` that any boost could bring onto its page. ``row_estimate``: the embeddings' row
    estimate, for a database whose statements can't read it (a Citus coordinator); None: they
    read ``pg_class``. ``codes``: the model's binary codes passed their check
    (:func:`imgsearch.db.binary_codes.usable`): a far filter of a few thousand rows or more,
    which the index carrying the codes answers, compares them before its full distances.
    """
    run = _Run(conn, model, query, filters, with_embeddings, boosting)
    boosted = boosting is not None
    wanted = k + offset
    first = one_pass_plan(wanted, min_ef)
    cached_plan = cached_plans and filters.plans_alike(on_embeddings=True)
    if not filters.check():
        chosen = first or iterative_plan(wanted, -1, MIN_SCAN_TUPLES, min_ef)
        run.set_local(chosen, with_planner=True, cached_plan=cached_plan and first is not None)
        if first is not None:
            rows = run.hnsw_pass(wanted)
            if len(rows) >= wanted:
                return _result(rows, first, with_embeddings, skip=offset, k=k, boosted=boosted)
            chosen = iterative_plan(
                wanted, -1, total_rows(conn) if row_estimate is None else row_estimate, min_ef
            )
            run.set_local(chosen)
        return run.pooled(chosen, k, offset)
    categories = filters.value("categories")
    if per_value and first is not None and categories and len(categories) <= MAX_PER_VALUE_ARMS:
        # the model's graph first: when the list's rows surround the query, its one pass is the
        # answer at the cost of an unfiltered search; when it comes short, the rows lie away
        # from the query, and each category's own graph finds them
        run.set_local(first, with_planner=True)
        rows = run.hnsw_pass(wanted)
        if len(rows) >= wanted:
            return _result(rows, first, with_embeddings, skip=offset, k=k, boosted=boosted)
        hits = _per_value(run, first, categories, k, offset)
        if hits is not None:
            return hits
    # settings for the one pass (ignored by the exact scan and the count)
    run.set_local(first or Plan("exact", -1, ef_search=min_ef), with_planner=True, cached_plan=cached_plan)
    codes = codes and codes_cover(filters)
    found = run.execute(
        (
            "filtered",
            k,
            offset,
            exact_max_rows,
            exact_max_fraction,
            first is not None,
            row_estimate is None,
            codes,
        ),
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
            sized=row_estimate is not None,
            codes=codes,
        ),
        None if row_estimate is None else sizes(row_estimate, wanted, exact_max_rows, exact_max_fraction),
    )
    matching, bound, total = found[0].matching, found[0].bound, found[0].total
    source = found[0].source
    found = [r for r in found if r.source is not None]
    log.debug("filtered search: %d rows match (bound %d), hits from %s", matching, bound, source)
    if source == "hnsw":
        assert first is not None
        return _result(
            found, replace(first, matching=matching), with_embeddings, skip=offset, k=k, boosted=boosted
        )
    if source == "codes":
        return _result(found, Plan("codes", matching), with_embeddings, skip=offset, k=k, boosted=boosted)
    if 0 <= matching <= bound:  # the exact scan ran (and found every matching row when fewer than k)
        return _result(found, Plan("exact", matching), with_embeddings, skip=offset, k=k, boosted=boosted)
    chosen = iterative_plan(wanted, matching, total, min_ef)
    run.set_local(chosen)
    return run.pooled(chosen, k, offset)


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
    return _result(
        rows, replace(plan, strategy="hnsw"), run.with_embeddings, skip=offset, k=k, boosted=run.boosted
    )


STATEMENT_CACHE_SIZE = 512
_statements = Statements(STATEMENT_CACHE_SIZE)


class _Run:
    """One search's statements: built once per shape of filters and reused with new values,
    kept compiled (:class:`Statements`), executed with this search's values, each after the
    settings set for it (:meth:`set_local`) in one round trip (:mod:`imgsearch.db.wire`)."""

    def __init__(
        self,
        conn: Connection,
        model: ModelInfo,
        query: Vector,
        filters: Filters,
        with_embeddings: bool,
        boosting: Boosting | None = None,
    ) -> None:
        self.conn, self.model, self.filters, self.with_embeddings = conn, model, filters, with_embeddings
        binary = send_binary_queries(conn)
        self.vector, self.binary = query, binary
        self.params = {QUERY_PARAM: query, **filters.params()}
        self.boosted = boosting is not None
        if boosting is not None:
            self.params.update(boosting.params())
        shape = filters.shape()
        key = (model.id, model.dim, with_embeddings, binary, self.boosted, shape)
        self.key = None if shape is None else key
        self._settings: list[wire.Statement] = []

    def set_local(self, plan: Plan, with_planner: bool = False, cached_plan: bool = False) -> None:
        """:func:`local_settings` for ``plan``, sent with the next statement."""
        self._settings.append(local_settings(self.conn, plan, with_planner, cached_plan))

    def execute(
        self,
        kind: tuple[Any, ...],
        build: Callable[[BindParameter[Any]], Select[Any]],
        extra: dict[str, Any] | None = None,
    ) -> Sequence[Any]:
        params = {**self.params, **extra} if extra else self.params
        key = None if self.key is None else (*self.key, *kind)

        def built() -> Select[Any]:
            # the query vector as a parameter, made only for a statement not built before
            stmt = build(query_param(self.vector, self.model.dim, name=QUERY_PARAM, binary=self.binary))
            return ranked(stmt, *self.filters.routed(Boost)) if self.boosted else stmt

        before, self._settings = self._settings, []
        # vector columns come back parsed by their type, which only a Select's execution applies
        return _statements.run(self.conn, key, built, params, compile=not self.with_embeddings, before=before)

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
            lambda q: pooled_statement(model, q, filters, chosen.pool, k, offset, embeddings),
        )
        result = _result(rows, chosen, embeddings, boosted=self.boosted)
        if len(result.hits) == k:
            return result
        log.info("hnsw returned %d of %d rows; falling back to an exact scan", len(result.hits), k)
        rows = self.execute(
            ("exact", k, offset), lambda q: exact_statement(model, q, filters, k, offset, embeddings)
        )
        return _result(rows, Plan("exact", chosen.matching), embeddings, boosted=self.boosted)


QUERY_PARAM = "imgsearch_query"
