"""The lexical side of a search, and its fusion with the semantic side, in SQL.

A product matches a text when its weighted document (``products.search_doc``, migration 0020)
matches ``websearch_to_tsquery`` of the text ("phrases", -exclusions, or), or when the text is
its product id; when neither matches any of the shop's products, when its title, brand or id is
a close trigram match (``pg_trgm``: SKUs, brands and typos such as "addidas"; migration 0027).
They rank in that order of evidence: the exact id first, then the document's ``ts_rank_cd``,
then the trigram similarity. Each of the three is served by its own index (GIN, GIN trigram,
B-tree), and only the top ``n`` are ranked.

A product is a candidate only with a search row of the model that matches the filters: the same
rows the semantic side searches, so both sides answer the same question. :func:`fused_statement`
fuses the semantic side's product ranking, computed by the filtered strategies
(:mod:`imgsearch.search.strategy`), with the lexical side by Reciprocal Rank Fusion, and joins each
product's best image, in one statement.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import (
    BigInteger,
    BindParameter,
    Boolean,
    ColumnElement,
    Connection,
    Float,
    Integer,
    Select,
    Text,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal,
    null,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, distinct_on

from imgsearch.db.feedback_models import Boost
from imgsearch.db.models import Embedding, Image, Product
from imgsearch.db.vector_index import model_filter, query_param
from imgsearch.ingest.vectors import Vector
from imgsearch.records import ModelInfo
from imgsearch.search import boosting
from imgsearch.search.filters import Filters
from imgsearch.search.statements import mentions

RRF_K = 60  # Reciprocal Rank Fusion's constant (Cormack et al. 2009): 1 / (k + rank)
TEXT_PARAM = "imgsearch_text"
ID_PARAM = "imgsearch_text_id"
LOWER_PARAM = "imgsearch_text_lower"
NOT_PARAM = "imgsearch_text_not"
_EXCLUDED = re.compile(r'(?:^|(?<=\s))-("[^"]*"?|\S+)')
_OPERATORS = re.compile(r'"|(?:^|(?<=\s))or(?=\s|$)', re.I)


def searchable(model: ModelInfo, filters: Filters) -> ColumnElement[bool]:
    """The product (``products``, correlated) has a search row of ``model`` matching the
    conditions only the rows answer (:meth:`Filters.row_conditions`): the value filters are on the
    product itself (:func:`counted_conditions`), and the rows' copies of its tenant, category and
    price agree (keys and triggers), so the check reads an index of the rows alone."""
    rows = select(literal(1)).select_from(Embedding)
    if mentions(filters, Image.__table__):
        rows = rows.join(Image, filters.same_shop(Image, Image.id, Embedding.image_id, Embedding.tenant))
    rows = rows.where(
        filters.same_shop(Product, Product.id, Embedding.product_pk, Embedding.tenant),
        model_filter(model.id),
        *filters.row_conditions(),
    )
    return exists(rows.correlate(Product))


def counted_conditions(model: ModelInfo, filters: Filters) -> list[ColumnElement[bool]]:
    """``filters`` over ``products``, for the lexical side, totals and facets: every filter on
    the product's own indexed columns (tenant, category or a list, price, brand, attributes),
    then :func:`searchable`: a product counts when a search can return it (an image of it is
    embedded under the model), so a total is what paging reaches."""
    return [*filters.value_conditions(Product), searchable(model, filters)]


def text_params(text: str) -> dict[str, Any]:
    """The lexical statement's values for a query text: the text for ``websearch_to_tsquery``,
    for an exact id and, without its operators, for trigrams; its exclusions (``-word``) apply to
    every kind of match."""
    excluded = [m.group(1).strip('"') for m in _EXCLUDED.finditer(text)]
    plain = " ".join(_OPERATORS.sub(" ", _EXCLUDED.sub(" ", text)).split()).lower()
    return {
        TEXT_PARAM: text,
        ID_PARAM: text.strip(),
        LOWER_PARAM: plain,
        NOT_PARAM: " or ".join(f'"{word}"' for word in excluded if word.strip()) or None,
    }


def _matches(fetched: bool = False) -> Any:
    """``imgsearch.lexical_match`` of the text (:func:`text_params`): the matching products' ids
    and rank parts, read through the text indexes (migration 0020 says why in a function).
    ``fetched``: the function's rows as read before by :func:`fetch_matches`, from its arrays."""
    columns = ("product_pk", "exact_match", "doc_rank", "similarity")
    if fetched:
        arrays = (bindparam(name, type_=ARRAY(type_)) for name, type_ in MATCH_ARRAYS)
        return func.unnest(*arrays).table_valued(*columns).render_derived("lexical_match")
    return (
        func.imgsearch.lexical_match(
            bindparam(TEXT_PARAM, type_=Text()),
            bindparam(LOWER_PARAM, type_=Text()),
            bindparam(ID_PARAM, type_=Text()),
            bindparam(NOT_PARAM, type_=Text()),
        )
        .table_valued(*columns)
        .render_derived("lexical_match")
    )


