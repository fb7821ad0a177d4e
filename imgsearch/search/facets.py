"""Facets and totals: exact counts over a search's whole match set, not just its page.

The match set is every product a search can return: matching the filters, with an image embedded
under the model (so a total is what paging reaches); a lexical search's, those that also match
its text.
One statement reads it once and counts, per category, per brand, the top values of each
attribute key, and price buckets whose width is a round number (1, 2 or 5 times a power of ten)
giving about :data:`PRICE_BUCKETS` buckets, plus the total.

A total alone may be bounded, as Elasticsearch's ``track_total_hits``: counted up to ``limit``
matches (it reads at most ``limit + 1``), then reported as that many or more (``relation``
``"gte"``); the HTTP API counts up to :data:`TRACK_TOTAL` by default, so a broad filter's search
never pays for its whole match set.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, literal_column, select, text

from imgsearch.db import citus, engine
from imgsearch.db.compiled import Statements
from imgsearch.db.models import Embedding, Product
from imgsearch.db.vector_index import model_filter
from imgsearch.records import ModelInfo
from imgsearch.search import lexical, plans
from imgsearch.search.filters import Filters

TOP_VALUES = 20  # values per facet (categories, brands, each attribute key's values), most first
TOP_KEYS = 20  # attribute keys, those on most products first
PRICE_BUCKETS = 5
TRACK_TOTAL = 10_000  # the HTTP API's default: count up to this many matches, then report a lower bound
MAX_TRACK_TOTAL = 1_000_000  # a bound past this is an exact count anyway in cost
_TOTALS = Statements(256)  # total statements by shape


@dataclass(frozen=True)
class PriceBucket:
    low: Decimal  # "from", inclusive
    high: Decimal  # "to", exclusive (the last bucket's holds the highest price)
    count: int


@dataclass(frozen=True)
class Facets:
    """Counts of products by value, most first (ties by value); see the module."""

    total: int
    relation: str = "eq"  # "gte": the match set has at least ``total`` products (a bounded count)
    category: dict[str, int] = field(default_factory=dict)
    brand: dict[str, int] = field(default_factory=dict)
    attributes: dict[str, dict[str, int]] = field(default_factory=dict)
    price: list[PriceBucket] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The shape of the HTTP API's ``facets``."""
        return {
            "category": self.category,
            "brand": self.brand,
            "attributes": self.attributes,
            "price": [{"from": b.low, "to": b.high, "count": b.count} for b in self.price],
        }


# The facets of the match set "matched" (id, category, brand, price, attributes) in one pass:
# "grouped" counts its products per category, per brand, per price and per attributes object
# (grouping sets, hashed side by side), and everything else reads those few rows: each attribute
# object's pairs once however many products share it, the price buckets from the distinct prices.
# grouping(category, brand, price, attributes) tells the sets apart: 15 the total, 7 a category,
# 11 a brand, 13 a price, 14 an attributes object.
_GROUPED = """
SELECT grouping(category, brand, price, attributes) AS g, category, brand, price, attributes,
       count(*) AS n
FROM matched
GROUP BY GROUPING SETS ((), (category), (brand), (price), (attributes))
"""

# the price buckets' width (no row when no product has a price), computed once from the lowest
# and highest price ({range}: a statement giving lo and hi)
_WIDTH = f"""
SELECT CASE WHEN hi > lo THEN mag * CASE WHEN raw / mag <= 1 THEN 1 WHEN raw / mag <= 2 THEN 2
                                         WHEN raw / mag <= 5 THEN 5 ELSE 10 END
            ELSE greatest(hi, 1) END AS width
FROM (SELECT lo, hi, (hi - lo) / {PRICE_BUCKETS} AS raw,
             power(10::numeric, floor(log(greatest((hi - lo) / {PRICE_BUCKETS}, 0.0001)))) AS mag
      FROM ({{range}}) AS r
      WHERE hi IS NOT NULL) AS sized
"""
_BUCKET = _WIDTH.format(range="SELECT min(price) AS lo, max(price) AS hi FROM grouped WHERE g = 13")

# each attribute's (key, value, products) from "grouped": its attribute objects' pairs, summed
_PAIRS = """
         SELECT a.key, a.value #>> '{}' AS value, sum(o.n) AS n
         FROM grouped o CROSS JOIN LATERAL jsonb_each(o.attributes) AS a
         WHERE o.g = 14 AND jsonb_typeof(a.value) IN ('string', 'number', 'boolean')
         GROUP BY a.key, a.value #>> '{}'"""


