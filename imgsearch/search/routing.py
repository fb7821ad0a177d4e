"""Where a search runs: on the next healthy hot standby, else on the primary; under the tenant's
row-level security; with the per-value graphs and the ``ef_search`` floor of the model's graph.

A :class:`Router` belongs to one catalog. It remembers which categories and tenants have an HNSW
graph of their own (:mod:`imgsearch.db.filter_indexes`) and how large the model's graph is, read
at most every :data:`GRAPHS_REFRESH_SECONDS`, so a search pays no extra round trip for them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal, TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from imgsearch.access import tenancy
from imgsearch.db import binary_codes, citus, filter_indexes, vector_index, wire
from imgsearch.errors import InvalidQuery
from imgsearch.ingest.vectors import Vector
from imgsearch.records import ModelInfo
from imgsearch.search import queries, request, shop_filters
from imgsearch.search.filters import Filters
from imgsearch.search.plans import MIN_EF_SEARCH, min_ef_search
from imgsearch.search.replicas import Replicas, primary_lsn, replica_fault
from imgsearch.search.request import Options
from imgsearch.work import region_rules

log = logging.getLogger(__name__)

GRAPHS_REFRESH_SECONDS = 30.0  # how soon searches plan for a new per-value index (only speed depends on it)

OwnGraph = Literal["single", "per value"]
T = TypeVar("T")
# what a search does in its transaction: request.run's signature (query None: a lexical search)
Runner = Callable[[Connection, ModelInfo, Vector | None, Filters, Options], T]


class Router:
    """Runs searches for one catalog: ``engine`` is the primary's pool (also read for the graphs),
    ``search_engine`` the primary's pool for searches, ``replicas`` the standbys (or None)."""

    def __init__(self, engine: Engine, search_engine: Engine, replicas: Replicas | None) -> None:
        self.engine, self.search_engine, self.replicas = engine, search_engine, replicas
        # values of category/tenant with an HNSW graph of their own (imgsearch.db.filter_indexes)
        self._graphs: dict[str, frozenset[str]] = {}
        self._graphs_key: tuple[int, float] = (-1, float("-inf"))
        self._min_ef = MIN_EF_SEARCH  # for the model's graph's size, read with the graphs
        # the embeddings' row estimate where statements can't read it (a Citus coordinator), read with the graphs
        self._rows: int | None = None
        self._boosted: frozenset[str] = frozenset()  # tenants with learned boosts, read with the graphs
        self._regions = False  # whether a region rule is on (images may have region rows), read with the graphs
        self._codes = False  # whether the model's binary codes passed their check, read with the graphs
        self._shop_filters = shop_filters.ShopFilters()

    def forget_graphs(self) -> None:
        """Read the per-value graphs again at the next search (after a refresh built or dropped some)."""
        self._graphs_key = (-1, float("-inf"))

    def search(
        self,
        model: ModelInfo,
        filters: Filters,
        options: Options,
        query: Vector | None,
        asked: queries.Query,
        consistent: bool,
        run: Runner[T] | None = None,
        alone: bool = False,
    ) -> T:
        """The hits of one request (what ``run``, by default :func:`request.run`, returns in the
        search's transaction): on a replica when one is in rotation (and, ``consistent``, has
        replayed every write acknowledged before the search began), else on the primary.
        ``alone``: each statement ``run`` sends gives an answer of its own (nothing is put
        together from two of them), so the first may be a transaction of its own, one round trip
        (:func:`imgsearch.db.wire.begin`)."""
        if not isinstance(consistent, bool):
            raise InvalidQuery(f"consistent must be true or false, got {consistent!r}")
        runner: Runner[Any] = run or request.run
        hits = self._on_replicas(model, filters, options, query, asked, consistent, runner, alone)
        if hits is not None:
            return hits  # type: ignore[no-any-return]
        try:
            hits = self._once(self.search_engine, model, filters, options, query, asked, runner, alone=alone)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # searches check out connections without a ping (db_engine.make_search_engine): a
            # search is read-only, so it runs again on a new connection
            log.warning("a search's database connection was closed (%s); running it again", exc.orig)
            hits = self._once(self.search_engine, model, filters, options, query, asked, runner, alone=alone)
        assert hits is not None  # only a replica that hasn't caught up answers None
        return hits  # type: ignore[no-any-return]

    def _on_replicas(
        self,
        model: ModelInfo,
        filters: Filters,
        options: Options,
        query: Vector | None,
        asked: queries.Query,
        consistent: bool,
        run: Runner[Any],
        alone: bool = False,
    ) -> Any:
        """The search on the next healthy replica; None when the primary must answer: no replica
        in rotation, each one failed, or (``consistent``) the chosen one didn't catch up in time.
        A replica that can't answer (down, restarting, a query cancelled by recovery) costs no
        failed search: the next one, then the primary, runs it."""
        if not self.replicas:
            return None
        lsn = None
        if consistent:
            with self.engine.begin() as conn:
                lsn = primary_lsn(conn)
        for member in self.replicas.rotation():
            try:
                hits = self._once(member.engine, model, filters, options, query, asked, run, lsn, alone)
            except DBAPIError as exc:
                if not replica_fault(exc):
                    raise
                self.replicas.failed(member, exc)
                continue
            if hits is None:
                log.info(
                    "replica %s hadn't replayed %s within the wait; the primary answers", member.name, lsn
                )
                return None
            member.searches += 1
            return hits
        return None

    def _once(
        self,
        engine: Engine,
        model: ModelInfo,
        filters: Filters,
        options: Options,
        query: Vector | None,
        asked: queries.Query,
        run: Runner[Any],
        lsn: str | None = None,
        alone: bool = False,
    ) -> Any:
        own = self._own_graph(
            model, filters
        )  # before the search's transaction (Django shares one connection)
        # nothing to blend: the statement without the boosts
        unboosted = options.boosting is not None and not self.has_boosts(filters.tenant_name())
        boosting = None if unboosted else options.boosting
        codes = options.codes and self._codes
        known = (self._min_ef, self._rows, boosting, codes)
        if (options.min_ef, options.row_estimate, options.boosting, options.codes) != known:
            options = replace(options, min_ef=self._min_ef, row_estimate=self._rows, boosting=boosting, codes=codes)
        # the scope below may wait for the next statement; alone: one round trip for one statement
        with wire.begin(engine, alone=alone) as conn:
            if lsn is not None and self.replicas is not None and not self.replicas.wait_for(conn, lsn):
                return None
            if self._regions and filters.region_rows is None:
                # an image by its best row, or its whole row alone (regions=False)
                filters = replace(filters, region_rows=options.regions)
            if filters.tenant is not None:
                tenancy.scope(conn, filters.tenant, defer=True)
            if query is None and asked.stored:
                query, filters = queries.stored_vector(conn, model, asked, filters)
            if own:
                # the planner picks a value's partial index only when it plans for the value
                options = replace(options, cached_plans=False, per_value=own == "per value")
            if citus.on_coordinator(conn):
                # joins name the tenant; and Citus routes a statement by its values: a generic
                # plan (no values) can't be distributed, every statement is planned for its values
                filters = replace(filters, sharded=True)
                options = replace(options, cached_plans=False)
            elif filters.attributes is not None and filters.tenant is not None:
                # under the shop's policies the attributes' index serves its keys alone
                filters = self._shop_filters.resolved(conn, filters)
            return run(conn, model, query, filters, options)

    def has_boosts(self, tenant: Any) -> bool:
        """Whether ``tenant`` (None: any tenant) had learned boosts at the last reading."""
        return bool(self._boosted) if tenant is None else tenant in self._boosted

    def _own_graph(self, model: ModelInfo, filters: Filters) -> OwnGraph | None:
        """'single': the filter's category or tenant has an HNSW index of its own; "per value":
        each category of its list has one; else None (known values are read every
        :data:`GRAPHS_REFRESH_SECONDS`, with the size of the model's graph, which sets the
        searches' least ``ef_search``)."""
        model_id, checked = self._graphs_key
        now = time.monotonic()
        if model_id != model.id or now - checked >= GRAPHS_REFRESH_SECONDS:
            try:
                # begin(): committed, not rolled back on return to the pool (psycopg drops the
                # connection's prepared statements at a ROLLBACK)
                with self.engine.begin() as conn:
                    self._min_ef, self._rows = _sizes(conn, model)
                    self._graphs = filter_indexes.indexed_values(conn, model.id)
            except DBAPIError as exc:  # a login that can't read the registry: no per-value plans
                log.debug("per-value indexes not readable: %s", exc.orig)
                self._graphs = {}
            self._boosted = _boosted_tenants(self.engine)
            self._regions = _regions_on(self.engine)
            self._codes = _codes_usable(self.engine, model)
            self._graphs_key = (model.id, now)
        if not self._graphs:
            return None
        categories = filters.value("categories")
        if categories and set(categories) <= self._graphs.get("category", frozenset()):
            return "per value"
        if any(filters.value(column) in self._graphs.get(column, ()) for column in filter_indexes.COLUMNS):
            return "single"
        return None


