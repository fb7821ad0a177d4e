"""Synthetic shoppers, for tests and benchmarks: a shop whose relevance is known to the simulator
and hidden from the search, and shoppers who search it and click with position bias.

:func:`build_shop` adds products around each query text's embedding. The search ranks them by
cosine similarity alone; a shopper's judgement (``grades``, 0 to 3) weighs that similarity and an
appeal of each product the search can't see (price, brand, photos). Boosts learned from what
shoppers click and buy can find the appeal; :func:`ndcg` measures how far a ranking agrees with
the hidden grades.

A :class:`Shopper` follows the cascade model: she reads the hits from the top, clicks one with a
probability that grows with its grade, may buy it, stops when satisfied, and may give up at any
hit. Lower positions are read less: position bias, as real click logs have it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from imgsearch.catalog import Catalog

GRADE_SHARES = (0.1, 0.2, 0.3)  # of each query's products: grade 3, 2, 1 (the rest 0)


@dataclass(frozen=True)
class Shop:
    """A simulated shop: its ``queries``, how often each is asked (``weights``, summing to 1), and
    each query's hidden grades of its products (a product not listed: 0)."""

    tenant: str
    queries: list[str]
    weights: np.ndarray
    grades: dict[str, dict[str, int]]


@dataclass(frozen=True)
class Shopper:
    """The cascade model's probabilities, per grade 0 to 3: ``attract``, a click on a hit she
    reads; ``buy``, a purchase after the click; ``satisfied``, stopping after it. ``patience``:
    reading on after a hit she didn't click."""

    attract: tuple[float, float, float, float] = (0.02, 0.12, 0.4, 0.75)
    buy: tuple[float, float, float, float] = (0.0, 0.02, 0.1, 0.3)
    satisfied: tuple[float, float, float, float] = (0.0, 0.2, 0.5, 0.8)
    patience: float = 0.85


def build_shop(
    catalog: Catalog,
    tenant: str,
    queries: Sequence[str],
    *,
    per_query: int = 30,
    appeal: float = 1.0,
    gap: float = 0.0,
    seed: int = 0,
) -> Shop:
    """Add ``per_query`` products around each query's text embedding (the catalog's model embeds
    the texts), at cosines from 0.95 down to 0.35, each with an appeal drawn from N(0, ``appeal``);
    a product's grade for its query follows similarity (standardised) plus appeal. ``gap``: the
    products lie around a fixed distortion of the text embedding instead, ``I + gap * G``
    (``G`` random, unit scale): a shop whose words the model reads askew, which a query adapter
    can learn and boosts can't."""
    rng = np.random.default_rng(seed)
    vectors = np.asarray(catalog.embedder.embed_texts(list(queries)), dtype=np.float32)
    dim = vectors.shape[1]
    if gap:
        distortion = np.eye(dim) + gap * rng.standard_normal((dim, dim)) / math.sqrt(dim)
        vectors = (vectors @ distortion.T).astype(np.float32)
    rows: list[dict[str, Any]] = []
    grades: dict[str, dict[str, int]] = {}
    for j, (query, vector) in enumerate(zip(queries, vectors, strict=True)):
        unit = vector / np.linalg.norm(vector)
        cosines = np.sort(rng.uniform(0.35, 0.95, per_query))[::-1]
        utility = (cosines - cosines.mean()) / cosines.std() + rng.normal(0.0, appeal, per_query)
        order = np.argsort(-utility)
        cuts = np.cumsum([round(share * per_query) for share in GRADE_SHARES])
        graded: dict[str, int] = {}
        for rank, i in enumerate(order):
            product_id = f"q{j:03d}-{i:03d}"
            graded[product_id] = 3 if rank < cuts[0] else 2 if rank < cuts[1] else 1 if rank < cuts[2] else 0
            noise = rng.standard_normal(len(unit))
            noise -= noise.dot(unit) * unit
            noise /= np.linalg.norm(noise)
            embedding = cosines[i] * unit + math.sqrt(1 - cosines[i] ** 2) * noise
            rows.append({"tenant": tenant, "product_id": product_id, "title": f"{query} {i}", "embedding": embedding})
        grades[query] = graded
    catalog.add_many(rows)
    ranks = np.arange(1, len(queries) + 1, dtype=np.float64)
    weights = (1 / ranks) / (1 / ranks).sum()  # Zipf: the first query asked most
    return Shop(tenant, list(queries), weights, grades)


def session(
    catalog: Catalog, shop: Shop, rng: np.random.Generator, shopper: Shopper = Shopper(), k: int = 10,
    **search: Any,
) -> list[dict[str, Any]]:  # fmt: skip
    """One shopper's search and what she did: the events (impressions, clicks, purchases) to
    record; ``search``: more arguments of the search (``boost=False``)."""
    query = str(rng.choice(shop.queries, p=shop.weights))
    result = catalog.search(text=query, tenant=shop.tenant, k=k, mode="semantic", parse=False, **search)
    grades = shop.grades[query]
    acts = browse([grades.get(hit.product_id, 0) for hit in result], rng, shopper)
    return [
        {"query_id": result.query_id, "action": action, "object_id": result[position - 1].product_id,
         "position": position}
        for position, action in acts
    ]  # fmt: skip


def browse(grades: Sequence[int], rng: np.random.Generator, shopper: Shopper = Shopper()) -> list[tuple[int, str]]:
    """What a shopper does with hits of these grades, top first: ``(position, action)``, each hit
    she reads an ``impression``, then perhaps a ``click`` and a ``purchase``."""
    acts: list[tuple[int, str]] = []
    for position, grade in enumerate(grades, 1):
        acts.append((position, "impression"))
        if rng.random() < shopper.attract[grade]:
            acts.append((position, "click"))
            if rng.random() < shopper.buy[grade]:
                acts.append((position, "purchase"))
            if rng.random() < shopper.satisfied[grade]:
                break
        elif rng.random() > shopper.patience:
            break
    return acts


def run_sessions(
    catalog: Catalog, shop: Shop, count: int, *, seed: int = 0, shopper: Shopper = Shopper(), **search: Any
) -> int:
    """``count`` sessions, their events recorded in batches; the number of events."""
    rng = np.random.default_rng(seed)
    pending: list[dict[str, Any]] = []
    recorded = 0
    for _ in range(count):
        pending += session(catalog, shop, rng, shopper, **search)
        if len(pending) >= 500:
            recorded += catalog.record_events(shop.tenant, pending).recorded
            pending = []
    if pending:
        recorded += catalog.record_events(shop.tenant, pending).recorded
    return recorded


def dcg(grades: Sequence[int]) -> float:
    return float(sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(grades)))


def ndcg(catalog: Catalog, shop: Shop, k: int = 10, **search: Any) -> float:
    """The mean nDCG@k over the shop's queries (each once) of the search's hits against the
    hidden grades (a catalog with ``record_queries`` off keeps these searches out of the log)."""
    scores = []
    for query in shop.queries:
        grades: Mapping[str, int] = shop.grades[query]
        result = catalog.search(text=query, tenant=shop.tenant, k=k, mode="semantic", parse=False, **search)
        ideal = dcg(sorted(grades.values(), reverse=True)[:k])
        scores.append(dcg([grades.get(hit.product_id, 0) for hit in result]) / ideal if ideal else 0.0)
    return float(np.mean(scores))
