"""Held-out figures of a model on a shop's pairs: recall@10 and nDCG@10, text→image and image→image.

The held-out products' images are the gallery. A product's *label* is its first text (its
product text, normalised): products that share it show the same thing (drawn data has many; a
shop's titles rarely repeat), so each is a right answer for the other's queries.

* text→image: each held-out text; its right answers are the images of the products that have it.
* image→image: a new view (:func:`imgsearch.finetune.training.augment`) of each held-out image
  whose label has other images; its right answers are those other images, and its own source is
  left out of its ranking. Where no label has two images (one photo a product, titles all
  different), each view's right answer is its source.

recall@k is the share of the right answers in the top k, out of at most k (a query with 30 right
answers can't show more than 10 of them).
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgsearch.finetune.training import Pair, augment

K = 10
DIRECTIONS = ("text_to_image", "image_to_image")


@dataclass(frozen=True)
class Scores:
    """Each direction's mean recall@10 and nDCG@10, and how many queries gave them."""

    figures: dict[str, dict[str, float]]
    queries: dict[str, int]

    @property
    def mean(self) -> float:
        """The mean of the four figures: what the never-worse gate compares."""
        values = [self.figures[d][m] for d in DIRECTIONS if d in self.figures for m in ("recall@10", "ndcg@10")]
        return float(np.mean(values))

    def describe(self) -> str:
        return "; ".join(
            f"{d.replace('_to_', '→')} "
            f"recall@10 {self.figures[d]['recall@10']:.3f}, nDCG@10 {self.figures[d]['ndcg@10']:.3f}"
            for d in DIRECTIONS
            if d in self.figures
        )

    def as_json(self) -> dict[str, Any]:
        return {"figures": self.figures, "queries": self.queries, "mean": self.mean}


def label(text: str) -> str:
    return " ".join(text.casefold().split())


def _ranked(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    return np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :K]


def _figures(ranked: np.ndarray, relevant: list[set[int]]) -> dict[str, float]:
    """Mean recall@k (of at most k right answers) and nDCG@k (binary gains, ``log2(rank + 1)``
    discounts, as :func:`imgsearch.quality.evaluation.metrics`)."""
    discounts = 1 / np.log2(np.arange(2, K + 2))
    recalls, ndcgs = [], []
    for row, right in zip(ranked, relevant, strict=True):
        found = np.array([int(i) in right for i in row], dtype=float)
        recalls.append(found.sum() / min(K, len(right)))
        ndcgs.append(float(found @ discounts[: len(found)]) / float(discounts[: min(K, len(right))].sum()))
    return {"recall@10": float(np.mean(recalls)), "ndcg@10": float(np.mean(ndcgs))}


def score(
    held_out: Sequence[Pair],
    embed_texts: Callable[[list[str]], np.ndarray] | None,
    embed_images: Callable[[list[bytes]], list[Any]],
    *,
    seed: int = 0,
) -> Scores:
    """Both directions' figures of the model whose towers are ``embed_texts`` and ``embed_images``
    on the ``held_out`` pairs (each product's first pair names its label); image→image alone for a
    model without a text tower (``embed_texts`` None)."""
    from PIL import Image

    labels: dict[str, str] = {}
    texts: dict[str, set[str]] = {}
    images: dict[bytes, str] = {}
    for pair in held_out:
        labels.setdefault(pair.product, label(pair.text))
        texts.setdefault(label(pair.text), set()).add(pair.product)
        images.setdefault(pair.image, pair.product)
    gallery_bytes = list(images)
    owners = [images[b] for b in gallery_bytes]
    gallery = _rows(embed_images(gallery_bytes))
    by_label: dict[str, set[int]] = {}
    for i, owner in enumerate(owners):
        by_label.setdefault(labels[owner], set()).add(i)

    figures: dict[str, dict[str, float]] = {}
    queries: dict[str, int] = {}
    if embed_texts is not None:
        text_list = sorted(texts)
        text_rows = np.asarray(embed_texts(text_list), dtype=np.float32)
        text_relevant = [{i for i, owner in enumerate(owners) if owner in texts[t]} for t in text_list]
        figures["text_to_image"] = _figures(_ranked(text_rows, gallery), text_relevant)
        queries["text_to_image"] = len(text_list)

    # image queries: a new view of each image whose label has other images, ranked against the
    # gallery without its own source; where no label has two, each view finds its source
    sources = [i for i in range(len(owners)) if len(by_label[labels[owners[i]]]) > 1] or list(range(len(owners)))
    alone = len(by_label) == len(owners)
    rng = random.Random(seed)
    views = []
    for i in sources:
        with Image.open(io.BytesIO(gallery_bytes[i])) as image:
            out = io.BytesIO()
            augment(image.convert("RGB"), rng).save(out, format="PNG")
            views.append(out.getvalue())
    similarity = _rows(embed_images(views)) @ gallery.T
    if not alone:
        similarity[np.arange(len(sources)), sources] = -np.inf
    ranked = np.argsort(-similarity, axis=1, kind="stable")[:, :K]
    relevant = [by_label[labels[owners[i]]] - (set() if alone else {i}) for i in sources]
    figures["image_to_image"] = _figures(ranked, relevant)
    queries["image_to_image"] = len(views)
    return Scores(figures, queries)


def _rows(results: list[Any]) -> np.ndarray:
    for result in results:
        if isinstance(result, Exception):
            raise result
    return np.asarray(results, dtype=np.float32).reshape(len(results), -1)
