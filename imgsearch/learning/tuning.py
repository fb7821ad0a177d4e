"""``imgsearch tune``: a tenant's query adapter trained, stored, activated and rolled back
(:mod:`imgsearch.learning.adapter` trains it; migration 0023 stores it).

Training pairs, each a query vector and a product of the tenant:

* **events**: a text search's query and a product a shopper clicked, added to a cart or bought
  from its hits (:mod:`imgsearch.learning.events`);
* **titles**: each product's title and the product;
* **a pairs file**: JSON Lines of ``{"text": ...}`` or ``{"vector": [...]}`` with ``"product_id"``.

A product's target is the mean of its images' embeddings under the active model. Adapters are
versioned per tenant and model; one is active at most, and only one that beat the identity on its
held-out pairs may be (:func:`activate` refuses the others and names the figures).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, text

from imgsearch.access import tenancy
from imgsearch.errors import InvalidInput, NotFound
from imgsearch.ingest import checks
from imgsearch.ingest.vectors import as_vector
from imgsearch.learning import adapter
from imgsearch.records import ModelInfo

REFRESH_SECONDS = 30.0  # how soon an open catalog follows an activation elsewhere


@dataclass(frozen=True)
class Pairs:
    """Training pairs: query vectors, their products' rows in ``products`` (unit targets), and
    each pair's query (its group for the held-out split)."""

    queries: np.ndarray
    targets: list[int]
    groups: list[Any]
    products: np.ndarray
    product_ids: list[str]
    sources: dict[str, int]
    kinds: list[str]  # each pair's source: "events", "titles" or "file"

    @property
    def judged(self) -> list[bool] | None:
        """The pairs an adapter is judged on, when the shop has any but titles: what shoppers
        typed (and the pairs file, the shop's own choice). Titles still train it, but a title
        ("red mug") is not how shoppers ask ("a red mug"), and a map that learns one may lose on
        the other; None when titles are all there is."""
        marks = [kind != "titles" for kind in self.kinds]
        return marks if any(marks) and not all(marks) else None


@dataclass(frozen=True)
class AdapterInfo:
    id: int
    version: int
    active: bool
    metrics: dict[str, Any]
    created_at: Any

    @property
    def wins(self) -> bool:
        return adapter.wins(_scores(self.metrics, "identity"), _scores(self.metrics, "adapter"))

    def figures(self) -> str:
        i, a = self.metrics["identity"], self.metrics["adapter"]
        return (
            f"held-out MRR {a['mrr']:.3f} vs {i['mrr']:.3f} for the identity, top-1 {a['top1']:.3f} vs "
            f"{i['top1']:.3f}, recall@10 {a['recall10']:.3f} vs {i['recall10']:.3f} ({self.metrics['held_out']} pairs)"
        )


def _scores(metrics: dict[str, Any], name: str) -> adapter.Scores:
    found = metrics[name]
    return adapter.Scores(float(found["top1"]), float(found["recall10"]), float(found["mrr"]))


def _floats(value: Any) -> np.ndarray:
    """A vector as PostgreSQL sends it untyped ("[1,2,3]"), or as pgvector's types give it."""
    if isinstance(value, str):
        return np.asarray(json.loads(value), dtype=np.float32)
    return np.asarray(value.to_list() if hasattr(value, "to_list") else value, dtype=np.float32)


def product_vectors(conn: Connection, model: ModelInfo, tenant: str) -> tuple[list[str], np.ndarray]:
    """``tenant``'s products with an embedding, and each one's mean image embedding."""
    rows = conn.execute(
        text(
            "SELECT p.product_id, e.embedding FROM imgsearch.embeddings e "
            "JOIN imgsearch.products p ON p.tenant = e.tenant AND p.id = e.product_pk "
            "WHERE e.tenant = :t AND e.model_id = :m AND e.region = 0 ORDER BY p.product_id"
        ),
        {"t": tenant, "m": model.id},
    ).all()
    ids: list[str] = []
    sums: list[np.ndarray] = []
    for product_id, embedding in rows:
        vector = _floats(embedding)
        if ids and ids[-1] == product_id:
            sums[-1] += vector
        else:
            ids.append(product_id)
            sums.append(vector.copy())
    vectors = np.asarray(sums, dtype=np.float32).reshape(len(sums), model.dim)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return ids, vectors


def pairs_file_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """Each non-blank line of a pairs file (JSON Lines) with its number from 1, parsed;
    :class:`InvalidInput` for a file that can't be opened or a line that isn't JSON (``imgsearch
    tune`` and ``imgsearch finetune`` read theirs so)."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"pairs file {path}: {exc.strerror or exc}") from exc
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except ValueError as exc:
                raise InvalidInput(f"{path}, line {number}: not JSON: {exc}") from exc


def read_pairs_file(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The lines of a pairs file, numbered from 1, each checked for its shape."""
    for number, pair in pairs_file_lines(path):
        if not isinstance(pair, dict) or set(pair) - {"text", "vector", "product_id"}:
            raise InvalidInput(f"{path}, line {number}: a pair is {{\"text\" or \"vector\", \"product_id\"}}")
        if ("text" in pair) == ("vector" in pair) or "product_id" not in pair:
            raise InvalidInput(f"{path}, line {number}: give \"product_id\" and one of \"text\" and \"vector\"")
        yield number, pair


