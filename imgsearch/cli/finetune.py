"""``imgsearch finetune``: the catalog's model trained on the shop's own pairs
(:mod:`imgsearch.finetune.run`), and ``imgsearch finetune list``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgsearch.cli._common import Subparsers, open_engine, positive
from imgsearch.settings import Settings


def _list(settings: Settings) -> int:
    from imgsearch.finetune import run

    eng = open_engine(settings)
    try:
        found = run.listing(eng)
    finally:
        eng.dispose()
    if not found:
        print("no fine-tuned model is registered (imgsearch finetune makes one)", file=sys.stderr)
    for item in found:
        state = "active" if item.active else ""
        if item.record is None:
            print(f"{item.name}\t{state}\t(its finetune.json can't be read here)")
            continue
        before, after = item.record["before"]["mean"], item.record["after"]["mean"]
        print(
            f"{item.name}\t{state}\tfrom {item.record['base']}\t{item.record['method']}, "
            f"{item.record['trained']['pairs']} pairs\theld-out mean {before:.3f} -> {after:.3f}"
        )
    return 0


def _finetune(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from imgsearch.embed.allocator import retain_freed_memory
    from imgsearch.embed.model import Embedder
    from imgsearch.finetune import run

    if args.action == "list":
        return _list(settings)
    retain_freed_memory(settings)
    device = args.device or settings.device or "cpu"
    eng = open_engine(settings)
    bar = tqdm(desc="training", unit="step", disable=not sys.stderr.isatty())
    fill = tqdm(desc="backfilling", unit="img", disable=not sys.stderr.isatty())

    def step(done: int, total: int, loss: float) -> None:
        bar.total = total
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.update(done - bar.n)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        outcome = run.finetune(
            eng,
            lambda name: Embedder.from_settings(settings, name=name),
            home=settings.home,
            downloads=settings.downloads(),
            tenant=args.tenant,
            pairs_file=Path(args.pairs) if args.pairs else None,
            method=args.method,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            device=device,
            activate=args.activate,
            seed=args.seed,
            on_step=step,
            on_backfill=fill.update,
            say=say,
        )
    finally:
        bar.close()
        fill.close()
        eng.dispose()
    trained = outcome.trained
    print(
        f"trained {outcome.name} ({trained.method}, {trained.steps} steps over {trained.pairs} pairs, "
        f"{trained.seconds:.0f} s); backfilled {outcome.backfilled} images"
        + (f", {len(outcome.backfill_errors)} skipped" if outcome.backfill_errors else "")
    )
    print(f"held-out recall@10 before: {outcome.before.describe()}")
    print(f"held-out recall@10 after:  {outcome.after.describe()}")
    if outcome.activated:
        print(f"active model: {outcome.name} (back with: imgsearch model activate {outcome.base})")
        return 0
    if args.activate:
        print(f"not activated: {outcome.refusal()}", file=sys.stderr)
        return 1
    print(f"switch with: imgsearch model activate {outcome.name}")
    return 0


def register(commands: Subparsers) -> None:
    finetune = commands.add_parser(
        "finetune",
        help="train the catalog's model on the shop's own products and clicks",
        description="Train the active model on the catalog's pairs: each product's title and whole "
        "text with its images, shoppers' queries with the products they clicked or bought, and --pairs "
        'FILE (JSON Lines of {"text" or "image", "product_id" or "image_id"}), with the model\'s own '
        "loss (SigLIP's sigmoid loss, CLIP's contrastive loss). 20% of the products are held out: "
        "recall@10 and nDCG@10 (text->image, image->image) are printed before and after. The result "
        "is saved in IMGSEARCH_HOME/finetuned/NAME+ft-N, registered and backfilled beside the active "
        "model; --activate switches to it only when it beats the active model on the held-out pairs. "
        "`imgsearch finetune list` lists the fine-tunes.",
    )
    finetune.add_argument("action", nargs="?", choices=["list"], help="list the fine-tuned models instead")
    finetune.add_argument("--tenant", default=None, help="learn from this tenant's products and clicks only")
    finetune.add_argument("--pairs", metavar="FILE", default=None, help="more pairs, JSON Lines")
    finetune.add_argument(
        "--method", choices=("lora", "full"), default="lora",
        help="lora: low-rank adapters, merged in (large checkpoints); full: every weight (small models)",
    )  # fmt: skip
    finetune.add_argument("--epochs", type=positive, default=3, help="passes over the products (default 3)")
    finetune.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-4 lora, 1e-5 full)")
    finetune.add_argument("--batch-size", type=positive, default=64, help="pairs per step (default 64)")
    finetune.add_argument("--device", default=None, help="cpu or cuda (bfloat16); default: IMGSEARCH_DEVICE or cpu")
    finetune.add_argument("--seed", type=int, default=0, help="the split's and training's seed")
    finetune.add_argument("--activate", action="store_true", help="switch to it if it beats the active model")
    finetune.set_defaults(func=_finetune)
