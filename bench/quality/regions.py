"""Objects in scenes: precision@10 with whole images only against grid regions, on drawn scenes,
through the small SigLIP trained on drawn products (``make small-model``); the same for photos of
one product (regions must not make them worse); and shop the look.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/quality/regions.py --scenes 300

One catalog, two shops, written through the workers' path (uploads, then the queue drained):

* ``scenes``: ``--scenes`` scenes of 2 x 2 drawn products (imgsearch.samples.dataset.scene, 128
  px, each product 64 px: the model's input size);
* ``singles``: ``--singles`` photos of one drawn product each.

Queries: for ``--queries`` looks drawn from the scenes' products, a new drawing of the look (an
image query) and its caption (a text query). In ``scenes`` a hit is right when its scene holds a
product of that look; in ``singles``, when it is one. Shop the look: ``--looks`` new scenes of 4
products searched in ``singles`` (``catalog.search_look``, the photo's quarters and centre): an
object counts when its quarter's hits hold a product of its look in their top 10.

Each setting (whole images only, then ``--grid`` 2 and 3, then a detector: rows backfilled with
``imgsearch regions backfill``'s function) is measured on the same catalog. The detector is the
small YOLOS trained here on canvases of drawn products at random places and sizes
(``python -m imgsearch.samples.small_detector``, trained first if missing; ``--detector`` names
another checkpoint). The photos of one product carry their kind as their category: a detector
whose labels name kinds filters shop the look's objects by them (the small detector's one label,
``product``, names none).

The figure it produces: docs/benchmarks.md, "Regions: objects in scenes".
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[2]))

from _data import fresh_database

from imgsearch import Catalog
from imgsearch.embed.regions import iou
from imgsearch.samples import dataset, small_detector, small_model
from imgsearch.settings import Settings
from imgsearch.work import pipeline

SCENE_SIZE = 128


def drain(catalog: Catalog) -> None:
    pipeline.drain(
        catalog.engine, lambda model: catalog.embedder, batch_size=64, lease_seconds=600,
        downloads=catalog.settings.downloads(), progress=False,
    )  # fmt: skip


def fresh(item: dataset.Drawn, rng: random.Random, size: int) -> bytes:
    """Another drawing of ``item``'s look."""
    return dataset.png(dataset.picture(item.kind, item.colour, item.pattern, rng, size))