# the arrays :func:`fetch_matches` passes the matches in
MATCH_ARRAYS = (
    ("imgsearch_lex_products", BigInteger()),
    ("imgsearch_lex_exact", Boolean()),
    ("imgsearch_lex_doc_rank", Float()),
    ("imgsearch_lex_similarity", Float()),
)


def fetch_matches(conn: Connection, params: dict[str, Any]) -> dict[str, Any]:
    """The matches of the text (``params``: :func:`text_params`), read by a statement of their
    own, as the arrays a statement built with ``fetched`` reads (:data:`MATCH_ARRAYS`).

    For a Citus coordinator (:mod:`imgsearch.db.citus`): a statement routed to a shop's node runs
    there whole, and ``imgsearch.lexical_match`` reads the products through the coordinator's
    tables, which a query running on a shard must not (nested distributed execution). Run on
    the coordinator, its own query routes to the shop's node."""
    rows = conn.execute(select(_matches().c), params).all()
    return {name: [row[i] for row in rows] for i, (name, _) in enumerate(MATCH_ARRAYS)}


def text_match(fetched: bool = False) -> ColumnElement[bool]:
    """The product matches the text (:func:`text_params`): its id, its document or a close
    trigram match of its title, brand or id when nothing else matches; and none of the text's
    exclusions."""
    return Product.id.in_(select(_matches(fetched).c.product_pk))


def lexical_ranked(
    model: ModelInfo, filters: Filters, n: int | ColumnElement[Any], fetched: bool = False
) -> Select[Any]:
    """The top ``n`` products matching the text (:func:`text_params`; ``fetched``:
    :func:`fetch_matches`) and the filters: ``product_pk`` and ``rank`` (1 = best): an exact id
    first, then the document's ``ts_rank_cd``, then the trigram similarity.

    The matches are ordered before the filters are checked, so the check walks them best first
    and stops at the ``n``-th that passes (a common word's hundreds of matches: ``n`` checks)."""
    found = _matches(fetched)

    def best_first(rows: Any) -> list[Any]:
        return [rows.c.exact_match.desc(), rows.c.doc_rank.desc(), rows.c.similarity.desc(), rows.c.product_pk]

    ranked = select(found).order_by(*best_first(found)).subquery("ranked_matches")
    order = best_first(ranked)
    return (
        select(Product.id.label("product_pk"), func.row_number().over(order_by=order).label("rank"))
        .select_from(ranked)
        .join(Product, Product.id == ranked.c.product_pk)
        .where(*counted_conditions(model, filters))
        .order_by(*order)
        .limit(n)
    )


