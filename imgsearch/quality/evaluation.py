"""Retrieval quality on a labelled set: recall@k, precision@k, mAP, nDCG@k and MRR.

A labelled set is queries with the products (or images) that should come back for them:

* JSONL, one query a line: exactly one of ``text``, ``image`` (a file, relative to the set's
  folder), ``image_id`` or ``vector`` (a query embedding made by the catalog's model, e.g. one
  whose vectors come from elsewhere); ``relevant_products`` or ``relevant_images``, a list, or an object of
  id -> grade for graded relevance (default grade 1); optional ``id``, ``tenant`` and ``filters``
  (``category``, ``price_min``, ``price_max``, ``attributes``);
* CSV with the columns ``id, text, image, image_id, vector, relevant_products, relevant_images,
  tenant, category, price_min, price_max`` (lists separated by ``|``, a grade after ``:``:
  ``sku-1:2``; ``vector`` as a JSON list);
* a folder of one subfolder per class (Corel, Holidays or INSTRE style): every image is a query
  (by its stored image, found by its bytes' SHA-256), and the other images of its class are its
  relevant set; the query image itself is left out of its results.

Each query runs three ways: **ann** (``catalog.search``, as an application searches), **exact**
(every row's distance, no index: what the ANN path approximates) and **filtered** (the ANN path
with the query's filters, when the set gives any). Relevance metrics are reported for each, and
``ann_recall`` separately: the share of the exact top k the ANN path found. So index loss and
model quality don't mix.

Metrics, per query, then averaged: ``recall@k`` = relevant in the top k / all relevant;
``precision@k`` = relevant in the top k / k; ``AP`` = the mean, over the relevant items, of the
precision at the rank each is found (0 for those not found within ``depth``); ``nDCG@k`` with gains
``2^grade - 1`` and discounts ``log2(rank + 1)``; ``RR`` = 1 / the rank of the first relevant.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text

from imgsearch.access import tenancy
from imgsearch.catalog import Catalog
from imgsearch.errors import InvalidInput
from imgsearch.ingest.vectors import as_vector

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
WAYS = ("ann", "exact", "filtered")
MODES = ("semantic", "lexical", "hybrid")  # text queries' modes, each a way of its own (--mode)


@dataclass
class Query:
    id: str
    relevant: dict[str, float]  # product or image id (as text) -> grade
    text: str | None = None
    image: Path | None = None
    image_id: int | None = None
    vector: Any = None
    tenant: str | None = None
    filters: dict[str, Any] = field(default_factory=dict)


@dataclass
class LabelledSet:
    queries: list[Query]
    by: str  # "product" or "image": what the relevant ids name


def metrics(ranked: Sequence[str], relevant: dict[str, float], k: int) -> dict[str, float]:
    """The metrics of one ranked list of ids against the relevant ids and their grades."""
    if not relevant:
        raise InvalidInput("a query needs at least one relevant id")
    top = list(ranked[:k])
    found = [i for i in top if i in relevant]
    hits, precisions = 0, []
    for rank, item in enumerate(ranked, start=1):
        if item in relevant:
            hits += 1
            precisions.append(hits / rank)
    dcg = sum(
        (2 ** relevant[item] - 1) / math.log2(rank + 1)
        for rank, item in enumerate(top, start=1)
        if item in relevant
    )
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum((2**grade - 1) / math.log2(rank + 1) for rank, grade in enumerate(ideal, start=1))
    first = next((rank for rank, item in enumerate(ranked, start=1) if item in relevant), None)
    return {
        "recall": len(found) / len(relevant),
        "precision": len(found) / k,
        "ap": sum(precisions) / len(relevant),
        "ndcg": dcg / idcg if idcg else 0.0,
        "rr": 1 / first if first else 0.0,
    }


# -- reading a set --------------------------------------------------------------------------------


def _relevant(value: Any, where: str) -> dict[str, float]:
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = [(v, 1.0) for v in value]
    elif isinstance(value, str):
        items = []
        for part in value.split("|"):
            name, _, grade = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "1")
            items.append((name, grade or 1))
    else:
        raise InvalidInput(f"{where}: relevant ids must be a list, an object of grades or a |-separated text")
    graded = {}
    for name, grade in items:
        try:
            graded[str(name).strip()] = float(grade)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{where}: the grade of {name!r} is not a number: {grade!r}") from exc
    return {name: grade for name, grade in graded.items() if name}


def _query(row: dict[str, Any], folder: Path, where: str) -> tuple[Query, str]:
    kinds = [name for name in ("text", "image", "image_id", "vector") if row.get(name) not in (None, "")]
    if len(kinds) != 1:
        raise InvalidInput(
            f"{where}: give exactly one of text, image, image_id and vector, got {kinds or 'none'}"
        )
    vector = row.get("vector")
    if isinstance(vector, str) and vector:
        try:
            vector = json.loads(vector)
        except ValueError as exc:
            raise InvalidInput(f"{where}: vector must be a JSON list of numbers: {exc}") from exc
    products, images = (
        _relevant(row.get("relevant_products"), where),
        _relevant(row.get("relevant_images"), where),
    )
    if bool(products) == bool(images):
        raise InvalidInput(f"{where}: give relevant_products or relevant_images (one of them, not empty)")
    filters = dict(row.get("filters") or {})
    for name in ("category", "price_min", "price_max", "attributes"):
        if row.get(name) not in (None, ""):
            filters[name] = row[name]
    image_id = row.get("image_id")
    try:
        image_id = int(image_id) if image_id not in (None, "") else None
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{where}: image_id must be an integer, got {row.get('image_id')!r}") from exc
    query = Query(
        id=str(row.get("id") or where),
        relevant=products or images,
        text=row.get("text") or None,
        image=(folder / str(row["image"])) if row.get("image") else None,
        image_id=image_id,
        vector=vector if vector not in (None, "") else None,
        tenant=row.get("tenant") or None,
        filters=filters,
    )
    return query, "product" if products else "image"


def load_set(path: str | Path, catalog: Catalog | None = None, tenant: str | None = None) -> LabelledSet:
    """Read a labelled set: a ``.jsonl`` or ``.csv`` file, or a folder of class folders (whose
    images are looked up in ``catalog`` by their bytes, within ``tenant``)."""
    path = Path(path)
    if path.is_dir():
        if catalog is None:
            raise InvalidInput("a folder set needs the catalog its images were uploaded to")
        return _folder_set(path, catalog, tenant)
    if not path.is_file():
        raise InvalidInput(f"no labelled set at {path}")
    rows: list[dict[str, Any]] = []
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InvalidInput(f"{path}:{number}: not JSON: {exc.msg}") from exc
    elif path.suffix.lower() == ".csv":
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        raise InvalidInput(f"{path}: a labelled set is a .jsonl or .csv file, or a folder of class folders")
    queries, kinds = [], set()
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise InvalidInput(f"{path}:{number}: a query must be a JSON object")
        if tenant is not None and not row.get("tenant"):
            row = {**row, "tenant": tenant}
        query, kind = _query(row, path.parent, f"{path}:{number}")
        queries.append(query)
        kinds.add(kind)
    if len(kinds) > 1:
        raise InvalidInput(f"{path}: mixes relevant_products and relevant_images; use one of them")
    if not queries:
        raise InvalidInput(f"{path}: no queries")
    return LabelledSet(queries, kinds.pop())


def _folder_set(root: Path, catalog: Catalog, tenant: str | None) -> LabelledSet:
    classes: dict[str, list[int]] = {}
    missing = []
    with catalog.engine.begin() as conn:
        if tenant is not None:
            tenancy.scope(conn, tenant)
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            for file in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                digest = hashlib.sha256(file.read_bytes()).digest()
                found = conn.execute(
                    text("SELECT id FROM imgsearch.images WHERE sha256 = :h ORDER BY id LIMIT 1"),
                    {"h": digest},
                ).scalar()
                if found is None:
                    missing.append(str(file))
                else:
                    classes.setdefault(folder.name, []).append(int(found))
    if missing:
        raise InvalidInput(
            f"{len(missing)} images of {root} are not in the catalog (upload them first), e.g. {missing[0]}"
        )
    queries = [
        Query(
            id=f"{name}/{image}",
            relevant={str(other): 1.0 for other in ids if other != image},
            image_id=image,
            tenant=tenant,
        )
        for name, ids in classes.items()
        for image in ids
        if len(ids) > 1
    ]
    if not queries:
        raise InvalidInput(f"{root}: no class folder with two or more images")
    return LabelledSet(queries, "image")


# -- running it -----------------------------------------------------------------------------------


@dataclass
class Report:
    k: int
    by: str
    model: str
    summary: dict[str, dict[str, float]]  # way -> metric -> mean
    ann_recall: float  # share of the exact top k the ANN path found
    queries: list[dict[str, Any]]  # per query: id, metrics per way, top ids per way

    def as_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "by": self.by,
            "model": self.model,
            "summary": self.summary,
            "ann_recall": self.ann_recall,
            "queries": self.queries,
        }


def _vector(catalog: Catalog, query: Query) -> np.ndarray:
    if query.vector is not None:
        return as_vector(query.vector, catalog.dim, f"query {query.id}'s vector")
    if query.text is not None:
        return np.asarray(catalog.embedder.embed_text(query.text))
    if query.image is not None:
        if not query.image.is_file():
            raise InvalidInput(f"query {query.id}: no image file {query.image}")
        return np.asarray(catalog.embedder.embed_image(query.image.read_bytes()))
    assert query.image_id is not None
    with catalog.engine.begin() as conn:
        if query.tenant is not None:
            tenancy.scope(conn, query.tenant)
        stored = conn.execute(
            text("SELECT embedding::text FROM imgsearch.embeddings WHERE image_id = :i AND model_id = :m AND region = 0"),
            {"i": query.image_id, "m": catalog.active_model.id},
        ).scalar()
    if stored is None:
        raise InvalidInput(f"query {query.id}: image {query.image_id} has no embedding under {catalog.model}")
    return np.array(stored.strip("[]").split(","), dtype=np.float32)


def _exact(catalog: Catalog, vector: np.ndarray, query: Query, by: str, depth: int) -> list[str]:
    """Every row's distance, no index (the uncast column: the HNSW index can't serve it)."""
    key = "p.product_id" if by == "product" else "e.image_id::text"
    with catalog.engine.begin() as conn:
        if query.tenant is not None:
            tenancy.scope(conn, query.tenant)
        rows = conn.execute(
            text(
                f"SELECT key FROM (SELECT DISTINCT ON (key) {key} AS key, e.embedding <=> CAST(:q AS halfvec) AS d "
                "FROM imgsearch.embeddings e JOIN imgsearch.products p ON p.id = e.product_pk "
                "WHERE e.model_id = :m AND e.image_id IS DISTINCT FROM :skip ORDER BY key, d) AS best "
                "ORDER BY d, key LIMIT :depth"
            ),
            {"q": str(vector.tolist()), "m": catalog.active_model.id, "skip": query.image_id, "depth": depth},
        ).scalars()
        return [str(r) for r in rows]


def _ann(
    catalog: Catalog, vector: np.ndarray, query: Query, by: str, depth: int, filters: dict[str, Any]
) -> list[str]:
    # an image query leaves its own image out before products are grouped (similar_to does)
    source: dict[str, Any] = (
        {"similar_to": query.image_id} if query.image_id is not None else {"vector": vector}
    )
    hits = catalog.search(**source, tenant=query.tenant, k=depth, group_by_product=by == "product", **filters)
    return [hit.product_id if by == "product" else str(hit.image_id) for hit in hits]


def _by_mode(catalog: Catalog, query: Query, by: str, depth: int, mode: str) -> list[str]:
    """A text query's results in one search mode (its filters applied, the words not parsed:
    the modes compare retrieval, not query understanding)."""
    hits = catalog.search(
        text=query.text, mode=mode, parse=False, tenant=query.tenant, k=depth,
        group_by_product=by == "product", total=False, **query.filters,
    )  # fmt: skip
    return [hit.product_id if by == "product" else str(hit.image_id) for hit in hits]


def evaluate(
    catalog: Catalog, labelled: LabelledSet, *, k: int = 10, depth: int = 100, modes: Sequence[str] = ()
) -> Report:
    """Run every query of ``labelled`` three ways on ``catalog`` (see the module's doc), and each
    text query in each of ``modes`` (:data:`MODES`) as a way of its own."""
    if not 1 <= k <= depth <= 1000:
        raise InvalidInput(f"k must be from 1 to depth ({depth}) and depth at most 1000, got k={k}")
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        raise InvalidInput(f"unknown modes {unknown}; modes are {', '.join(MODES)}")
    per_query: list[dict[str, Any]] = []
    overlaps: list[float] = []
    # image queries run under the model that serves them (a second model's, when the catalog keeps one)
    own = catalog.image_model.id == catalog.active_model.id
    images = catalog if own else catalog.with_model(catalog.image_model.name)
    for query in labelled.queries:
        under = images if query.image is not None or query.image_id is not None else catalog
        vector = _vector(under, query)
        ranked = {
            "ann": _ann(under, vector, query, labelled.by, depth, {}),
            "exact": _exact(under, vector, query, labelled.by, depth),
        }
        if query.filters:
            ranked["filtered"] = _ann(under, vector, query, labelled.by, depth, query.filters)
        if query.text is not None:
            for mode in modes:
                ranked[mode] = _by_mode(catalog, query, labelled.by, depth, mode)
        exact_top = ranked["exact"][:k]
        if exact_top:
            overlaps.append(len(set(ranked["ann"][:k]) & set(exact_top)) / len(exact_top))
        per_query.append(
            {
                "id": query.id,
                "kind": "text" if query.text is not None else "vector" if query.vector is not None else "image",
                "model": under.model,
                "relevant": sorted(query.relevant),
                **{way: metrics(ids, query.relevant, k) for way, ids in ranked.items()},
                "top": {way: ids[:k] for way, ids in ranked.items()},
            }
        )
    summary = {}
    for way in (*WAYS, *modes):
        rows = [q[way] for q in per_query if way in q]
        if rows:
            summary[way] = {name: float(np.mean([r[name] for r in rows])) for name in rows[0]}
            summary[way]["queries"] = float(len(rows))
    name = catalog.model if own else f"{catalog.model} (images: {images.model})"
    return Report(
        k, labelled.by, name, summary, float(np.mean(overlaps)) if overlaps else 1.0, per_query
    )


def by_kind(report: Report) -> dict[str, tuple[int, float]]:
    """Each kind of query's count and mean nDCG@k on the ANN path (text, image, vector)."""
    found: dict[str, list[float]] = {}
    for query in report.queries:
        found.setdefault(query["kind"], []).append(query["ann"]["ndcg"])
    return {kind: (len(values), float(np.mean(values))) for kind, values in sorted(found.items())}


def compared(reports: Sequence[Report]) -> list[str]:
    """Which of the reports' models serves each kind of query best, by nDCG@k on the ANN path: a
    line per kind, e.g. which of a text model and an image model to activate ``--for image``."""
    lines = []
    kinds = by_kind(reports[0])
    for kind, (count, _) in kinds.items():
        scored = [(by_kind(r).get(kind, (0, 0.0))[1], r) for r in reports]
        best = max(scored, key=lambda pair: pair[0])[1]
        figures = ", ".join(f"{r.model} {score:.3f}" for score, r in scored)
        lines.append(f"{kind} queries ({count}): nDCG@{reports[0].k} {figures}: {best.model} serves them best")
    return lines


def table(reports: Iterable[Report]) -> str:
    """The summaries as a Markdown table."""
    lines = [
        "| model | way | queries | recall@k | precision@k | mAP | nDCG@k | MRR | ANN recall vs exact |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        for way, m in report.summary.items():
            index_loss = f"{report.ann_recall:.3f}" if way == "ann" else ""
            lines.append(
                f"| {report.model} | {way} | {int(m['queries'])} | {m['recall']:.3f} | {m['precision']:.3f} "
                f"| {m['ap']:.3f} | {m['ndcg']:.3f} | {m['rr']:.3f} | {index_loss} |"
            )
    return "\n".join(lines)


def html_page(report: Report, worst: int = 20) -> str:
    """A page of the ``worst`` queries (lowest AP on the ANN path) and their top results, relevant
    ones marked; every value escaped."""
    rows = sorted(report.queries, key=lambda q: q["ann"]["ap"])[:worst]
    parts = [
        "<!DOCTYPE html><html lang='en'><meta charset='utf-8'><title>imgsearch eval</title>",
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 8px;border-bottom:1px solid #ddd}"
        ".hit{background:#d7f5d7}.miss{color:#777}</style>",
        f"<h1>Worst {len(rows)} queries of {len(report.queries)} ({html.escape(report.model)}, k={report.k})</h1>",
        "<table><tr><th>query</th><th>AP</th><th>recall@k</th><th>top results (relevant in green)</th></tr>",
    ]
    for q in rows:
        relevant = set(q["relevant"])
        cells = " ".join(
            f"<span class='{'hit' if item in relevant else 'miss'}'>{html.escape(item)}</span>"
            for item in q["top"]["ann"]
        )
        parts.append(
            f"<tr><td>{html.escape(q['id'])}</td><td>{q['ann']['ap']:.3f}</td><td>{q['ann']['recall']:.3f}</td>"
            f"<td>{cells}</td></tr>"
        )
    parts.append("</table></html>")
    return "\n".join(parts)