def precision(catalog: Catalog, tenant: str, queries: list[tuple[str, object]], right: dict[str, set[str]],
              regions: bool) -> float:  # fmt: skip
    """Mean precision@10 of ``queries`` ((look, text or image bytes)) in ``tenant``."""
    found = []
    for look, query in queries:
        asked = {"text": query} if isinstance(query, str) else {"image": query}
        hits = catalog.search(**asked, tenant=tenant, k=10, regions=regions, mode="semantic", boost=False)
        found.append(sum(1 for h in hits if look in right[h.product_id]) / 10)
    return float(np.mean(found))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--singles", type=int, default=600)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--looks", type=int, default=60)
    parser.add_argument("--grids", default="2,3")
    parser.add_argument("--margins", default="0,0.04,0.08", help="IMGSEARCH_REGION_MARGIN values to measure")
    parser.add_argument("--detector", help="a detection checkpoint (default: the small detector trained here)")
    args = parser.parse_args()
    home = Path(os.environ.get("IMGSEARCH_HOME", "/tmp/imgs-bench"))
    root = Path(__file__).resolve().parents[2]
    folder = small_model.ensure(root / small_model.DEFAULT_FOLDER, progress=True)
    detector = args.detector or str(small_detector.ensure(root / small_detector.DEFAULT_FOLDER, progress=True))
    size = int(small_model.RECIPE["image_size"])
    url = fresh_database(home, "bench_regions")
    items = dataset.draw(4 * args.scenes, seed=101, size=size)
    singles = dataset.draw(args.singles, seed=202, size=size)
    rng = random.Random(303)
    settings = Settings(record_queries=False)
    with Catalog.open(url, model=str(folder), settings=settings) as catalog:
        right: dict[str, set[str]] = {}
        rows = []
        for s in range(args.scenes):
            held = items[4 * s : 4 * s + 4]
            rows.append({"image": dataset.scene(held, seed=s, size=SCENE_SIZE), "tenant": "scenes", "product_id": f"s{s}"})
            right[f"s{s}"] = {item.look for item in held}
        for i, item in enumerate(singles):
            rows.append({"image": item.png, "tenant": "singles", "product_id": f"p{i}", "category": item.kind})
            right[f"p{i}"] = {item.look}
        catalog.add_many(rows, progress=False)
        started = time.perf_counter()
        drain(catalog)
        print(f"{len(rows)} images embedded in {time.perf_counter() - started:.1f} s", flush=True)
        asked = [items[j] for j in random.Random(404).sample(range(len(items)), args.queries)]
        image_queries = [(item.look, fresh(item, rng, size)) for item in asked]
        text_queries = [(item.look, item.caption) for item in asked]
        looks = []
        for n in range(args.looks):
            held = dataset.draw(4, seed=1000 + n, size=size)
            looks.append((dataset.scene(held, seed=5000 + n, size=SCENE_SIZE), held))
        cells = [(0, 0, 64, 64), (64, 0, 128, 64), (0, 64, 64, 128), (64, 64, 128, 128)]

        def measure(name: str, regions: bool, margin: float = 0.0) -> dict[str, float]:
            own = Catalog(catalog.engine, catalog.active_model, settings.model_copy(update={"region_margin": margin}), embedder=catalog.embedder)
            figures = {
                "scenes, image": precision(own, "scenes", image_queries, right, regions),
                "scenes, text": precision(own, "scenes", text_queries, right, regions),
                "one product, image": precision(own, "singles", image_queries, right, regions),
                "one product, text": precision(own, "singles", text_queries, right, regions),
            }
            found = []
            for photo, held in looks:
                objects = own.search_look(image=photo, tenant="singles", k=10, regions=regions)
                for cell, item in zip(cells, held, strict=True):
                    best = max(objects, key=lambda o: iou(o.box, cell), default=None)
                    found.append(best is not None and any(item.look in right[h.product_id] for h in best.hits))
            figures["shop the look, per object"] = float(np.mean(found))
            print(name, {k: round(v, 3) for k, v in figures.items()}, flush=True)
            return figures

        table = {"whole images only": measure("whole images only", False)}
        for grid in (int(g) for g in args.grids.split(",")):
            catalog.regions.set(grid=grid)
            started = time.perf_counter()
            done = catalog.regions.backfill(batch_size=64)
            seconds = time.perf_counter() - started
            print(f"grid {grid}: {done.images} images, {done.rows} region rows in {seconds:.1f} s", flush=True)
            for margin in (float(m) for m in args.margins.split(",")):
                name = f"grid {grid} ({done.rows // max(done.images, 1)} regions an image), margin {margin:g}"
                table[name] = measure(name, True, margin)
            catalog.regions.set(off=True)
        catalog.regions.set(detector=detector)
        started = time.perf_counter()
        done = catalog.regions.backfill(batch_size=64)
        seconds = time.perf_counter() - started
        print(f"detector: {done.images} images, {done.rows} region rows in {seconds:.1f} s", flush=True)
        for margin in (float(m) for m in args.margins.split(",")):
            name = f"detector ({done.rows / max(done.images, 1):.1f} regions an image), margin {margin:g}"
            table[name] = measure(name, True, margin)
        catalog.regions.set(off=True)
        chance_scenes = float(np.mean([sum(1 for p in right if p.startswith("s") and look in right[p]) for look, _ in text_queries])) / args.scenes
        chance_singles = float(np.mean([sum(1 for p in right if p.startswith("p") and look in right[p]) for look, _ in text_queries])) / args.singles
        names = list(next(iter(table.values())))
        print("\n| index | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for setting, figures in table.items():
            print(f"| {setting} | " + " | ".join(f"{figures[n]:.2f}" for n in names) + " |")
        print(f"| chance | {chance_scenes:.2f} | {chance_scenes:.2f} | {chance_singles:.2f} | {chance_singles:.2f} | |")


if __name__ == "__main__":
    main()