def semantic_ranked(filters: Filters) -> Select[Any]:
    """The semantic side's products, best first, from arrays of their tenants, ids and best
    images (``SEMANTIC_PARAMS``): ``product_pk``, ``image_id`` and ``rank`` (the position, from 1);
    the filter's tenant named on the products (a Citus cluster routes by it)."""
    tenants, products, images = SEMANTIC_PARAMS
    rows = (
        func.unnest(
            bindparam(tenants, type_=ARRAY(Text())),
            bindparam(products, type_=ARRAY(Text())),
            bindparam(images, type_=ARRAY(BigInteger())),
        )
        .table_valued("tenant", "product_id", "image_id", with_ordinality="rank")
        .render_derived("sem_rows")
    )
    return select(Product.id.label("product_pk"), rows.c.image_id, rows.c.rank).join_from(
        rows,
        Product,
        and_(
            Product.tenant == rows.c.tenant,
            Product.product_id == rows.c.product_id,
            *filters.routed(Product),
        ),
    )


# the semantic side's arrays: its products' tenants, ids and best images
SEMANTIC_PARAMS = ("imgsearch_sem_tenants", "imgsearch_sem_products", "imgsearch_sem_images")


def semantic_params(hits: list[Any]) -> dict[str, Any]:
    """:func:`semantic_ranked`'s values for the semantic side's hits, one per product, best first."""
    tenants, products, images = SEMANTIC_PARAMS
    return {
        tenants: [hit.tenant for hit in hits],
        products: [hit.product_id for hit in hits],
        images: [hit.image_id for hit in hits],
    }


def _constant(value: int | ColumnElement[Any]) -> ColumnElement[Any]:
    """A number written into the statement's text (a LIMIT the planner knows), or a parameter
    given for it (the SQL console's, :mod:`imgsearch.search.console`)."""
    return literal(value, literal_execute=True) if isinstance(value, int) else value


