"""One search request from query vector to hits: strategy, candidate pools and re-ranking.

:mod:`imgsearch.search.strategy` answers "top k rows for this vector and these filters"; this module adds
what users ask for on top: the best image per product, diverse results (MMR), query expansion and
a score cut-off, each computed on a candidate pool drawn with the same guarantees.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sqlalchemy import Connection

from imgsearch.errors import InvalidQuery
from imgsearch.ingest.vectors import Vector
from imgsearch.records import Hit, ModelInfo
from imgsearch.search import rerank
from imgsearch.search.boosting import Boosting
from imgsearch.search.filters import Filters, check_page
from imgsearch.search.plans import EXACT_MAX_FRACTION, EXACT_MAX_ROWS, MIN_EF_SEARCH, Plan
from imgsearch.search.strategy import Result, search_vector
from imgsearch.settings import Settings

MIN_POOL = 50
MAX_POOL = 4000
MAX_EXPAND = 100


@dataclass(frozen=True)
class Options:
    k: int = 10
    offset: int = 0
    group_by_product: bool = False
    diversity: float | None = None  # MMR λ: 1 = relevance only, 0 = variety only
    expand: int | None = None
    min_score: float | None = None
    exact_max_rows: int = EXACT_MAX_ROWS
    exact_max_fraction: float = EXACT_MAX_FRACTION
    cached_plans: bool = True
    on_plan: Callable[[Plan], None] | None = None  # told each statement's plan (metrics)
    # every category of the filter's list has an HNSW index of its own (imgsearch.db.filter_indexes)
    per_value: bool = False
    min_ef: int = MIN_EF_SEARCH  # the least ef_search, for the model's graph's size (search.min_ef_search)
    # the embeddings' row estimate, where statements can't read it (a Citus coordinator: routing)
    row_estimate: int | None = None
    boosting: Boosting | None = None  # learned boosts to blend in (not with diversity: MMR re-ranks)
    # rank an image by the closer of its whole row and its best region (where it has regions),
    # a region's distance plus this margin
    regions: bool = True
    region_margin: float = 0.0
    # far filters may compare binary codes first (settings.binary_codes; routing turns it off
    # where the model's codes didn't pass their check: imgsearch.db.binary_codes)
    codes: bool = True

    def __post_init__(self) -> None:
        self.check()  # every Options is checked, a replace()-d one too

    def check(self) -> None:
        if not isinstance(self.group_by_product, bool):
            raise InvalidQuery(f"group_by_product must be True or False, got {self.group_by_product!r}")
        if not isinstance(self.regions, bool):
            raise InvalidQuery(f"regions must be true or false, got {self.regions!r}")
        if self.diversity is not None and (
            isinstance(self.diversity, bool)
            or not isinstance(self.diversity, int | float)
            or not 0.0 <= self.diversity <= 1.0
        ):
            raise InvalidQuery(
                f"diversity must be a number from 0 (most varied) to 1 (most relevant), got {self.diversity!r}"
            )
        if self.expand is not None and (
            isinstance(self.expand, bool)
            or not isinstance(self.expand, int)
            or not 1 <= self.expand <= MAX_EXPAND
        ):
            raise InvalidQuery(f"expand must be an integer from 1 to {MAX_EXPAND}, got {self.expand!r}")
        if self.min_score is not None and (
            isinstance(self.min_score, bool)
            or not isinstance(self.min_score, int | float)
            or not math.isfinite(self.min_score)
            or not -1.0 <= self.min_score <= 1.0
        ):
            raise InvalidQuery(f"min_score must be a cosine similarity from -1 to 1, got {self.min_score!r}")


def options_for(
    settings: Settings,
    text: str | None,
    k: Any,
    offset: Any,
    group_by_product: Any,
    diversity: Any,
    expand: Any,
    min_score: Any,
    min_probability: Any,
    *,
    on_plan: Callable[[Plan], None] | None = None,
    boosting: Boosting | None = None,
    regions: Any = True,
) -> Options:
    """A request's options, every one checked (before any model work), with the strategy's
    thresholds from ``settings`` (and ``on_plan``, ``boosting`` as given)."""
    k, offset = check_page(k, offset)
    if min_probability is not None:
        if text is None:
            raise InvalidQuery("min_probability applies to text queries only")
        if isinstance(min_probability, bool) or not (
            isinstance(min_probability, int | float) and 0 <= min_probability <= 1
        ):
            raise InvalidQuery(f"min_probability must be a probability from 0 to 1, got {min_probability!r}")
    options = Options(
        k=k,
        offset=offset,
        group_by_product=group_by_product,
        diversity=diversity,
        expand=expand,
        min_score=min_score,
        exact_max_rows=settings.exact_max_rows,
        exact_max_fraction=settings.exact_max_fraction,
        cached_plans=settings.cached_plans,
        on_plan=on_plan,
        boosting=boosting,
        regions=regions,
        region_margin=settings.region_margin,
        codes=settings.binary_codes,
    )
    return options


def run(
    conn: Connection, model: ModelInfo, query: Vector | None, filters: Filters, options: Options
) -> list[Hit]:
    """Hits for one request, inside the caller's transaction."""
    assert query is not None  # a search by vector (routing reads a stored one first)
    if options.expand:
        first = _search(conn, model, query, filters, options, options.expand, with_embeddings=True)
        if not first.hits:
            return []  # nothing matches the filters: nothing to expand with, nor to find
        assert first.embeddings is not None
        query = rerank.expand_query(query, first.embeddings)
    wanted = options.k + options.offset
    boosting = options.boosting if options.diversity is None else None
    # images with region rows come once, by their best row: drawn from a pool as products are
    pooled = options.group_by_product or filters.region_rows is True
    if boosting is not None and not pooled:
        # every hit a boost could lift onto the page: lift places below it, ranked from the first
        found = _search(conn, model, query, filters, options, wanted + boosting.lift, boosting=boosting)
        hits = found.hits[options.offset : wanted]
    elif not pooled and options.diversity is None:
        hits = _search(conn, model, query, filters, options, options.k, options.offset).hits
    else:
        hits = _from_pool(conn, model, query, filters, options, wanted, boosting)[options.offset : wanted]
    if options.min_score is not None:
        hits = [hit for hit in hits if hit.score is not None and hit.score >= options.min_score]
    return hits