def _counts(pairs: str) -> str:
    """The facets from "grouped" (and "bucket"), the attributes' pairs from ``pairs``."""
    return f"""
SELECT
  (SELECT n FROM grouped WHERE g = 15) AS total,
  (SELECT json_agg(json_build_array(category, n) ORDER BY n DESC, category) FROM (
     SELECT category, n FROM grouped WHERE g = 7 AND category IS NOT NULL
     ORDER BY n DESC, category LIMIT {TOP_VALUES}) AS c) AS category,
  (SELECT json_agg(json_build_array(brand, n) ORDER BY n DESC, brand) FROM (
     SELECT brand, n FROM grouped WHERE g = 11 AND brand IS NOT NULL
     ORDER BY n DESC, brand LIMIT {TOP_VALUES}) AS b) AS brand,
  (SELECT json_agg(json_build_array(key, key_n, top) ORDER BY key_n DESC, key) FROM (
     SELECT key, sum(n) AS key_n,
            json_agg(json_build_array(value, n) ORDER BY n DESC, value)
              FILTER (WHERE place <= {TOP_VALUES}) AS top
     FROM (
       SELECT key, value, n, row_number() OVER (PARTITION BY key ORDER BY n DESC, value) AS place
       FROM ({pairs}
       ) AS pairs
     ) AS placed
     GROUP BY key ORDER BY key_n DESC, key LIMIT {TOP_KEYS}) AS k) AS attributes,
  (SELECT json_agg(json_build_array(trim_scale(low)::text, trim_scale(low + width)::text, n) ORDER BY low) FROM (
     SELECT div(o.price, s.width) * s.width AS low, s.width, sum(o.n) AS n
     FROM grouped o CROSS JOIN bucket AS s
     WHERE o.g = 13 AND o.price IS NOT NULL
     GROUP BY 1, 2) AS p) AS price
FROM (SELECT 1) AS one
"""


_COUNTS = _counts(_PAIRS)


# A shop's facets from the counts its triggers keep (migration 0039), or those of one of its
# categories or a list of them (kept apart since 0055; {scope}): its count rows summed per value
# make the same "grouped" rows as the one pass (but attribute objects), and the same _counts reads
# them, the attributes' pairs taken from the sums (_KEPT_PAIRS). The price range comes from
# facet_members' index ({range}); a price bucket of width c x 10^j is made of the cells of level
# j (div(price, 10^j)), each given as its lowest price (the same bucket as its prices'). A level
# below 0 (prices within 5 of each other) has no cells kept: ``level`` says so.
_KEPT_SOURCES = """
WITH counts AS MATERIALIZED (
    SELECT facet, key, value, sum(n) AS n, count(*) AS entries
    FROM imgsearch.facet_counts WHERE model_id = :facets_model AND tenant = :facets_tenant AND {scope}
    GROUP BY facet, key, value
), {range}, bucket AS MATERIALIZED ({width}
), level AS MATERIALIZED (
    SELECT CASE WHEN r.hi = r.lo THEN 0 ELSE floor(log(b.width))::integer END AS j FROM range r, bucket b
), grouped AS MATERIALIZED (
    SELECT 15 AS g, NULL::text AS category, NULL::text AS brand, NULL::numeric AS price, NULL::jsonb AS attributes,
           coalesce((SELECT n FROM counts WHERE facet = 'total'), 0) AS n
    UNION ALL SELECT 7, value, NULL, NULL, NULL, n FROM counts WHERE facet = 'category' AND n <> 0
    UNION ALL SELECT 11, NULL, value, NULL, NULL, n FROM counts WHERE facet = 'brand' AND n <> 0
    UNION ALL SELECT 13, NULL, NULL, CASE WHEN r.hi = r.lo THEN r.lo ELSE c.value::numeric * power(10::numeric, l.j) END,
                     NULL, c.n
              FROM counts c, range r, level l WHERE c.facet = 'price' AND c.n <> 0 AND c.key = l.j::text
)
SELECT counts.*, (SELECT j FROM level) AS level, (SELECT count(*) FROM counts) AS values_kept,
       (SELECT coalesce(sum(entries), 0) FROM counts) AS entries
FROM ({counts}) AS counts
"""
# the attributes' pairs straight from the kept counts (as text, the one pass's ``#>> '{}'``): no
# object a value to take apart again (an attribute of 10,000 values: 58 -> 28 ms at 1M products,
# bench/search/facets_scale.py)
_KEPT_PAIRS = """
         SELECT key, value, n FROM counts WHERE facet = 'attribute' AND n <> 0"""