def fused_statement(
    model: ModelInfo,
    query: Vector | BindParameter[Any] | None,
    filters: Filters,
    n: int | ColumnElement[Any],
    k: int | ColumnElement[Any],
    offset: int,
    *,
    hybrid: bool,
    boosted: bool = False,
    fetched: bool = False,
) -> Select[Any]:
    """Products ranked by Reciprocal Rank Fusion of the semantic side (:func:`semantic_ranked`;
    none when not ``hybrid``) and the lexical side (:func:`lexical_ranked`, its top ``n``), weights
    ``imgsearch_w_semantic`` and ``imgsearch_w_lexical``, constant ``imgsearch_rrf_k``: ``k`` of
    them after ``offset``, each with its best image: the semantic side's, else the product's
    nearest search row to ``query`` (without a query, its first) that matches the filters, by its
    whole row (the caller shows a semantic hit's matched region: :func:`imgsearch.search.hybrid.run`).
    ``boosted``: the products in the order of their places less their boosts' lifts
    (:mod:`imgsearch.search.boosting`), each with its ``boost``. ``fetched``: the text's matches
    come from :func:`fetch_matches`."""
    lexical = lexical_ranked(model, filters, _constant(n), fetched).cte("lexical")
    rrf_k = bindparam("imgsearch_rrf_k", type_=Float())

    def score(weight: str, rank: Any) -> Any:
        return func.coalesce(bindparam(weight, type_=Float()) / (rrf_k + rank), 0.0)

    if hybrid:
        semantic = semantic_ranked(filters).cte("semantic")
        fused = (
            select(
                func.coalesce(semantic.c.product_pk, lexical.c.product_pk).label("product_pk"),
                semantic.c.image_id,
                semantic.c.rank.label("semantic_rank"),
                lexical.c.rank.label("lexical_rank"),
                (
                    score("imgsearch_w_semantic", semantic.c.rank)
                    + score("imgsearch_w_lexical", lexical.c.rank)
                ).label("relevance"),
            )
            .select_from(semantic)
            .join(lexical, lexical.c.product_pk == semantic.c.product_pk, full=True)
        )
    else:
        fused = select(
            lexical.c.product_pk,
            null().cast(BigInteger).label("image_id"),
            null().cast(BigInteger).label("semantic_rank"),
            lexical.c.rank.label("lexical_rank"),
            score("imgsearch_w_lexical", lexical.c.rank).label("relevance"),
        )
    page = (_constant(k), _constant(offset))
    # across a Citus cluster's shards (the text's matches fetched, no tenant named): the fused
    # products materialised on the coordinator, which the shards' rows join by key
    everywhere = fetched and filters.value("tenant") is None
    if boosted:
        every: Any = fused.cte("every").prefix_with("MATERIALIZED") if everywhere else fused.subquery("every")
        place = func.row_number().over(
            order_by=(func.coalesce(every.c.relevance, 0).desc(), every.c.product_pk)
        )
        if everywhere:
            with_boosts, boost = boosting.joined_boost(select().select_from(every), every.c.product_pk)
        else:
            with_boosts = select().select_from(every)
            boost = boosting.boost_by_pk(every.c.product_pk, *filters.routed(Boost))
        scored = with_boosts.add_columns(*every.c, boost.label("boost"), place.label("place")).subquery(
            "scored"
        )
        top = (
            select(*scored.c)
            .order_by(*boosting.order(scored.c.place - boosting.lift() * scored.c.boost, scored.c))
            .limit(page[0])
            .offset(page[1])
            .subquery("fused")
        )
        order: list[Any] = boosting.order(top.c.place - boosting.lift() * top.c.boost, top.c)
        extra: list[Any] = [top.c.boost]
    else:
        top = (
            fused.order_by(func.coalesce(fused.selected_columns.relevance, 0).desc(), "product_pk")
            .limit(page[0])
            .offset(page[1])
            .subquery("fused")
        )
        order, extra = [top.c.relevance.desc(), top.c.product_pk], []
    if query is not None:
        distance: ColumnElement[Any] = Embedding.embedding.cosine_distance(query_param(query, model.dim))
        nearest: list[Any] = [case((Embedding.image_id == top.c.image_id, 0), else_=1), distance]
    else:
        distance, nearest = null().cast(Float()), [Embedding.image_id]
    best = select(
        Embedding.image_id, Embedding.tenant, Embedding.category, Embedding.price, distance.label("distance")
    ).select_from(Embedding)
    if mentions(filters, Image.__table__):
        best = best.join(Image, filters.same_shop(Image, Image.id, Embedding.image_id, Embedding.tenant))
    if everywhere:
        # across a Citus cluster's shards, which run no LIMIT in a subquery joined laterally to
        # rows gathered from all of them: each product's first row in the same order, by DISTINCT ON
        best = best.add_columns(Embedding.product_pk).join(top, Embedding.product_pk == top.c.product_pk)
        if filters.on_products or mentions(filters, Product.__table__):
            best = best.join(
                Product, filters.same_shop(Product, Product.id, Embedding.product_pk, Embedding.tenant)
            )
        best_row: Any = (
            best.where(model_filter(model.id), Embedding.region == 0, *filters.conditions())
            .ext(distinct_on(Embedding.tenant, Embedding.product_pk))
            .order_by(Embedding.tenant, Embedding.product_pk, *nearest)
            .subquery("best")
        )
        product = filters.same_shop(Product, Product.id, top.c.product_pk, best_row.c.tenant)
        joins: list[Any] = [(best_row, best_row.c.product_pk == top.c.product_pk), (Product, product)]
    else:
        best_row = (
            best.where(
                Embedding.product_pk == top.c.product_pk,
                model_filter(model.id),
                Embedding.region == 0,
                *filters.conditions(),
            )
            .order_by(*nearest)
            .limit(1)
            .lateral("best")
        )
        # products before the best row: a filter on them (attributes, brand) reads the joined row
        product = and_(Product.id == top.c.product_pk, *filters.routed(Product))
        joins = [(Product, product), (best_row, true())]
    stmt = (
        select(
            best_row.c.image_id,
            Product.product_id,
            Product.title,
            Product.brand,
            Product.currency,
            best_row.c.tenant,
            best_row.c.category,
            best_row.c.price,
            best_row.c.distance,
            top.c.semantic_rank.cast(Integer).label("semantic_rank"),
            top.c.lexical_rank.cast(Integer).label("lexical_rank"),
            top.c.relevance,
            *extra,
        )
        .select_from(top)
        .order_by(*order)
    )
    for joined_table, on in joins:
        stmt = stmt.join(joined_table, on)
    return stmt
