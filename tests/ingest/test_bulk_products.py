"""How a bulk import writes products (imgsearch/ingest/bulk_statements.py, PRODUCTS): a product
named by several rows gets what each gives, as add_many gives it."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog

DIM = 32


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def test_rows_of_one_product_merge_as_uploads_merge_them(catalog: Catalog, tmp_path: Path) -> None:
    """A product's rows each give what they give (a feed giving its fields on its first image's
    row only): the import keeps all of it, as add_many does, and each image's filter columns are
    its product's."""
    data = vectors(3, 9)

    def rows(tenant: str, offset: int) -> list[dict[str, Any]]:
        first = {"category": "shoes", "price": 10, "title": "Red shoe", "attributes": {"color": "red"}}
        return [
            {"tenant": tenant, "product_id": "p1", **first, "embedding": data[0] + offset},
            {
                "tenant": tenant,
                "product_id": "p1",
                "attributes": {"size": "M"},
                "embedding": data[1] + offset,
            },
            {"tenant": tenant, "product_id": "p1", "currency": "EUR", "embedding": data[2] + offset},
        ]

    catalog.add_many(rows("uploaded", 0), progress=False)
    path = tmp_path / "feed.jsonl"
    path.write_text(
        "".join(json.dumps({**row, "embedding": row["embedding"].tolist()}) + "\n" for row in rows("acme", 1))
    )
    assert catalog.import_report(path).imported == 3
    with catalog.engine.connect() as conn:
        products = conn.execute(
            text(
                "SELECT tenant, category, price, currency, title, attributes FROM imgsearch.products ORDER BY tenant"
            )
        ).all()
        columns = conn.execute(
            text("SELECT DISTINCT tenant, category, price FROM imgsearch.embeddings ORDER BY tenant")
        ).all()
    assert products[0][1:] == products[1][1:] == (
        "shoes", Decimal("10"), "EUR", "Red shoe", {"color": "red", "size": "M"}
    )  # fmt: skip
    assert [tuple(row) for row in columns] == [
        ("acme", "shoes", Decimal("10")),
        ("uploaded", "shoes", Decimal("10")),
    ]
    # a later import giving fewer fields keeps the stored ones, and merges attributes
    again = tmp_path / "again.jsonl"
    again.write_text(
        json.dumps(
            {
                "tenant": "acme",
                "product_id": "p1",
                "attributes": {"fit": "wide"},
                "embedding": (data[0] + 1).tolist(),
            }
        )
        + "\n"
    )
    assert catalog.import_report(again).duplicates == 1
    with catalog.engine.connect() as conn:
        merged = conn.execute(
            text("SELECT category, title, attributes FROM imgsearch.products WHERE tenant = 'acme'")
        ).one()
    assert tuple(merged) == ("shoes", "Red shoe", {"color": "red", "size": "M", "fit": "wide"})


def snapshot(catalog: Catalog, tenant: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """A tenant's products, and its embeddings as (product, first values of the vector, filter columns)."""
    with catalog.engine.connect() as conn:
        products = conn.execute(
            text(
                "SELECT product_id, category, price, currency, title, description, brand, attributes "
                "FROM imgsearch.products WHERE tenant = :t ORDER BY product_id"
            ),
            {"t": tenant},
        ).all()
        embeddings = conn.execute(
            text(
                "SELECT p.product_id, e.embedding::text, e.category, e.price FROM imgsearch.embeddings e "
                "JOIN imgsearch.products p ON p.id = e.product_pk WHERE e.tenant = :t ORDER BY 1, 2"
            ),
            {"t": tenant},
        ).all()
    return [tuple(row) for row in products], [tuple(row) for row in embeddings]


@pytest.mark.parametrize("seed", range(4))
def test_an_import_stores_what_add_many_stores(catalog: Catalog, seed: int) -> None:
    """Random batches of rows (products named by several rows, each row giving some of its
    product's fields and attributes; a second batch over the first) leave the same products and
    embeddings whether uploaded with add_many or imported."""
    rng = np.random.default_rng(seed)
    products = {
        f"p{i}": {
            "category": f"c{i % 3}",
            "price": float(rng.integers(1, 500)) / 4,
            "currency": ["EUR", "USD"][i % 2],
            "title": f"Product {i}",
            "description": f"about {i}",
            "brand": f"b{i % 2}",
            "attributes": {key: int(rng.integers(0, 9)) for key in ("size", "color", "fit")},
        }
        for i in range(6)
    }
    vector_seed = 1000 * seed

    def batch(n: int) -> list[dict[str, Any]]:
        nonlocal vector_seed
        rows = []
        for _ in range(n):
            product_id = f"p{rng.integers(0, 6)}"
            given = products[product_id]
            row: dict[str, Any] = {"product_id": product_id}
            for field in ("category", "price", "currency", "title", "description", "brand"):
                if rng.random() < 0.4:
                    row[field] = given[field]
            keys = [key for key in given["attributes"] if rng.random() < 0.4]
            if keys:
                row["attributes"] = {key: given["attributes"][key] for key in keys}
            vector_seed += 1
            row["embedding"] = vectors(1, vector_seed)[0]
            rows.append(row)
        return rows

    for rows in (batch(12), batch(8)):
        catalog.add_many([{**row, "tenant": "uploaded"} for row in rows], progress=False)
        catalog.import_report([{**row, "tenant": "imported"} for row in rows])
    assert snapshot(catalog, "imported") == snapshot(catalog, "uploaded")
    assert len(snapshot(catalog, "imported")[1]) == 20