def _sizes(conn: Connection, model: ModelInfo) -> tuple[int, int | None]:
    """The least ``ef_search`` for the model's graph's size, and the embeddings' row estimate
    when statements can't read it: on a Citus coordinator, whose tables are empty shells, both
    from the largest shard (a shop's search walks one); else None."""
    if citus.on_coordinator(conn):
        index = vector_index.index_name(model.id)
        return min_ef_search(citus.largest_shard_rows(conn, index)), citus.largest_shard_rows(conn)
    return min_ef_search(vector_index.indexed_rows(conn, model.id)), None


def _regions_on(engine: Engine) -> bool:
    """Whether a region rule is on (imgsearch.work.region_rules); False when unreadable."""
    try:
        with engine.begin() as conn:
            return region_rules.any_on(conn)
    except DBAPIError as exc:
        log.debug("region rules not readable: %s", exc.orig)
        return False


def _codes_usable(engine: Engine, model: ModelInfo) -> bool:
    """Whether far filters may read the model's binary codes (imgsearch.db.binary_codes); not on
    a Citus coordinator (its statements are planned for each shop's shard); False when unreadable."""
    try:
        with engine.begin() as conn:
            return not citus.on_coordinator(conn) and binary_codes.usable(conn, model.id)
    except DBAPIError as exc:
        log.debug("binary code checks not readable: %s", exc.orig)
        return False


def _boosted_tenants(engine: Engine) -> frozenset[str]:
    """The tenants with learned boosts (imgsearch.learning.boosts); none when unreadable."""
    try:
        with engine.begin() as conn:
            return frozenset(conn.execute(text("SELECT tenant FROM imgsearch.boosts GROUP BY tenant")).scalars())
    except DBAPIError as exc:
        log.debug("boosts not readable: %s", exc.orig)
        return frozenset()
