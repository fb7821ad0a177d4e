"""A per-shop query adapter: a d x d linear map applied to query vectors before the search, trained
on a shop's (query, product) pairs, started at the identity and held near it.

Stored embeddings are never touched: only the query side moves, so nothing is re-indexed. A map
trained without restraint overfits (on FashionCLIP caption/image pairs, a free one dropped
held-out top-1 from 0.815 to 0.60), so training here

* starts at the identity and adds ``weight_decay * ||W - I||^2`` to the loss;
* keeps the product with the best held-out-within-training score (an early stop on a validation
  slice of the training pairs);
* is judged on pairs it never saw (grouped by query, so a query's pairs are all on one side)
  against the identity. It may be activated only when it wins: held-out MRR higher, recall@10
  no lower (:func:`wins`).

The loss is a softmax over products (cosine / ``temperature``): each pair's product against the
other products of its batch and a sample of the catalog, leaving out the query's other right
products (a title shared by five products, a query with several clicked ones: its twins are not
negatives). Scores are per query, likewise: every product paired with it is a right answer, so
an adapter is never judged on the order of equally right products.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from imgsearch.errors import InvalidInput

Matrix = npt.NDArray[np.float32]
MIN_PAIRS = 20  # fewer than this can't be split into training and held-out pairs that say anything
MIN_STEPS = 25  # batches between two validations, however few the pairs


@dataclass(frozen=True)
class Scores:
    """Retrieval of held-out pairs' products among every product: top-1, recall@10 and MRR."""

    top1: float
    recall10: float
    mrr: float


@dataclass(frozen=True)
class Trained:
    """A trained map and how it and the identity did on the held-out pairs."""

    weights: Matrix
    identity: Scores
    adapter: Scores
    pairs: int  # used for training
    held_out: int
    epochs: int

    @property
    def wins(self) -> bool:
        return wins(self.identity, self.adapter)

    def metrics(self) -> dict[str, Any]:
        return {
            "identity": asdict(self.identity),
            "adapter": asdict(self.adapter),
            "pairs": self.pairs,
            "held_out": self.held_out,
            "epochs": self.epochs,
        }


def wins(identity: Scores, adapter: Scores) -> bool:
    """Whether an adapter may serve searches: a better MRR than the identity's (the right product
    ranked higher on average: top-1 counts most) and recall@10 no worse."""
    return adapter.mrr > identity.mrr and adapter.recall10 >= identity.recall10


