"""Text searches by mode: ``semantic`` (SigLIP's text tower against the images), ``lexical``
(the products' words, :mod:`imgsearch.search.lexical`) or ``hybrid``: both, fused by Reciprocal
Rank Fusion, one hit per product.

A hybrid search draws the semantic side's top products through the filtered strategies (exact at
any filter, :mod:`imgsearch.search.strategy`), then one statement ranks the lexical side's top
products under the same filters, fuses the two rankings and joins each product's best image.
Each side brings its top :func:`candidates`; each hit says which side found it at which rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Select, exists, or_, select

from imgsearch.db import citus
from imgsearch.db.compiled import Statements
from imgsearch.db.models import Product
from imgsearch.db.vector_index import query_param, send_binary_queries
from imgsearch.errors import InvalidQuery
from imgsearch.ingest.vectors import Vector
from imgsearch.records import Hit, ModelInfo
from imgsearch.search import lexical, plans, request
from imgsearch.search.filters import Filters
from imgsearch.search.request import Options
from imgsearch.search.strategy import hit_of

MODES = ("hybrid", "semantic", "lexical")
MIN_CANDIDATES = 50  # each side's top products fused, at least
MAX_CANDIDATES = 2000


@dataclass(frozen=True)
class Fusion:
    """Reciprocal Rank Fusion: a product's relevance is ``semantic / (k + its semantic rank) +
    lexical / (k + its lexical rank)``, a side that didn't find it adding nothing."""

    k: float = lexical.RRF_K
    semantic: float = 1.0
    lexical: float = 1.0

    def check(self) -> Fusion:
        for name in ("k", "semantic", "lexical"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidQuery(f"fusion {name} must be a number, got {value!r}")
            if value < 0 or (name == "k" and value == 0):
                raise InvalidQuery(
                    f"fusion {name} must be {'above' if name == 'k' else 'at least'} 0, got {value!r}"
                )
        if self.semantic == 0 and self.lexical == 0:
            raise InvalidQuery("fusion weights semantic and lexical can't both be 0")
        return self


def check_mode(mode: Any, text: str | None) -> str | None:
    """``mode`` checked: None (the default: hybrid for a text when the catalog has product text),
    or one of :data:`MODES`; lexical and hybrid need a text query."""
    if mode is None:
        return None
    if mode not in MODES:
        raise InvalidQuery(f"mode must be one of {list(MODES)}, got {mode!r}")
    if mode != "semantic" and text is None:
        raise InvalidQuery(f"mode {mode!r} needs a text query: it matches the products' words")
    return str(mode)


def check_options(mode: str, options: Options) -> None:
    if mode != "semantic" and options.diversity is not None:
        raise InvalidQuery(f"diversity applies to semantic searches only, not to mode {mode!r}")
    if mode == "lexical" and (options.expand is not None or options.min_score is not None):
        raise InvalidQuery(
            "expand and min_score compare image embeddings: they don't apply to mode 'lexical'"
        )


def has_text(conn: Connection, filters: Filters) -> bool:
    """Whether any product (of the transaction's tenant, under row-level security) has a title,
    a description or a brand; on a Citus cluster the tenant is named too (:meth:`Filters.routed`)."""
    found = or_(Product.title.is_not(None), Product.description.is_not(None), Product.brand.is_not(None))
    return bool(conn.execute(select(exists().where(found, *filters.routed(Product)))).scalar())


def candidates(options: Options) -> int:
    """How many products each side brings to the fusion (with boosts, at least every product a
    boost could lift onto the page)."""
    lift = 0 if options.boosting is None else options.boosting.lift
    wanted = options.k + options.offset
    return min(MAX_CANDIDATES, max(MIN_CANDIDATES, 2 * wanted, wanted + lift))


def run(
    conn: Connection,
    model: ModelInfo,
    query: Vector | None,
    filters: Filters,
    options: Options,
    text: str,
    mode: str,
    fusion: Fusion,
) -> list[Hit]:
    """A lexical or hybrid search's hits, inside the caller's transaction."""
    n = candidates(options)
    params: dict[str, Any] = {
        **lexical.text_params(text),
        **filters.params(),
        "imgsearch_rrf_k": fusion.k,
        "imgsearch_w_semantic": fusion.semantic,
        "imgsearch_w_lexical": fusion.lexical,
    }
    if options.boosting is not None:
        params.update(options.boosting.params())
    hybrid = mode == "hybrid"
    best: dict[tuple[str, str], Hit] = {}
    if hybrid:
        assert query is not None
        # the nearest n images, their products in order of their best image
        side = replace(options, k=n, offset=0, group_by_product=False, boosting=None)
        found = request.run(conn, model, query, filters, side)
        for hit in found:
            best.setdefault((hit.tenant, hit.product_id), hit)
        products = list(best.values())
        params.update(lexical.semantic_params(products))
        params[QUERY_PARAM] = query
    plans.plain_settings(conn, cached_plan=options.cached_plans and filters.plans_alike())
    fetched = citus.on_coordinator(conn)
    if fetched:
        params.update(lexical.fetch_matches(conn, params))
    hits = []
    for row in _fused(conn, model, filters, n, options, hybrid, params, fetched):
        ranks = {"semantic": row.semantic_rank, "lexical": row.lexical_rank}
        matched_by = {side: int(rank) for side, rank in ranks.items() if rank is not None}
        boost = None if options.boosting is None else float(row.boost)
        hit = hit_of(row, matched_by=matched_by, relevance=float(row.relevance), boost=boost)
        seen = best.get((hit.tenant, hit.product_id)) if hybrid else None
        if seen is not None and seen.image_id == hit.image_id and seen.region is not None:
            # the semantic side ranked the image by a region: the hit shows it, at its distance
            hit = replace(hit, region=seen.region, distance=seen.distance, score=seen.score)
        hits.append(hit)
    return hits


QUERY_PARAM = "imgsearch_fusion_query"
STATEMENT_CACHE_SIZE = 256
_statements = Statements(STATEMENT_CACHE_SIZE)


def _fused(
    conn: Connection,
    model: ModelInfo,
    filters: Filters,
    n: int,
    options: Options,
    hybrid: bool,
    params: dict[str, Any],
    fetched: bool,
) -> Sequence[Any]:
    """The rows of the fusion statement for this shape of filters, built once and run with each
    search's values (:class:`Statements`); ``fetched``: the text's matches are in ``params``
    (:func:`lexical.fetch_matches`)."""
    binary = send_binary_queries(conn)
    shape = filters.shape()
    boosted = options.boosting is not None
    page = (n, options.k, options.offset, hybrid, binary, boosted, fetched)
    key = None if shape is None else (model.id, model.dim, shape, *page)

    def build() -> Select[Any]:
        query = query_param(None, model.dim, name=QUERY_PARAM, binary=binary) if hybrid else None
        return lexical.fused_statement(
            model,
            query,
            filters,
            n,
            options.k,
            options.offset,
            hybrid=hybrid,
            boosted=boosted,
            fetched=fetched,
        )

    return _statements.run(conn, key, build, params)


def ranked(hits: list[Hit], offset: int) -> list[Hit]:
    """A semantic search's hits with their ranks: ``matched_by={"semantic": position}``, written
    into each hit's own (new, empty) ``matched_by`` (a ``replace`` of each hit cost more than
    the rest of making it)."""
    for i, hit in enumerate(hits):
        hit.matched_by["semantic"] = offset + i + 1
    return hits
