"""Re-ranking a candidate pool: best image per product, maximal marginal relevance, query expansion."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from imgsearch.ingest.vectors import Vector
from imgsearch.records import Hit


def best_per_product(hits: Sequence[Hit]) -> list[int]:
    """Positions of the first (nearest) hit of each product, in order."""
    return _first_of(hits, lambda hit: (hit.tenant, hit.product_id))


def best_per_image(
    hits: Sequence[Hit], margin: float = 0.0, last: float | None = None, nearest_first: bool = True
) -> list[int]:
    """Positions of each image's best row (of a product), best first: an image with region rows
    ranks by ``min(whole row's distance, best region's distance + margin)`` and shows once.
    ``hits``: the nearest rows (``nearest_first``, or in another order: boosted); ``last``: the
    distance beyond which rows weren't fetched (None: every row was), where only images placed at
    most that far are certain."""
    if not margin and nearest_first:  # each image's first row is its best
        return _first_of(hits, lambda hit: (hit.tenant, hit.product_id, hit.image_id))
    best: dict[tuple[Any, ...], tuple[float, int]] = {}
    for position, hit in enumerate(hits):
        key = (hit.tenant, hit.product_id, hit.image_id)
        placed = (hit.distance or 0.0) + (margin if hit.region is not None else 0.0)
        if key not in best or placed < best[key][0]:
            best[key] = (placed, position)
    ranked = sorted(best.values())
    return [position for placed, position in ranked if last is None or placed <= last]


def lifted(hits: Sequence[Hit], positions: Sequence[int], lift: int) -> list[int]:
    """``positions`` (best first: places 1, 2, ...) in the order of ``place - lift * boost``, as
    :func:`imgsearch.search.boosting.order` orders a statement's rows: at a tie, the higher boost,
    then the place. For hits ranked in Python (images by their best region) before their boosts."""
    keyed = []
    for place, position in enumerate(positions, start=1):
        boost = hits[position].boost or 0.0
        keyed.append((place - lift * boost, -boost, place, position))
    return [position for *_, position in sorted(keyed)]


def _first_of(hits: Sequence[Hit], key_of: Callable[[Hit], tuple[Any, ...]]) -> list[int]:
    seen: set[tuple[Any, ...]] = set()
    keep = []
    for position, hit in enumerate(hits):
        key = key_of(hit)
        if key not in seen:
            seen.add(key)
            keep.append(position)
    return keep


def mmr(query: Vector, candidates: np.ndarray, count: int, relevance_weight: float) -> list[int]:
    """Maximal marginal relevance: pick ``count`` candidate positions, each maximising
    ``λ·sim(query, d) − (1 − λ)·max sim(d, already picked)``. λ = 1 is plain relevance order;
    lower λ trades relevance for variety. ``candidates`` are unit row vectors."""
    if len(candidates) == 0:
        return []
    relevance = candidates @ query
    redundancy = np.full(len(candidates), -np.inf)
    chosen: list[int] = []
    available = np.ones(len(candidates), dtype=bool)
    for _ in range(min(count, len(candidates))):
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        scores = relevance_weight * relevance - (1.0 - relevance_weight) * penalty
        scores[~available] = -np.inf
        best = int(np.argmax(scores))
        chosen.append(best)
        available[best] = False
        redundancy = np.maximum(redundancy, candidates @ candidates[best])
    return chosen


def expand_query(query: Vector, neighbours: np.ndarray) -> Vector:
    """The mean of the query and its nearest results, as a unit vector (pseudo relevance feedback)."""
    if len(neighbours) == 0:
        return query
    combined = query + neighbours.sum(axis=0)
    norm = float(np.linalg.norm(combined))
    return query if norm == 0.0 else (combined / norm).astype(np.float32)
