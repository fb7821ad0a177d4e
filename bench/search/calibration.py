"""Realistic vectors for the search benchmarks: the shape of real embeddings, measured, and a
generator calibrated on it, against the isotropic clusters the benchmarks used so far.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/calibration.py --drawings 4000

The measured embeddings: ``--drawings`` drawn products (imgsearch.samples.dataset: 6 kinds x 18
looks, held out from training) through the small SigLIP trained on drawn products (``make
small-model``; 64-d), the only real model this machine can run. No set of published CLIP or SigLIP
image vectors is reachable from here (no model hub; no public repository found holding them as
data), so that part of the calibration is left for a machine that has one: pass its vectors
with ``--vectors FILE.npy`` and ``--labels FILE.npy`` (a group per row) to measure them alike.

Per set of unit vectors it reports:

* **alpha**: the covariance's eigenvalues fall as ``i ** -alpha`` (least squares on log-log over
  the first quarter of the components; isotropic noise gives about 0);
* **participation ratio**: ``(sum l)^2 / sum l^2``, the number of directions that carry the
  variance (the effective dimension), and its share of the dimension;
* **offset**: the squared norm of the mean vector (real embeddings sit in a cone, not around the
  origin); the rest of each vector's unit squared norm is variance, split into **group** (between
  the coarse groups: kinds), **cluster** (between the fine groups within a group: looks) and
  **item** (within a fine group) shares;
* **axes**: over the 5 strongest principal directions, the mean of each one's largest squared
  component: 1 when they are the coordinate axes, about ``2 ln(d) / d`` when they point anywhere
  (0.13 at 64 dimensions). Methods that look at coordinates one by one (``binary_quantize``'s sign
  bits) depend on it; distances and HNSW graphs do not;
* **contrast**: the median over queries of (median cosine distance / distance to the 10th
  nearest neighbour): near 1, the neighbours are nearly tied with everything else (hard for any
  approximate search); higher, they stand out.

Then it writes the calibrated generator's parameters (alpha and the shares, taken from the
drawn products) to bench/calibration.json, which ``bench/_catalog.py`` reads
(``calibrated_with_labels``), and measures that generator and the old one at 768 dimensions.

The figure it produces: docs/benchmarks.md, "Calibrated vectors".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[2]))

from _catalog import CALIBRATION, CLUSTERS, GROUP, calibrated_with_labels, clustered_with_labels


def shape(vectors: np.ndarray, groups: np.ndarray, clusters: np.ndarray, seed: int = 0) -> dict[str, float]:
    """The measures of the module's docstring for unit ``vectors`` with coarse ``groups`` and
    fine ``clusters`` labels."""
    v = vectors.astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    mean = v.mean(axis=0)
    centred = v - mean
    eigen, directions = np.linalg.eigh(np.cov(centred, rowvar=False))
    strongest = directions[:, np.argsort(eigen)[::-1][:5]]
    eigen = np.sort(eigen)[::-1]
    eigen = np.clip(eigen, 1e-12, None)
    top = max(4, len(eigen) // 4)
    ranks = np.arange(1, top + 1)
    alpha = -np.polyfit(np.log(ranks), np.log(eigen[:top]), 1)[0]
    pr = eigen.sum() ** 2 / (eigen**2).sum()
    total = (centred**2).sum(axis=1).mean()

    def between(labels: np.ndarray, around: np.ndarray) -> float:
        means = np.zeros_like(v)
        for label in np.unique(labels):
            rows = labels == label
            means[rows] = v[rows].mean(axis=0)
        return float(((means - around) ** 2).sum(axis=1).mean())

    group_means = np.zeros_like(v)
    for label in np.unique(groups):
        group_means[groups == label] = v[groups == label].mean(axis=0)
    group = between(groups, mean)
    cluster = between(clusters, group_means)
    rng = np.random.default_rng(seed)
    queries = rng.choice(len(v), size=min(200, len(v)), replace=False)
    distances = 1 - v[queries] @ v.T
    distances[np.arange(len(queries)), queries] = np.inf
    tenth = np.sort(distances, axis=1)[:, 9]
    median = np.nanmedian(np.where(np.isinf(distances), np.nan, distances), axis=1)
    return {
        "dim": float(v.shape[1]),
        "alpha": float(alpha),
        "participation": float(pr),
        "offset": float(mean @ mean),
        "group": group / total * (1 - mean @ mean),
        "cluster": cluster / total * (1 - mean @ mean),
        "item": (total - group - cluster) / total * (1 - mean @ mean),
        "contrast": float(np.median(median / tenth)),
        "axes": float((strongest**2).max(axis=0).mean()),
    }


def drawn_products(count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The trained small SigLIP's image vectors of ``count`` held-out drawings, their kinds and looks."""
    from imgsearch.embed.model import Embedder
    from imgsearch.samples import dataset, small_model

    folder = small_model.ensure(Path(__file__).resolve().parents[2] / small_model.DEFAULT_FOLDER, progress=True)
    items = dataset.draw(count, seed=small_model.RECIPE["seed"] + 7, size=small_model.RECIPE["image_size"])
    embedder = Embedder(str(folder), device="cpu")
    try:
        vectors = np.stack([np.asarray(m, dtype=np.float32) for m in embedder.embed_images([i.png for i in items])])
    finally:
        embedder.close()
    kinds = np.array([dataset.KINDS.index(i.kind) for i in items])
    names = sorted({i.look for i in items})
    looks = np.array([names.index(i.look) for i in items])
    return vectors.reshape(len(items), -1), kinds, looks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drawings", type=int, default=4000)
    parser.add_argument("--rows", type=int, default=4000, help="rows of each generator measured")
    parser.add_argument("--vectors", help="a .npy of published image vectors, measured beside the drawn products")
    parser.add_argument("--labels", help="a .npy of their groups (one per row)")
    args = parser.parse_args()

    measured: dict[str, dict[str, float]] = {}
    vectors, kinds, looks = drawn_products(args.drawings)
    measured["drawn products, trained small SigLIP"] = shape(vectors, kinds, looks)
    if args.vectors:
        published = np.load(args.vectors)
        labels = np.load(args.labels) if args.labels else np.zeros(len(published), dtype=int)
        measured[f"published: {Path(args.vectors).name}"] = shape(published, labels, labels)
    source = measured["drawn products, trained small SigLIP"]
    params = {k: round(source[k], 4) for k in ("alpha", "offset", "group", "cluster", "item")}
    CALIBRATION.write_text(
        json.dumps({"generator": params, "measured": {k: {m: round(x, 4) for m, x in v.items()} for k, v in measured.items()}},
                   indent=2) + "\n"
    )  # fmt: skip
    data, labels = clustered_with_labels(args.rows, 768, 11)
    measured["clustered (the old generator), 768-d"] = shape(data, labels // GROUP, labels)
    data, labels = calibrated_with_labels(args.rows, 768, 11)
    measured["calibrated generator, 768-d"] = shape(data, labels // GROUP, labels)
    print(f"\nwritten {CALIBRATION}; {CLUSTERS} clusters in groups of {GROUP} for the generators\n")
    print("| vectors | dim | alpha | participation ratio (share of dim) | offset | group | cluster | item | contrast | axes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, m in measured.items():
        print(
            f"| {name} | {m['dim']:.0f} | {m['alpha']:.2f} | {m['participation']:.1f} ({m['participation'] / m['dim']:.2f}) "
            f"| {m['offset']:.3f} | {m['group']:.3f} | {m['cluster']:.3f} | {m['item']:.3f} | {m['contrast']:.2f} | {m['axes']:.2f} |"
        )


if __name__ == "__main__":
    main()