def gather(
    engine: Engine,
    model: ModelInfo,
    tenant: str,
    embed_texts: Callable[[list[str]], np.ndarray] | None,
    pairs_file: Path | None = None,
    *,
    events: bool = True,
    titles: bool = True,
) -> Pairs:
    """Every training pair of ``tenant`` (``embed_texts``: the model's text tower; None for a
    model whose vectors come from elsewhere, which can use a file's vectors only)."""
    tenant = checks.identifier(tenant, "tenant")
    with tenancy.begin(engine, tenant) as conn:
        product_ids, products = product_vectors(conn, model, tenant)
        found_texts: list[tuple[str, str]] = []
        if events and embed_texts is not None:
            found_texts += [
                (query, product_id)
                for query, product_id in conn.execute(
                    text(
                        "SELECT DISTINCT q.user_query, p.product_id FROM imgsearch.search_events e "
                        "JOIN imgsearch.search_queries q ON q.tenant = e.tenant AND q.query_id = e.query_id "
                        "AND q.searched_at = uuid_extract_timestamp(e.query_id) "
                        "JOIN imgsearch.products p ON p.tenant = e.tenant AND p.id = e.product_pk "
                        "WHERE e.tenant = :t AND e.action_name IN ('click', 'add_to_cart', 'purchase') "
                        "AND q.user_query IS NOT NULL"
                    ),
                    {"t": tenant},
                ).all()
            ]
        from_events = len(found_texts)
        if titles and embed_texts is not None:
            found_texts += [
                (title, product_id)
                for title, product_id in conn.execute(
                    text("SELECT title, product_id FROM imgsearch.products WHERE tenant = :t AND title IS NOT NULL"),
                    {"t": tenant},
                ).all()
            ]
    row_of = {product_id: i for i, product_id in enumerate(product_ids)}
    queries: list[np.ndarray] = []
    targets: list[int] = []
    groups: list[Any] = []
    kinds: list[str] = []
    texts: list[tuple[str, str, str]] = [
        (t, p, "events" if i < from_events else "titles") for i, (t, p) in enumerate(found_texts) if p in row_of
    ]
    from_file = 0
    if pairs_file is not None:
        for number, pair in read_pairs_file(pairs_file):
            product_id = str(pair["product_id"])
            if product_id not in row_of:
                raise InvalidInput(f"{pairs_file}, line {number}: {tenant} has no embedded product {product_id!r}")
            if "text" in pair:
                if embed_texts is None:
                    raise InvalidInput(f"{pairs_file}, line {number}: the model embeds no text; give \"vector\"")
                texts.append((str(pair["text"]), product_id, "file"))
            else:
                vector = as_vector(pair["vector"], model.dim, f"{pairs_file}, line {number}: vector")
                queries.append(vector)
                targets.append(row_of[product_id])
                groups.append(("vector", number))
                kinds.append("file")
            from_file += 1
    if texts:
        assert embed_texts is not None
        unique = sorted({t for t, _, _ in texts})
        embedded: dict[str, np.ndarray] = {}
        for start in range(0, len(unique), 64):
            chunk = unique[start : start + 64]
            for query, vector in zip(chunk, np.asarray(embed_texts(chunk)), strict=True):
                embedded[query] = vector
        for query, product_id, kind in texts:
            queries.append(embedded[query])
            targets.append(row_of[product_id])
            groups.append(query.casefold().strip())
            kinds.append(kind)
    sources = {"events": from_events, "titles": len(found_texts) - from_events, "file": from_file}
    matrix = np.asarray(queries, dtype=np.float32).reshape(len(queries), model.dim)
    return Pairs(matrix, targets, groups, products, product_ids, sources, kinds)


def store(engine: Engine, tenant: str, model: ModelInfo, trained: adapter.Trained) -> AdapterInfo:
    """Keep a trained adapter as the next version of ``tenant``'s, not active."""
    with tenancy.begin(engine, tenant) as conn:
        found = conn.execute(
            text(
                "INSERT INTO imgsearch.query_adapters (tenant, model_id, version, dim, metrics) "
                "SELECT :t, :m, coalesce(max(version), 0) + 1, :d, CAST(:metrics AS jsonb) "
                "FROM imgsearch.query_adapters WHERE tenant = :t AND model_id = :m "
                "RETURNING id, version, active, metrics, created_at"
            ),
            {"t": tenant, "m": model.id, "d": model.dim, "metrics": json.dumps(trained.metrics())},
        ).one()
        conn.execute(
            text(
                'INSERT INTO imgsearch.query_adapter_rows (adapter_id, "row", tenant, weights) '
                "VALUES (:a, :r, :t, CAST(:w AS vector))"
            ),
            [
                {"a": found.id, "r": i, "t": tenant, "w": "[" + ",".join(f"{x:.7g}" for x in row) + "]"}
                for i, row in enumerate(trained.weights)
            ],
        )
    return AdapterInfo(found.id, found.version, found.active, found.metrics, found.created_at)


