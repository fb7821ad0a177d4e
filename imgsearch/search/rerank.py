"""Re-ranking a candidate pool: best image per product, maximal marginal relevance, query expansion."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from imgsearch.ingest.vectors import Vector
from imgsearch.records import Hit


def best_per_product(hits: Sequence[Hit]) -> list[int]:
    """Positions of the first (nearest) hit of each product, in order."""
    seen: set[tuple[str, str]] = set()
    keep = []
    for position, hit in enumerate(hits):
        key = (hit.tenant, hit.product_id)
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