def _unit(rows: npt.NDArray[Any]) -> Matrix:
    array: Matrix = np.asarray(rows, dtype=np.float32)
    unit: Matrix = (array / np.maximum(np.linalg.norm(array, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
    return unit


def scores(
    queries: Matrix, targets: Any, products: Matrix, weights: Matrix | None = None, groups: Sequence[Any] | None = None
) -> Scores:
    """How well ``queries`` (mapped by ``weights``) find their ``targets`` (row numbers of
    ``products``, unit vectors) among all ``products``. With ``groups`` (each pair's query), a
    query is scored once, with every product paired with it right: its rank is the first right
    product's, its recall the share of its right products in the top 10 (of at most 10)."""
    targets = np.asarray(targets, dtype=np.int64)
    names = list(range(len(queries))) if groups is None else list(groups)
    first: dict[Any, int] = {}
    right: dict[Any, set[int]] = {}
    for i, name in enumerate(names):
        first.setdefault(name, i)
        right.setdefault(name, set()).add(int(targets[i]))
    rows = list(first.values())
    mapped = _unit(queries[rows] if weights is None else queries[rows] @ weights.T)
    ranks, recalls = [], []
    for start in range(0, len(rows), 1024):
        sims = mapped[start : start + 1024] @ products.T
        for sim, row in zip(sims, rows[start : start + 1024], strict=True):
            wanted = np.fromiter(right[names[row]], dtype=np.int64)
            best = sim[wanted].max()
            ranks.append(int((sim > best).sum()) + 1)
            top = np.argpartition(-sim, min(10, len(sim) - 1))[:10]
            recalls.append(len(set(top.tolist()) & right[names[row]]) / min(10, len(wanted)))
    found = np.asarray(ranks)
    return Scores(float((found == 1).mean()), float(np.mean(recalls)), float((1.0 / found).mean()))


def _twins(groups: Sequence[Any], targets: npt.NDArray[np.int64], count: int) -> tuple[npt.NDArray[np.int64], Any]:
    """Each pair's query as a number, and the sorted keys ``query * count + product`` of every
    (query, right product): what :func:`train` leaves out of a pair's negatives."""
    number: dict[Any, int] = {}
    ids = np.array([number.setdefault(g, len(number)) for g in groups], dtype=np.int64)
    return ids, np.unique(ids * count + targets)


def split(groups: Sequence[Any], held_out: float, seed: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Pair indices for training and for holding out, each group (a query) wholly on one side."""
    names = sorted(set(groups), key=str)
    rng = np.random.default_rng(seed)
    rng.shuffle(names)
    cut = max(1, round(len(names) * held_out))
    out = set(names[:cut])
    mask = np.array([g in out for g in groups])
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def train(
    queries: Matrix,
    targets: Sequence[int],
    products: Matrix,
    groups: Sequence[Any],
    *,
    weight_decay: float = 1.0,
    temperature: float = 0.05,
    epochs: int = 40,
    batch: int = 256,
    negatives: int = 1024,
    lr: float = 1e-3,
    held_out: float = 0.2,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
    judged: Sequence[bool] | None = None,
) -> Trained:
    """Train a map on pairs ``queries[i] -> products[targets[i]]`` (``groups[i]``: the pair's
    query, which decides its side of the split) and score it against the identity on the
    held-out pairs: those marked in ``judged`` when it is given (e.g. what shoppers typed, the
    queries the adapter will serve; ``Pairs.judged``), each side keeping them when it has any.
    A round is a pass over the training pairs, or :data:`MIN_STEPS` batches when they are few;
    ``progress(round, validation MRR)`` after each."""
    import torch

    queries, products = _unit(queries), _unit(products)
    targets_array = np.asarray(targets, dtype=np.int64)
    if len(queries) != len(targets_array) or len(groups) != len(queries):
        raise InvalidInput("queries, targets and groups must have one entry per pair")
    if len(queries) < MIN_PAIRS or len(set(groups)) < 5:
        raise InvalidInput(
            f"tuning needs at least {MIN_PAIRS} pairs of at least 5 different queries, got "
            f"{len(queries)} of {len(set(groups))}"
        )
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise InvalidInput(f"weight_decay must be a number of at least 0, got {weight_decay!r}")
    fit, test = split(groups, held_out, seed)
    fit_groups = [groups[i] for i in fit]
    inner, validation = split(fit_groups, 0.15, seed + 1)
    train_rows, validation_rows = fit[inner], fit[validation]
    if judged is not None:
        if len(judged) != len(queries):
            raise InvalidInput("judged must have one entry per pair")
        marks = np.asarray(judged, dtype=bool)
        validation_rows = validation_rows[marks[validation_rows]] if marks[validation_rows].any() else validation_rows
        test = test[marks[test]] if marks[test].any() else test
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dim = queries.shape[1]
    identity = torch.eye(dim)
    w = torch.nn.Parameter(torch.eye(dim))
    optimiser = torch.optim.Adam([w], lr=lr)
    q_all, p_all = torch.from_numpy(queries), torch.from_numpy(products)
    query_ids, right_keys = _twins(groups, targets_array, len(products))
    validation_groups = [groups[i] for i in validation_rows]

    def validate(weights: Matrix | None) -> float:
        return scores(queries[validation_rows], targets_array[validation_rows], products, weights, validation_groups).mrr

    best = (validate(None), identity.clone(), 0)
    stale = 0
    steps = max(MIN_STEPS, math.ceil(len(train_rows) / batch))  # a round: a pass, or MIN_STEPS batches
    for epoch in range(1, epochs + 1):
        order = np.concatenate([rng.permutation(train_rows) for _ in range(math.ceil(steps * batch / len(train_rows)))])
        for step in range(steps):
            rows = order[step * batch : (step + 1) * batch]
            pool = np.unique(np.concatenate([targets_array[rows], rng.integers(0, len(products), negatives)]))
            where = {int(p): i for i, p in enumerate(pool)}
            labels = torch.tensor([where[int(t)] for t in targets_array[rows]])
            mapped = torch.nn.functional.normalize(q_all[rows] @ w.T, dim=1)
            logits = mapped @ p_all[pool].T / temperature
            twin = np.isin(query_ids[rows][:, None] * len(products) + pool[None, :], right_keys)
            twin[np.arange(len(rows)), labels.numpy()] = False
            logits = logits.masked_fill(torch.from_numpy(twin), float("-inf"))
            loss = torch.nn.functional.cross_entropy(logits, labels)
            loss = loss + weight_decay * ((w - identity) ** 2).sum() / dim
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        current = w.detach().numpy().astype(np.float32)
        mrr = validate(current)
        if progress is not None:
            progress(epoch, mrr)
        if mrr > best[0]:
            best, stale = (mrr, torch.from_numpy(current.copy()), epoch), 0
        else:
            stale += 1
            if stale >= 5:
                break
    weights = best[1].numpy().astype(np.float32)
    tested_q, tested_t, tested_g = queries[test], targets_array[test], [groups[i] for i in test]
    return Trained(
        weights=weights,
        identity=scores(tested_q, tested_t, products, None, tested_g),
        adapter=scores(tested_q, tested_t, products, weights, tested_g),
        pairs=len(fit),
        held_out=len(test),
        epochs=best[2],
    )


def apply(weights: Matrix, vector: npt.NDArray[Any]) -> Matrix:
    """A query vector mapped by an adapter, at unit length."""
    return _unit(weights @ np.asarray(vector, dtype=np.float32))
