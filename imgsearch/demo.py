"""What ``make demo`` runs until image ingestion lands: a synthetic catalog of bring-your-own
vectors (clustered like product photos, categories and prices following the clusters) and a few
filtered searches, printed as tables."""

from __future__ import annotations

import numpy as np
from sqlalchemy import func, select

from imgsearch.catalog import Catalog
from imgsearch.db.models import Product
from imgsearch.records import Hit
from imgsearch.settings import Settings

TENANT = "demo"
CATEGORIES = ["shoes", "bags", "hats", "shirts", "watches", "lamps", "mugs", "chairs"]


def _table(title: str, hits: list[Hit]) -> None:
    print(f"\n{title}")
    print(f"  {'image':>6}  {'product':<10} {'category':<8} {'price':>8}  {'distance':>8}")
    for hit in hits:
        price = f"{hit.price:.2f}" if hit.price is not None else "-"
        print(
            f"  {hit.image_id:>6}  {hit.product_id:<10} {hit.category or '-':<8} {price:>8}  {hit.distance:8.4f}"
        )


def run(settings: Settings, rows: int = 2000) -> int:
    rng = np.random.default_rng(7)
    with Catalog.open(settings=settings) as catalog:
        print(f"catalog: {catalog.engine.url.render_as_string()}  model: {catalog.model} ({catalog.dim}-d)")
        centres = rng.standard_normal((len(CATEGORIES), catalog.dim))
        with catalog.engine.connect() as conn:
            stored = conn.execute(select(func.count()).where(Product.tenant == TENANT)).scalar_one()
        if stored < rows:
            labels = rng.integers(0, len(CATEGORIES), rows)
            vectors = centres[labels] + rng.standard_normal((rows, catalog.dim)) * 0.8
            catalog.add_many(
                {
                    "embedding": vec,
                    "tenant": TENANT,
                    "product_id": f"demo-{i}",
                    "category": CATEGORIES[label],
                    "price": round(float(10 + 20 * label + rng.uniform(0, 30)), 2),
                }
                for i, (vec, label) in enumerate(zip(vectors, labels, strict=True))
            )
            print(f"stored {rows} products with bring-your-own {catalog.dim}-d embeddings")
        query = centres[0] + rng.standard_normal(catalog.dim) * 0.8
        _table("nearest to a 'shoes'-like vector:", catalog.search(vector=query, tenant=TENANT, k=5))
        _table(
            "same vector, only lamps under 200:",
            catalog.search(vector=query, tenant=TENANT, category="lamps", price_max=200, k=5),
        )
        first = catalog.search(vector=query, tenant=TENANT, k=1)[0]
        _table(
            f"more like image {first.image_id}:",
            catalog.search(similar_to=first.image_id, tenant=TENANT, k=5),
        )
    return 0