# the scopes' rows: the shop's, or its categories'
_SHOP, _CATEGORIES = "category IS NULL", "category = ANY(CAST(:facets_categories AS text[]))"
# the shop's lowest and highest price, each the first of its members' index
_SHOP_RANGE = """range AS MATERIALIZED (
    SELECT (SELECT price FROM imgsearch.facet_members
            WHERE model_id = :facets_model AND tenant = :facets_tenant AND price IS NOT NULL
            ORDER BY price LIMIT 1) AS lo,
           (SELECT price FROM imgsearch.facet_members
            WHERE model_id = :facets_model AND tenant = :facets_tenant AND price IS NOT NULL
            ORDER BY price DESC LIMIT 1) AS hi
)"""
# the categories' lowest and highest price: the first of each category's members in their index
# (migration 0055), the list's extremes of those (row-level security keeps a price range, whose
# numeric comparisons aren't leakproof, out of an index's conditions: an order is what it reads)
_CATEGORIES_RANGE = """range AS MATERIALIZED (
    SELECT min(r.lo) AS lo, max(r.hi) AS hi
    FROM unnest(CAST(:facets_categories AS text[])) AS c (category)
    CROSS JOIN LATERAL (
        SELECT (SELECT price FROM imgsearch.facet_members
                WHERE model_id = :facets_model AND tenant = :facets_tenant AND category = c.category
                  AND price IS NOT NULL
                ORDER BY price LIMIT 1) AS lo,
               (SELECT price FROM imgsearch.facet_members
                WHERE model_id = :facets_model AND tenant = :facets_tenant AND category = c.category
                  AND price IS NOT NULL
                ORDER BY price DESC LIMIT 1) AS hi
    ) AS r
)"""


def _kept(scope: str, range_: str) -> Any:
    """The facets from the kept counts of ``scope`` (its rows' condition), priced by ``range_``."""
    width = _WIDTH.format(range="SELECT lo, hi FROM range")
    return text(_KEPT_SOURCES.format(scope=scope, range=range_, width=width, counts=_counts(_KEPT_PAIRS)))


_KEPT, _KEPT_IN_CATEGORIES = _kept(_SHOP, _SHOP_RANGE), _kept(_CATEGORIES, _CATEGORIES_RANGE)
# the total and its count rows (folded when they pile up, as the facets' are)
_TOTAL = (
    "SELECT coalesce(sum(n), 0), count(*) FROM imgsearch.facet_counts "
    "WHERE model_id = :facets_model AND tenant = :facets_tenant AND facet = 'total' AND "
)
_KEPT_TOTAL, _KEPT_TOTAL_IN_CATEGORIES = text(_TOTAL + _SHOP), text(_TOTAL + _CATEGORIES)
# the filters whose match set the kept counts hold (imgsearch.search.filters.Filters.shape)
KEPT_SHAPES = frozenset({("tenant",), ("tenant", "category"), ("tenant", "categories")})
# a shop's count rows are folded when they are this many more than its values, and twice as many
COMPACT_AFTER = 1000


def match_set(model: ModelInfo, filters: Filters, lexical_text: bool, fetched: bool = False) -> Any:
    """The products a search matches, with the columns the facets count (``fetched``: the
    text's matches come from :func:`lexical.fetch_matches`)."""
    stmt = select(Product.id, Product.category, Product.brand, Product.price, Product.attributes).where(
        *lexical.counted_conditions(model, filters)
    )
    if lexical_text:
        stmt = stmt.where(lexical.text_match(fetched))
    return stmt


def statement(model: ModelInfo, filters: Filters, lexical_text: bool, fetched: bool = False) -> Any:
    matched = match_set(model, filters, lexical_text, fetched).cte("matched")
    grouped = (
        text(_GROUPED)
        .columns(*(literal_column(name) for name in ("g", "category", "brand", "price", "attributes", "n")))
        .cte("grouped")
        .prefix_with("MATERIALIZED")
    )
    bucket = text(_BUCKET).columns(literal_column("width")).cte("bucket").prefix_with("MATERIALIZED")
    counts = text(_COUNTS).columns(
        literal_column("total"),
        literal_column("category"),
        literal_column("brand"),
        literal_column("attributes"),
        literal_column("price"),
    )
    return counts.subquery("counts").select().add_cte(matched, grouped, bucket)


def total_statement(
    model: ModelInfo, filters: Filters, lexical_text: bool, fetched: bool = False, limit: int | None = None
) -> Any:
    """How many products match; with ``limit``, up to ``limit + 1`` (more than the bound: ``gte``).

    Filters that the search rows answer alone (a tenant, categories, a price range, the
    exclusions: the rows carry their product's tenant, category and price, kept by triggers)
    count the rows' distinct products without reading ``products`` (3x fewer pages for a shop's
    category at 3k products; bench/server/totals.py); brand, attributes, ``where`` and a text's
    matches need the products."""
    if not lexical_text and not filters.on_products and filters.where is None:
        matched = (
            select(Embedding.product_pk)
            .where(model_filter(model.id), *filters.value_conditions(Embedding), *filters.row_conditions())
            .distinct()
        )
    else:
        matched = match_set(model, filters, lexical_text, fetched)
    if limit is not None:
        matched = matched.limit(limit + 1)  # a constant per bound: the statement's text is cached by it
    return select(func.count()).select_from(matched.subquery("matched"))


