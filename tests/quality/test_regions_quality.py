"""Regions judged with the small SigLIP trained on drawn products: a grid's regions find the
products inside scenes (2 x 2 drawings) several times as often as whole images do, and photos of
one product lose at most 0.02 precision@10 to their own crops (the region margin's job).
bench/quality/regions.py measures the same at a larger size (docs/benchmarks.md, "Regions")."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from imgsearch import Catalog
from imgsearch.samples import dataset, small_model
from imgsearch.settings import Settings
from imgsearch.work import pipeline
from tests.conftest import new_database


def precision(catalog: Catalog, tenant: str, queries: list[tuple[str, object]], right: dict[str, set[str]], regions: bool) -> float:
    found = []
    for look, query in queries:
        asked = {"text": query} if isinstance(query, str) else {"image": query}
        hits = catalog.search(**asked, tenant=tenant, k=10, regions=regions, mode="semantic", boost=False)
        found.append(sum(1 for h in hits if look in right[h.product_id]) / 10)
    return float(np.mean(found))


def test_grid_regions_find_products_inside_scenes_and_keep_single_product_search(
    server_url: str, template_db: str, trained_small: Path
) -> None:
    size = int(small_model.RECIPE["image_size"])
    items = dataset.draw(4 * 150, seed=101, size=size)
    singles = dataset.draw(300, seed=202, size=size)
    right: dict[str, set[str]] = {}
    rows = []
    for s in range(150):
        held = items[4 * s : 4 * s + 4]
        rows.append({"image": dataset.scene(held, seed=s, size=2 * size), "tenant": "scenes", "product_id": f"s{s}"})
        right[f"s{s}"] = {item.look for item in held}
    for i, item in enumerate(singles):
        rows.append({"image": item.png, "tenant": "singles", "product_id": f"p{i}"})
        right[f"p{i}"] = {item.look}
    rng = random.Random(303)
    asked = [items[j] for j in random.Random(404).sample(range(len(items)), 80)]
    images = [(it.look, dataset.png(dataset.picture(it.kind, it.colour, it.pattern, rng, size))) for it in asked]
    texts = [(it.look, it.caption) for it in asked]
    settings = Settings(model=str(trained_small), record_queries=False)
    with Catalog.open(new_database(server_url, template_db), settings=settings) as catalog:
        catalog.regions.set(grid=2)
        catalog.add_many(rows, progress=False)
        pipeline.drain(
            catalog.engine, lambda model: catalog.embedder, batch_size=64, lease_seconds=600,
            downloads=catalog.settings.downloads(), progress=False,
        )  # fmt: skip
        for queries in (images, texts):
            whole = precision(catalog, "scenes", queries, right, regions=False)
            regions = precision(catalog, "scenes", queries, right, regions=True)
            assert regions >= 3 * whole and regions >= whole + 0.2, (whole, regions)  # at the default margin
            alone = precision(catalog, "singles", queries, right, regions=False)
            beside = precision(catalog, "singles", queries, right, regions=True)
            assert beside >= alone - 0.02, (alone, beside)