def _search(
    conn: Connection,
    model: ModelInfo,
    query: Vector,
    filters: Filters,
    options: Options,
    k: int,
    offset: int = 0,
    with_embeddings: bool = False,
    boosting: Boosting | None = None,
) -> Result:
    """:func:`search_vector` with the options' strategy settings."""
    result = search_vector(
        conn,
        model,
        query,
        filters,
        k,
        offset,
        exact_max_rows=options.exact_max_rows,
        exact_max_fraction=options.exact_max_fraction,
        cached_plans=options.cached_plans,
        with_embeddings=with_embeddings,
        per_value=options.per_value,
        min_ef=options.min_ef,
        row_estimate=options.row_estimate,
        boosting=boosting,
        codes=options.codes,
    )
    if options.on_plan is not None:
        options.on_plan(result.plan)
    return result


def _from_pool(
    conn: Connection,
    model: ModelInfo,
    query: Vector,
    filters: Filters,
    options: Options,
    wanted: int,
    boosting: Boosting | None = None,
) -> list[Hit]:
    """The best ``wanted`` of a pool (per product, or picked by MMR); with ``boosting``, the
    pool's images in their boosted order, each product by its first."""
    lift = 0 if boosting is None else boosting.lift
    pool = min(MAX_POOL, max(MIN_POOL, 4 * wanted, wanted + lift))
    while True:
        embeddings = options.diversity is not None
        result = _search(conn, model, query, filters, options, pool, 0, embeddings, boosting)
        positions = list(range(len(result.hits)))
        exhausted = len(result.hits) < pool or pool >= MAX_POOL
        needed = wanted
        if filters.region_rows:
            # each image by min(its whole row's distance, its best region's + the margin); an
            # image is placed once no row beyond the pool could place it higher
            last = None if exhausted else max(hit.distance or 0.0 for hit in result.hits)
            positions = rerank.best_per_image(result.hits, options.region_margin, last, boosting is None)
            if boosting is not None:
                # the images' places, then their boosts' lifts: every image a boost could lift
                # onto the page is placed first
                positions = rerank.lifted(result.hits, positions, boosting.lift)
                needed = wanted + boosting.lift
        if options.group_by_product:  # each product by its best image
            positions = [positions[p] for p in rerank.best_per_product([result.hits[p] for p in positions])]
        if len(positions) >= needed or exhausted:
            break
        pool = min(MAX_POOL, pool * 4)  # many images per product (rows per image): widen the pool, draw again
    if options.diversity is not None:
        assert result.embeddings is not None
        picked = rerank.mmr(query, result.embeddings[positions], wanted, float(options.diversity))
        positions = [positions[p] for p in picked]
    return [result.hits[p] for p in positions]


def with_probability(hits: list[Hit], probability: Any, min_probability: float | None = None) -> list[Hit]:
    """Attach the model's calibrated probability (text queries on SigLIP) to each hit; with
    ``min_probability``, keep only the hits with none or at least that one."""
    if not hits:
        return hits
    scored = [i for i, hit in enumerate(hits) if hit.score is not None]
    values = probability(np.array([hits[i].score for i in scored])) if scored else None
    if values is None:
        return hits
    hits = list(hits)
    for i, p in zip(scored, np.atleast_1d(values), strict=True):
        hits[i] = replace(hits[i], probability=float(p))
    if min_probability is not None:
        hits = [hit for hit in hits if hit.probability is None or hit.probability >= min_probability]
    return hits