def count(
    conn: Connection, model: ModelInfo, filters: Filters, text_query: str | None, *, facets: bool,
    limit: int | None = None,
) -> Facets:
    """The total of a search's match set and, with ``facets``, its counts; ``text_query``: a
    lexical search's text (its match set is the products matching it). ``limit``: without facets,
    count up to that many (see the module); facets count everything, their total exact."""
    params: dict[str, Any] = filters.params()
    if text_query is not None:
        params.update(lexical.text_params(text_query))
    lexical_text = text_query is not None
    fetched = lexical_text and citus.on_coordinator(conn)
    if fetched:
        params.update(lexical.fetch_matches(conn, params))
    kept = kept_counts(conn, filters, lexical_text)
    if not facets and kept:
        params = _kept_params(model, filters)
        statement_ = _KEPT_TOTAL_IN_CATEGORIES if "facets_categories" in params else _KEPT_TOTAL
        summed, entries = conn.execute(statement_, params).one()
        kept_total = int(summed)
        if entries > COMPACT_AFTER:  # a total's rows: one a scope once folded
            _compact(conn, params)
        if limit is not None and kept_total > limit:  # reported as a bounded count is (the same answer)
            return Facets(total=limit, relation="gte")
        return Facets(total=kept_total)
    if not facets:
        # built and compiled once per shape, sent with its settings in one round trip
        shape = filters.shape()
        key = None if shape is None else (model.id, shape, lexical_text, fetched, limit)
        rows = _TOTALS.run(
            conn, key, lambda: total_statement(model, filters, lexical_text, fetched, limit), params,
            before=[plans.plain_statement(conn)],
        )  # fmt: skip
        total = int(rows[0][0])
        if limit is not None and total > limit:
            return Facets(total=limit, relation="gte")
        return Facets(total=total)
    plans.plain_settings(conn)
    row = _kept_facets(conn, model, filters) if kept else None
    if row is None:
        row = conn.execute(statement(model, filters, lexical_text, fetched), params).one()
    return Facets(
        total=int(row.total),
        category={str(v): int(n) for v, n in row.category or []},
        brand={str(v): int(n) for v, n in row.brand or []},
        attributes={str(key): {str(v): int(n) for v, n in top or []} for key, _, top in row.attributes or []},
        price=[PriceBucket(Decimal(str(lo)), Decimal(str(hi)), int(n)) for lo, hi, n in row.price or []],
    )


def kept_counts(conn: Connection, filters: Filters, lexical_text: bool) -> bool:
    """Whether a search's facets and total come from the counts the triggers keep (migration
    0039): a shop's whole match set, or one category's or a list's (0055; no other filter, no
    text), on one node (a Citus cluster counts with the one pass). Region rows change no
    product's membership: a search over them or over whole images alone counts the same products."""
    return (
        not lexical_text
        and replace(filters, region_rows=None).shape() in KEPT_SHAPES
        and not filters.sharded
        and not citus.on_coordinator(conn)
    )


def _kept_facets(conn: Connection, model: ModelInfo, filters: Filters) -> Any:
    """A shop's facets from its kept counts, its count rows folded when they have piled up (on a
    primary); None where the price buckets are finer than the kept cells (the one pass counts)."""
    params = _kept_params(model, filters)
    row = conn.execute(_KEPT_IN_CATEGORIES if "facets_categories" in params else _KEPT, params).one()
    if row.entries > 2 * row.values_kept + COMPACT_AFTER:
        _compact(conn, params)
    return None if row.level is not None and row.level < 0 else row


def _compact(conn: Connection, params: dict[str, Any]) -> None:
    """Fold the shop's count rows, on a primary (a replica's read changes nothing)."""
    if not engine.read_only(conn):
        conn.execute(
            text("SELECT imgsearch.compact_facet_counts(:facets_tenant, CAST(:facets_model AS smallint))"), params
        )


def _kept_params(model: ModelInfo, filters: Filters) -> dict[str, Any]:
    """The kept counts' scope: the shop, with ``facets_categories`` its categories."""
    params: dict[str, Any] = {"facets_model": model.id, "facets_tenant": filters.tenant_name()}
    category, categories = filters.value("category"), filters.value("categories")
    if category is not None or categories is not None:
        params["facets_categories"] = [category] if category is not None else list(categories)
    return params
