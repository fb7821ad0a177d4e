"""A small SigLIP trained here on the drawn dataset, so that search quality can be measured on a
machine without the model hub: ``python -m imgsearch.samples.small_model [FOLDER]``.

From random weights (hidden size 64, 4 heads, 3 vision and 2 text layers, 64x64 images in 8x8
patches, a word-level tokenizer over the dataset's words), trained with fine-tuning's own training
(:func:`imgsearch.finetune.training.train`, the full method, SigLIP's sigmoid loss) on 4,000
drawings (:mod:`imgsearch.samples.dataset`), each with its caption. About 150 s on 2 cores.

The folder is a plain checkpoint (``from_pretrained`` loads it; ``IMGSEARCH_MODEL`` can name it)
with ``small-model.json``: the recipe, the training time and the held-out figures on 720 new
drawings before and after. A folder whose recipe matches is used as it is (:func:`ensure`).
Figures from it are trained-here-on-drawn-data figures, not those of a real checkpoint.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import math
import shutil
import string
import sys
from pathlib import Path
from typing import Any

from imgsearch.samples import dataset
from imgsearch.samples.generate import COLOURS

RECIPE: dict[str, Any] = {
    "version": 1,
    "dim": 64,
    "image_size": 64,
    "train_drawings": 4000,
    "held_out_drawings": 720,
    "steps": 600,
    "batch_size": 96,
    "lr": 2e-3,
    "seed": 20261127,
}
RECORD = "small-model.json"
DEFAULT_FOLDER = Path(".venv") / "small-siglip"


def words() -> list[str]:
    """Every word the dataset's captions and product texts use, as SigLIP's tokenizer sees them
    (lower case, punctuation removed)."""
    found = {"a", "in", *COLOURS, *dataset.PATTERNS, *dataset.MATERIALS, *dataset.KINDS}
    found |= set(dataset.SINGULAR.values())
    strip = str.maketrans("", "", string.punctuation)
    return sorted({w.translate(strip) for w in found})


def initialise(folder: Path, *, seed: int = RECIPE["seed"]) -> Path:
    """A SigLIP with random weights and a word-level tokenizer, saved in ``folder``."""
    import sentencepiece as spm
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = words()
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(vocabulary)] * 4),
        model_writer=proto,
        vocab_size=len(vocabulary) + 3,
        model_type="word",
        hard_vocab_limit=False,
        character_coverage=1.0,
        unk_id=2,
        eos_id=1,
        pad_id=0,
        bos_id=-1,
        minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(proto.getvalue())
    size, dim = RECIPE["image_size"], RECIPE["dim"]
    tokenizer = SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=16)
    processor = SiglipImageProcessor(size={"height": size, "width": size})
    SiglipProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    torch.manual_seed(seed)
    config = SiglipConfig(
        text_config={
            "vocab_size": tokenizer.vocab_size,
            "hidden_size": dim,
            "intermediate_size": 2 * dim,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 16,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 1,
            "projection_size": dim,
        },
        vision_config={
            "hidden_size": dim,
            "intermediate_size": 2 * dim,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": size,
            "patch_size": 8,
        },
    )
    model = SiglipModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    model.eval().save_pretrained(folder)
    return folder


def _pairs(items: list[dataset.Drawn], offset: int) -> list[Any]:
    from imgsearch.finetune.training import Pair

    return [Pair(f"d{offset + i}", item.caption, item.png) for i, item in enumerate(items)]


def build(folder: Path, *, progress: bool = False) -> dict[str, Any]:
    """Initialise, train and judge the small model into ``folder`` (replaced when whole)."""
    from imgsearch.embed.model import Embedder
    from imgsearch.finetune.scoring import score
    from imgsearch.finetune.training import train

    seed = RECIPE["seed"]
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    start = partial / "random"
    initialise(start)
    size = RECIPE["image_size"]
    training = _pairs(dataset.draw(RECIPE["train_drawings"], seed=seed, size=size), 0)
    held_out = _pairs(dataset.draw(RECIPE["held_out_drawings"], seed=seed + 1, size=size), len(training))

    def judged(checkpoint: Path) -> Any:
        embedder = Embedder(str(checkpoint), device="cpu")
        try:
            return score(held_out, embedder.embed_texts, embedder.embed_images, seed=seed)
        finally:
            embedder.close()

    before = judged(start)
    per_epoch = math.ceil(len(training) / RECIPE["batch_size"])
    epochs = max(1, round(RECIPE["steps"] / per_epoch))

    def step(done: int, total: int, loss: float) -> None:
        if progress and (done % 25 == 0 or done == total):
            print(f"  step {done}/{total}: loss {loss:.3f}", file=sys.stderr, flush=True)

    trained = train(
        str(start), partial, training, method="full", epochs=epochs, lr=RECIPE["lr"],
        batch_size=RECIPE["batch_size"], seed=seed, on_step=step,
    )  # fmt: skip
    shutil.rmtree(start)
    after = judged(partial)
    record = {
        "recipe": RECIPE,
        "steps": trained.steps,
        "seconds": round(trained.seconds, 1),
        "before": before.as_json(),
        "after": after.as_json(),
        "note": "trained here on drawn data (imgsearch.samples.dataset); not a real checkpoint's figures",
    }
    (partial / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return record


def current(folder: Path) -> dict[str, Any] | None:
    """The folder's record when it holds this recipe's model, else None."""
    try:
        record: dict[str, Any] = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("recipe") == RECIPE and (folder / "config.json").is_file() else None


def ensure(folder: Path = DEFAULT_FOLDER, *, progress: bool = False) -> Path:
    """``folder`` holding the trained small model: built once (under a lock: several test
    processes may ask at once), then reused."""
    folder = folder.resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current(folder) is None:
            build(folder, progress=progress)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    args = parser.parse_args()
    if current(args.folder.resolve()) is not None:
        (args.folder / RECORD).touch()  # up to date for make
        print(f"{args.folder} holds the trained small model already")
        return
    print(f"training the small model into {args.folder} (about 150 s on 2 cores) ...", file=sys.stderr)
    folder = ensure(args.folder, progress=True)
    record = json.loads((folder / RECORD).read_text())
    for when in ("before", "after"):
        figures = record[when]["figures"]
        print(
            f"{when}: text->image recall@10 {figures['text_to_image']['recall@10']:.3f}, "
            f"image->image recall@10 {figures['image_to_image']['recall@10']:.3f}"
        )
    print(f"trained in {record['seconds']} s: {folder}")


if __name__ == "__main__":
    main()
