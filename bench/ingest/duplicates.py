"""How well the near-duplicate detector tells copies from distinct pictures, and what it costs.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/ingest/duplicates.py --originals 150 --plot docs/duplicates.png

On a generated set (:mod:`imgsearch.samples.edits`): ``--originals`` distinct pictures, half
product shots on a light background (the hard case: they share a frame), half busier photos, each
with five edited copies (resize, JPEG re-encode, 10% crop, watermark, colour shift). Positives are
the pairs of one original's six images; every other pair is a negative.

1. The hash alone: precision and recall of "at most t bits apart" over all pairs, t = 0..20, and
   the recall per edit at the default t.
2. The detector through the database: every image uploaded as a product of its own, embedded with
   ``--model`` (default: a base-size SigLIP with random weights, the only one this machine has;
   pass a real checkpoint for figures that say something about it), then ``catalog.duplicates``,
   whose groups give the pairs found, at the default distance and at each of ``--distances``.
3. Costs, in the same run: the hash at upload against the header check it follows (``inspect``),
   for a 224 px PNG and a 1600 px JPEG; and the sweep's all-pairs comparison of 100k hashes.

The figure it produces: docs/benchmarks.md, "Near-duplicates" (its table and docs/duplicates.png).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from _data import fresh_database
from _models import base_checkpoint

from imgsearch import Catalog
from imgsearch.db import embedded
from imgsearch.ingest import duplicates, images
from imgsearch.quality import duplicates as duplicate_groups
from imgsearch.samples.edits import EDITS, near_duplicate_set, original
from imgsearch.settings import Settings
from imgsearch.work import pipeline

DB = "bench_duplicates"
LIMITS = images.Limits()


def pr(found: set[tuple[int, int]], truth: set[tuple[int, int]]) -> tuple[float, float]:
    hits = len(found & truth)
    return (hits / len(found) if found else 1.0), hits / len(truth)


def hash_stage(items: list[Any]) -> dict[str, Any]:
    hashes = np.array(
        [duplicates.as_int(images.perceptual_hash(i.data, LIMITS)) for i in items], dtype=np.uint64
    )
    bits = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    groups = np.array([i.group for i in items])
    upper = np.triu(np.ones_like(bits, dtype=bool), 1)
    same = (groups[:, None] == groups[None, :]) & upper
    other = (groups[:, None] != groups[None, :]) & upper
    curve = []
    for t in range(21):
        tp = int((same & (bits <= t)).sum())
        fp = int((other & (bits <= t)).sum())
        curve.append({"t": t, "precision": tp / max(1, tp + fp), "recall": tp / int(same.sum())})
    per_edit = {}
    originals = {i.group: n for n, i in enumerate(items) if i.edit == "original"}
    for edit in EDITS:
        d = [int(bits[originals[i.group], n]) for n, i in enumerate(items) if i.edit == edit]
        per_edit[edit] = {
            "recall": float(np.mean(np.array(d) <= duplicates.DEFAULT_MAX_HAMMING)),
            "median_bits": float(np.median(d)),
        }
    product = np.array([i.group % 2 == 0 for i in items])
    both_products = other & product[:, None] & product[None, :]
    both_photos = other & ~product[:, None] & ~product[None, :]
    t = duplicates.DEFAULT_MAX_HAMMING
    return {
        "curve": curve,
        "per_edit": per_edit,
        "false_pair_rate": {
            "product shots": float((both_products & (bits <= t)).sum() / both_products.sum()),
            "photos": float((both_photos & (bits <= t)).sum() / both_photos.sum()),
        },
    }


def pairs_of(report: duplicate_groups.Report, name_of: dict[int, int]) -> set[tuple[int, int]]:
    found = set()
    for group in report.groups:
        members = sorted(name_of[i] for i in group.image_ids)
        found |= set(itertools.combinations(members, 2))
    return found


def detector_stage(
    items: list[Any], model: str, settings: Settings, hammings: list[int], distances: list[float]
) -> dict[str, Any]:
    url = fresh_database(settings.home, DB)
    truth = {
        (a, b) for a, b in itertools.combinations(range(len(items)), 2) if items[a].group == items[b].group
    }
    with Catalog.open(url, model=model, settings=settings) as catalog:
        ids = catalog.add_many(
            ({"image": i.data, "tenant": "bench", "product_id": i.name} for i in items), progress=True
        )
        start = time.perf_counter()
        pipeline.drain(
            catalog.engine,
            lambda _model: catalog.embedder,
            batch_size=16,
            lease_seconds=600,
            downloads=settings.downloads(),
            progress=True,
        )
        embed_s = time.perf_counter() - start
        name_of = {image_id: n for n, image_id in enumerate(ids)}
        original_of = {item.group: n for n, item in enumerate(items) if item.edit == "original"}
        wanted_by_edit = {
            edit: {
                tuple(sorted((original_of[item.group], n)))
                for n, item in enumerate(items)
                if item.edit == edit
            }
            for edit in EDITS
        }
        rows = []
        for hamming, distance in itertools.product(hammings, [None, *distances]):
            start = time.perf_counter()
            report = catalog.duplicates("bench", max_hamming=hamming, max_distance=distance, progress=False)
            seconds = time.perf_counter() - start
            precision, recall = pr(pairs_of(report, name_of), truth)
            direct = {tuple(sorted((name_of[a], name_of[b]))) for a, b, _, _ in report.pairs}
            pair_precision, pair_recall = pr(direct, truth)  # type: ignore[arg-type]
            by_edit = {edit: len(wanted & direct) / len(wanted) for edit, wanted in wanted_by_edit.items()}
            rows.append(
                {
                    "max_hamming": hamming,
                    "max_distance": distance,
                    "precision": precision,
                    "recall": recall,
                    "pair_precision": pair_precision,
                    "pair_recall": pair_recall,
                    "groups": len(report.groups),
                    "sweep_s": seconds,
                    "by_edit": by_edit,
                }
            )
            print(
                f"  max_hamming={hamming} max_distance={distance}: pairs P {pair_precision:.3f} "
                f"R {pair_recall:.3f}, groups P {precision:.3f} R {recall:.3f}",
                flush=True,
            )
    return {"rows": rows, "embed_s": embed_s, "images": len(items)}


def costs() -> dict[str, Any]:
    small = next(near_duplicate_set(1)).data
    import io

    big_image = original(1).resize((1600, 1600))
    out = io.BytesIO()
    big_image.save(out, format="JPEG", quality=90)
    big = out.getvalue()
    result: dict[str, Any] = {}
    for name, data in (("224 px PNG", small), ("1600 px JPEG", big)):
        t_inspect, t_hash = [], []
        for _ in range(30):
            start = time.perf_counter()
            images.inspect(data, LIMITS)
            t_inspect.append(time.perf_counter() - start)
            start = time.perf_counter()
            images.perceptual_hash(data, LIMITS)
            t_hash.append(time.perf_counter() - start)
        result[name] = {
            "inspect_ms": 1000 * float(np.median(t_inspect)),
            "hash_ms": 1000 * float(np.median(t_hash)),
        }
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 100_000, dtype=np.int64).astype(np.uint64)
    products = np.arange(100_000, dtype=np.int64)
    start = time.perf_counter()
    duplicate_groups._pairs(hashes, products, duplicates.DEFAULT_MAX_HAMMING)
    result["sweep_100k_s"] = time.perf_counter() - start
    return result


def table(hashes: dict[str, Any], detector: dict[str, Any], cost: dict[str, Any], originals: int) -> str:
    lines = [f"{originals} originals, {detector['images']} images.", ""]
    lines += ["| hash bits <= t | precision | recall |", "|---|---|---|"]
    for point in hashes["curve"]:
        if point["t"] in (0, 2, 4, 6, 8, 10, 12, 14, 16, 20):
            lines.append(f"| {point['t']} | {point['precision']:.3f} | {point['recall']:.3f} |")
    lines += [
        "",
        "| edit | median bits from the original | recall at 10 bits (hash alone) |",
        "|---|---|---|",
    ]
    for edit, v in hashes["per_edit"].items():
        lines.append(f"| {edit} | {v['median_bits']:.0f} | {v['recall']:.3f} |")
    fp = hashes["false_pair_rate"]
    lines += [
        "",
        f"Distinct pictures within 10 bits: {100 * fp['product shots']:.2f}% of pairs of product shots, "
        f"{100 * fp['photos']:.3f}% of pairs of photos.",
        "",
        "| detector (catalog.duplicates) | pairs: precision | recall | groups: precision | recall | "
        + " | ".join(f"recall {e}" for e in EDITS)
        + " | sweep s |",
        "|---|---|---|---|---|" + "---|" * len(EDITS) + "---|",
    ]
    for row in detector["rows"]:
        label = f"hash <= {row['max_hamming']} bits"
        label += "" if row["max_distance"] is None else f", distance <= {row['max_distance']}"
        lines.append(
            f"| {label} | {row['pair_precision']:.3f} | {row['pair_recall']:.3f} | "
            f"{row['precision']:.3f} | {row['recall']:.3f} | "
            + " | ".join(f"{row['by_edit'][e]:.2f}" for e in EDITS)
            + f" | {row['sweep_s']:.2f} |"
        )
    lines += ["", "| cost | header check (baseline) | + perceptual hash | ratio |", "|---|---|---|---|"]
    for name in ("224 px PNG", "1600 px JPEG"):
        c = cost[name]
        lines.append(
            f"| upload of a {name} | {c['inspect_ms']:.2f} ms | {c['hash_ms']:.2f} ms | {c['hash_ms'] / c['inspect_ms']:.1f}x |"
        )
    lines.append("")
    lines.append(f"Sweep of 100,000 hashes, all pairs: {cost['sweep_100k_s']:.1f} s.")
    return "\n".join(lines)


def plot(hashes: dict[str, Any], detector: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.plot(
        [p["recall"] for p in hashes["curve"]],
        [p["precision"] for p in hashes["curve"]],
        "o-",
        label="hash alone, t = 0..20 bits",
    )
    for row in detector["rows"]:
        if row["max_distance"] is not None:
            ax.plot(
                row["pair_recall"],
                row["pair_precision"],
                "s" if row["max_hamming"] == duplicates.DEFAULT_MAX_HAMMING else "^",
                label=f"hash <= {row['max_hamming']}, distance <= {row['max_distance']}",
            )
    ax.set_xlabel("recall (pairs of copies found)")
    ax.set_ylabel("precision (pairs found that are copies)")
    ax.set_title("Near-duplicate detection on the generated set")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--originals", type=int, default=150)
    parser.add_argument(
        "--model", default=None, help="a checkpoint directory (default: base-size SigLIP, random weights)"
    )
    parser.add_argument("--distances", default="0.02,0.05,0.1,0.2", help="max_distance values to run")
    parser.add_argument("--hammings", default="10,16", help="max_hamming values to run")
    parser.add_argument("--plot", default=None, help="write the precision/recall plot here")
    parser.add_argument("--json", default=None, help="write every figure here")
    args = parser.parse_args()

    settings = Settings()
    model = args.model
    if model is None:
        model = str(base_checkpoint(settings.home))
    items = list(near_duplicate_set(args.originals, seed=7))
    print(f"{len(items)} images; the hash alone ...", flush=True)
    hashes = hash_stage(items)
    print("the detector through the database ...", flush=True)
    try:
        detector = detector_stage(
            items,
            model,
            settings,
            [int(h) for h in args.hammings.split(",")],
            [float(d) for d in args.distances.split(",")],
        )
    finally:
        embedded.stop(settings.home)
    print("costs ...", flush=True)
    cost = costs()
    print()
    print(table(hashes, detector, cost, args.originals))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"hash": hashes, "detector": detector, "costs": cost}, indent=2)
        )
    if args.plot:
        plot(hashes, detector, Path(args.plot))
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
