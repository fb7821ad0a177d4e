"""Learned boosts blended into a search's ranking, inside its SQL statement.

A boost ``b`` (0 to 1, :mod:`imgsearch.learning.boosts`) is the product's for the normalised
query, else ``product_weight`` times the product's own across queries, else 0. The statement ranks
its candidates as it would without boosts (``place``: 1, 2, ...) and orders them by
``place - lift * b``: a hit rises at most ``lift`` places, whatever its boost, and a catalog or a
query without boosts keeps its order exactly. The candidates are the first ``k + offset + lift``
the search would rank: every hit that any boost could bring onto the page, not only the page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Float, Select, Text, and_, bindparam, func, select
from sqlalchemy.orm import aliased

from imgsearch.db.feedback_models import Boost
from imgsearch.errors import InvalidQuery

QUERY = "imgsearch_boost_query"
LIFT = "imgsearch_boost_lift"
PRODUCT_WEIGHT = "imgsearch_boost_product_weight"
MAX_LIFT = 100


@dataclass(frozen=True)
class Boosting:
    """A search's boosts: ``query_norm`` (None for a query without text: the products' boosts
    only), ``lift`` (most places a hit rises), ``product_weight`` (of a product's boost across
    queries, where the query has none of its own)."""

    query_norm: str | None = None
    lift: int = 10
    product_weight: float = 0.5

    def check(self) -> Boosting:
        if isinstance(self.lift, bool) or not isinstance(self.lift, int) or not 0 <= self.lift <= MAX_LIFT:
            raise InvalidQuery(f"boost lift must be a whole number of places from 0 to {MAX_LIFT}")
        weight = self.product_weight
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not (
            math.isfinite(weight) and 0 <= weight <= 1
        ):
            raise InvalidQuery(f"boost product_weight must be from 0 to 1, got {weight!r}")
        return self

    def params(self) -> dict[str, Any]:
        return {QUERY: self.query_norm, LIFT: float(self.lift), PRODUCT_WEIGHT: float(self.product_weight)}


def _boost(*where: ColumnElement[bool]) -> ColumnElement[Any]:
    query = select(Boost.boost).where(*where, Boost.query_norm == bindparam(QUERY, type_=Text()))
    product = select(Boost.boost).where(*where, Boost.query_norm == "")
    weight = bindparam(PRODUCT_WEIGHT, type_=Float())
    return func.coalesce(query.scalar_subquery(), weight * product.scalar_subquery(), 0.0)


def boost_by_id(tenant: Any, product_id: Any, *routed: ColumnElement[bool]) -> ColumnElement[Any]:
    """A hit's boost, from its tenant and product id (each a column of the hits); ``routed``:
    conditions naming the shop as a value (:meth:`Filters.routed`: Citus)."""
    return _boost(Boost.tenant == tenant, Boost.product_id == product_id, *routed)


def boost_by_pk(product_pk: Any, *routed: ColumnElement[bool]) -> ColumnElement[Any]:
    """A product's boost, from its key (``routed``: as :func:`boost_by_id`'s)."""
    return _boost(Boost.product_pk == product_pk, *routed)


def joined_boost(stmt: Select[Any], product_pk: Any) -> tuple[Select[Any], ColumnElement[Any]]:
    """``stmt`` with each row's boosts joined by its product's key (``product_pk``, a column of
    its rows), and the boost, as :func:`boost_by_pk` gives it. For rows a Citus coordinator
    gathered from every shop: a subquery correlated with them can't run there, a join can."""
    own, across = aliased(Boost, name="query_boost"), aliased(Boost, name="product_boost")
    query_norm = bindparam(QUERY, type_=Text())
    stmt = stmt.outerjoin(own, and_(own.product_pk == product_pk, own.query_norm == query_norm)).outerjoin(
        across, and_(across.product_pk == product_pk, across.query_norm == "")
    )
    weight = bindparam(PRODUCT_WEIGHT, type_=Float())
    return stmt, func.coalesce(own.boost, weight * across.boost, 0.0)


def lift() -> ColumnElement[Any]:
    return bindparam(LIFT, type_=Float())


def ranked(hits: Select[Any], *routed: ColumnElement[bool]) -> Select[Any]:
    """A statement of hits (nearest first by ``distance``) with each one's ``boost``, ``place``
    (its rank without boosts) and ``boosted_place``, ordered by the latter."""
    rows = hits.subquery("unboosted")
    place = func.row_number().over(order_by=(rows.c.distance, rows.c.image_id))
    scored = select(
        *rows.c, boost_by_id(rows.c.tenant, rows.c.product_id, *routed).label("boost"), place.label("place")
    ).subquery("scored")
    boosted = scored.c.place - lift() * scored.c.boost
    return select(*scored.c, boosted.label("boosted_place")).order_by(*order(boosted, scored.c))


def order(boosted: Any, rows: Any) -> list[Any]:
    """Boosted place first; at a tie, the boosted hit before the one it reached (a full boost
    lifts a hit exactly ``lift`` places), then the place."""
    return [boosted, rows.boost.desc(), rows.place]