def listed(engine: Engine, tenant: str, model: ModelInfo) -> list[AdapterInfo]:
    """``tenant``'s adapters for ``model``, newest first."""
    tenant = checks.identifier(tenant, "tenant")  # as stored: the statements name it
    with tenancy.begin(engine, tenant) as conn:
        rows = conn.execute(
            text(
                "SELECT id, version, active, metrics, created_at FROM imgsearch.query_adapters "
                "WHERE tenant = :t AND model_id = :m ORDER BY version DESC"
            ),
            {"t": tenant, "m": model.id},
        ).all()
    return [AdapterInfo(r.id, r.version, r.active, r.metrics, r.created_at) for r in rows]


def activate(engine: Engine, tenant: str, model: ModelInfo, adapter_id: int) -> AdapterInfo:
    """Make ``adapter_id`` the one searches use; refused, with its figures, unless it beat the
    identity on its held-out pairs."""
    tenant = checks.identifier(tenant, "tenant")  # as stored: the statements name it
    found = {info.id: info for info in listed(engine, tenant, model)}.get(adapter_id)
    if found is None:
        raise NotFound(f"{tenant} has no adapter {adapter_id} for model {model.name}")
    if not found.wins:
        raise InvalidInput(
            f"adapter {adapter_id} didn't beat the identity, so it would make searches worse: "
            f"{found.figures()}; not activated"
        )
    with tenancy.begin(engine, tenant) as conn:
        current = conn.execute(
            text(
                "SELECT id FROM imgsearch.query_adapters WHERE tenant = :t AND model_id = :m AND active FOR UPDATE"
            ),
            {"t": tenant, "m": model.id},
        ).scalar()
        if current == adapter_id:
            return found
        conn.execute(
            text("UPDATE imgsearch.query_adapters SET active = false WHERE tenant = :t AND id = :c"),
            {"t": tenant, "c": current},
        )
        conn.execute(
            text(
                "UPDATE imgsearch.query_adapters SET active = true, activated_at = now(), previous_id = :c "
                "WHERE tenant = :t AND id = :a"
            ),
            {"t": tenant, "a": adapter_id, "c": current},
        )
    return AdapterInfo(found.id, found.version, True, found.metrics, found.created_at)


def rollback(engine: Engine, tenant: str, model: ModelInfo) -> AdapterInfo | None:
    """Deactivate the active adapter and reactivate the one it replaced (None: the identity)."""
    tenant = checks.identifier(tenant, "tenant")  # as stored: the statements name it
    with tenancy.begin(engine, tenant) as conn:
        current = conn.execute(
            text(
                "SELECT id, previous_id FROM imgsearch.query_adapters"
                " WHERE tenant = :t AND model_id = :m AND active FOR UPDATE"
            ),
            {"t": tenant, "m": model.id},
        ).one_or_none()
        if current is None:
            raise NotFound(f"{tenant} has no active adapter for model {model.name}: nothing to roll back")
        conn.execute(
            text("UPDATE imgsearch.query_adapters SET active = false WHERE tenant = :t AND id = :c"),
            {"t": tenant, "c": current.id},
        )
        if current.previous_id is None:
            return None
        conn.execute(
            text(
                "UPDATE imgsearch.query_adapters SET active = true, activated_at = now()"
                " WHERE tenant = :t AND id = :p"
            ),
            {"t": tenant, "p": current.previous_id},
        )
    return {info.id: info for info in listed(engine, tenant, model)}.get(current.previous_id)


class Adapters:
    """The active adapter of each tenant and model, as searches use it: asked for at most every
    :data:`REFRESH_SECONDS` per tenant, its matrix read once per activation."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int], tuple[float, int | None, np.ndarray | None]] = {}

    def forget(self) -> None:
        self._known.clear()

    def get(self, engine: Engine, tenant: str, model: ModelInfo) -> np.ndarray | None:
        key = (tenant, model.id)
        now = time.monotonic()
        known = self._known.get(key)
        if known is not None and now - known[0] < REFRESH_SECONDS:
            return known[2]
        with tenancy.begin(engine, tenant) as conn:
            active = conn.execute(
                text(
                    "SELECT id FROM imgsearch.query_adapters WHERE tenant = :t AND model_id = :m AND active"
                ),
                {"t": tenant, "m": model.id},
            ).scalar()
            weights = known[2] if known is not None and known[1] == active else None
            if active is not None and weights is None:
                rows = conn.execute(
                    text(
                        'SELECT weights FROM imgsearch.query_adapter_rows WHERE tenant = :t AND adapter_id = :a ORDER BY "row"'
                    ),
                    {"t": tenant, "a": active},
                ).scalars()
                weights = np.asarray([_floats(row) for row in rows], dtype=np.float32)
        self._known[key] = (now, active, weights)
        return weights
