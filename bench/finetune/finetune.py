"""What fine-tuning buys on drawn products, and what it costs on this machine.

    .venv/bin/python bench/finetune/finetune.py [--device cpu|cuda]

Everything here is trained here on drawn data (:mod:`imgsearch.samples.dataset`) with the small
SigLIP's shape (:mod:`imgsearch.samples.small_model`): the figures say what the method does, not
what a real checkpoint would score. Held-out figures come from :func:`imgsearch.finetune.scoring.score`
(recall@10 and nDCG@10, text→image and image→image) on drawings never trained on.

1. **From random weights**: the small model's own record (``make small-model``), before and after.
2. **A domain shift**: a base model trained on four kinds only (mugs, t-shirts, caps, lamps), then
   fine-tuned on a shop's catalog that also sells two new kinds (bags, sneakers). Each group is
   judged on its own held-out drawings; the old kinds may lose at most 0.05.
3. **LoRA against a full fine-tune** on that shift: figures and training time.
4. **Training time per 1,000 pairs** (one step each), and the never-worse gate: a fine-tune at a
   learning rate too small to move the weights is not better, so ``--activate`` refuses it.

The figure it produces: docs/benchmarks.md, "Fine-tuning".
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

from imgsearch.embed.model import Embedder
from imgsearch.finetune.scoring import Scores, score
from imgsearch.finetune.training import Pair, train
from imgsearch.samples import dataset, small_model

OLD, NEW = ("mugs", "t-shirts", "caps", "lamps"), ("bags", "sneakers")
SIZE = 64


def pairs(count: int, seed: int, kinds: tuple[str, ...]) -> list[Pair]:
    drawn = dataset.draw(count, seed=seed, size=SIZE, kinds=kinds)
    return [Pair(f"s{seed}-{i}", item.caption, item.png) for i, item in enumerate(drawn)]


def judged(checkpoint: Path, held_out: list[Pair]) -> Scores:
    embedder = Embedder(str(checkpoint), device="cpu")
    try:
        return score(held_out, embedder.embed_texts, embedder.embed_images)
    finally:
        embedder.close()


def figures(scores: Scores) -> tuple[str, str]:
    f = scores.figures
    return (f"{f['text_to_image']['recall@10']:.3f} / {f['text_to_image']['ndcg@10']:.3f}",
            f"{f['image_to_image']['recall@10']:.3f} / {f['image_to_image']['ndcg@10']:.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shop", type=int, default=2000, help="drawings in the shop's catalog")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgsearch-finetune-bench-"))
    lines = ["| model | held out | text→image R / N | image→image R / N | steps | s | s / 1,000 pairs "
             "| mean vs base, old / new | the gate |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    try:
        record = json.loads((small_model.ensure() / small_model.RECORD).read_text())
        for when, name in (("before", "random weights"), ("after", "trained from random (`make small-model`)")):
            t2i, i2i = figures(Scores(record[when]["figures"], record[when]["queries"]))
            steps = f"| {record['steps']} | {record['seconds']:.0f} |" if when == "after" else "| | |"
            lines.append(f"| {name} | 6 kinds | {t2i} | {i2i} {steps} | | |")

        recipe = small_model.RECIPE
        start = small_model.initialise(work / "random")
        base_pairs = pairs(recipe["train_drawings"], 1, OLD)
        steps_per_epoch = math.ceil(len(base_pairs) / recipe["batch_size"])
        train(str(start), work / "base", base_pairs, method="full", lr=recipe["lr"],
              epochs=round(recipe["steps"] / steps_per_epoch), batch_size=recipe["batch_size"],
              device=args.device)  # fmt: skip
        held_old, held_new = pairs(360, 2, OLD), pairs(240, 3, NEW)
        shop = pairs(args.shop, 4, OLD + NEW)
        base_old, base_new = judged(work / "base", held_old), judged(work / "base", held_new)
        for kinds, scores in (("old", base_old), ("new", base_new)):
            t2i, i2i = figures(scores)
            lines.append(f"| base, 4 old kinds | {kinds} | {t2i} | {i2i} | | | | | |")
        count = len(held_old) + len(held_new)
        before = (base_old.mean * len(held_old) + base_new.mean * len(held_new)) / count
        for method, lr, epochs in (("full", 1e-3, 5), ("lora", 2e-3, 5), ("lora, lr 1e-9", 1e-9, 1)):
            out = work / method.replace(" ", "").replace(",", "-")
            trained = train(str(work / "base"), out, shop, method=method.split(",")[0], lr=lr, epochs=epochs,
                            batch_size=64, device=args.device)  # fmt: skip
            old, new = judged(out, held_old), judged(out, held_new)
            after = (old.mean * len(held_old) + new.mean * len(held_new)) / count
            gate = "activates" if after > before else "refuses"
            per_1000 = 1000 * trained.seconds / (trained.steps * 64)
            for kinds, scores in (("old", old), ("new", new)):
                t2i, i2i = figures(scores)
                tail = (f"{trained.steps} | {trained.seconds:.0f} | {per_1000:.1f} | "
                        f"{old.mean - base_old.mean:+.3f} / {new.mean - base_new.mean:+.3f} | {gate}"
                        if kinds == "old" else "| | | |")  # fmt: skip
                lines.append(f"| {method} on the shop (6 kinds) | {kinds} | {t2i} | {i2i} | {tail} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
