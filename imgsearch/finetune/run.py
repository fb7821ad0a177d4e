"""``imgsearch finetune``: the catalog's model trained on the shop's own pairs, judged on held-out
products against the active model, registered as a model of its own and backfilled beside it.

1. The pairs (:mod:`imgsearch.finetune.pairs`), split by product: 80% to train, 20% held out.
2. The active model's figures on the held-out pairs (:mod:`imgsearch.finetune.scoring`).
3. Training (:mod:`imgsearch.finetune.training`) into ``HOME/finetuned/NAME+ft-N``: written under
   a ``.partial`` name and renamed when whole, with ``finetune.json`` (what it learned from, how,
   and both models' figures).
4. Its figures on the same held-out pairs, through the same ``from_pretrained`` path workers take.
5. Registered under that directory's path and backfilled as ``imgsearch reembed`` does: searches
   keep the active model meanwhile.
6. Activated only when asked and when it beats the active model on the held-out pairs (the mean
   of recall@10 and nDCG@10 in both directions); otherwise refused, with the figures. The previous
   model stays registered: ``imgsearch model activate`` goes back.

Workers on other machines load the new model from that directory: it must be where they can read it
(a shared volume), as any local checkpoint must.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from imgsearch.db import vector_index
from imgsearch.embed.registry import model_dim, split_name, split_pooling
from imgsearch.errors import ConfigurationError, NotFound
from imgsearch.finetune import pairs as shop_pairs
from imgsearch.finetune.scoring import Scores, score
from imgsearch.finetune.training import Trained, train
from imgsearch.hooks import outbox
from imgsearch.ingest.downloads import Downloads
from imgsearch.work import reembed

if TYPE_CHECKING:
    from imgsearch.embed.model import Embedder

SUFFIX = re.compile(r"\+ft-(\d+)$")
RECORD = "finetune.json"


@dataclass(frozen=True)
class Outcome:
    name: str  # the new model, as registered
    base: str  # the model it was trained from
    before: Scores
    after: Scores
    trained: Trained
    sources: dict[str, int]
    backfilled: int
    backfill_errors: dict[int, str]
    activated: bool

    @property
    def wins(self) -> bool:
        return self.after.mean > self.before.mean

    def refusal(self) -> str:
        return (
            f"{self.name} is not better than {self.base} on the held-out pairs (mean of recall@10 and "
            f"nDCG@10 {self.after.mean:.3f} against {self.before.mean:.3f}): {self.after.describe()}, "
            f"against {self.before.describe()}; it stays registered, not active"
        )


@dataclass(frozen=True)
class Listed:
    name: str
    active: bool
    record: dict[str, Any] | None  # finetune.json, when the directory is readable here


def destination(home: Path, base: str) -> Path:
    """``HOME/finetuned/NAME+ft-N``: NAME the base checkpoint's folder name or hub id (``/`` as
    ``--``) without an earlier ``+ft-N``; N one more than any there."""
    checkpoint, _ = split_name(base)
    checkpoint, _ = split_pooling(checkpoint)
    stem = Path(checkpoint).name if Path(checkpoint).is_dir() else checkpoint.replace("/", "--")
    stem = SUFFIX.sub("", stem)
    folder = home / "finetuned"
    taken = [
        int(m.group(1))
        for p in (folder.iterdir() if folder.is_dir() else [])
        if p.name.startswith(stem) and (m := SUFFIX.search(p.name.removesuffix(".partial")))
        and SUFFIX.sub("", p.name.removesuffix(".partial")) == stem
    ]
    return folder / f"{stem}+ft-{max(taken, default=0) + 1}"


def finetune(
    engine: Engine,
    embedder_for: Callable[[str], Embedder],
    *,
    home: Path,
    downloads: Downloads,
    tenant: str | None = None,
    pairs_file: Path | None = None,
    method: str = "lora",
    epochs: int = 3,
    lr: float | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    activate: bool = False,
    seed: int = 0,
    on_step: Callable[[int, int, float], None] | None = None,
    on_backfill: Callable[[int], None] | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> Outcome:
    """Train, judge, register and backfill a fine-tune of the active model (the steps above).
    ``embedder_for(name)`` makes a new embedder of a model; each is closed here when done."""
    with engine.connect() as conn:
        active = vector_index.active_model(conn)
    if active is None:
        raise NotFound("the catalog has no active model yet: upload and embed images first")
    if active.external:
        raise ConfigurationError(
            f"the active model {active.name!r} embeds nothing here (its vectors come from elsewhere): "
            "fine-tune the model that makes them where it runs"
        )
    checkpoint, int8 = split_name(active.name)
    if int8:
        raise ConfigurationError(
            f"the active model {active.name!r} is an int8 export; fine-tune {checkpoint!r} (float32), "
            "then export the result"
        )
    gathered = shop_pairs.gather(engine, downloads, tenant=tenant, pairs_file=pairs_file)
    training, held_out = shop_pairs.split(gathered.pairs, seed=seed)
    say(
        f"{len(gathered.pairs)} pairs ({', '.join(f'{n} from {s}' for s, n in gathered.sources.items())}); "
        f"{len({p.product for p in training})} products to train on, {len({p.product for p in held_out})} held out"
        + (f"; {gathered.skipped_images} images skipped (no bytes)" if gathered.skipped_images else "")
    )
    base = embedder_for(active.name)
    base.load()
    with_text = not base.image_only  # an image-only backbone is judged image→image alone
    try:
        before = score(held_out, base.embed_texts if with_text else None, base.embed_images, seed=seed)
    finally:
        base.close()
    options = base.options
    del base  # its weights aren't held while a second copy trains
    say(f"before ({active.name}): {before.describe()}")
    out = destination(home, active.name)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    trained = train(
        checkpoint, partial, training, method=method, epochs=epochs, lr=lr, batch_size=batch_size,
        device=device, seed=seed, options=options, on_step=on_step,
    )
    os.replace(partial, out)
    pooling = split_pooling(checkpoint)[1]
    name = str(out.resolve()) + (f"#{pooling}" if pooling else "")
    tuned = embedder_for(name)
    try:
        after = score(held_out, tuned.embed_texts if with_text else None, tuned.embed_images, seed=seed)
        say(f"after ({out.name}): {after.describe()}")
        record = {
            "base": active.name, "method": method, "epochs": epochs, "lr": lr, "batch_size": batch_size,
            "device": device, "tenant": tenant, "sources": gathered.sources, "trained": asdict(trained),
            "before": before.as_json(), "after": after.as_json(),
        }
        (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        model = reembed.register(engine, name, model_dim(name))
        backfilled = reembed.backfill(
            engine, model, tuned.embed_images, batch_size=tuned.batch_size, downloads=downloads, on_batch=on_backfill
        )
    finally:
        tuned.close()
    outcome = Outcome(
        name, active.name, before, after, trained, gathered.sources, backfilled.embedded, backfilled.errors, False
    )
    finished = {"model": name, "base": active.name, "wins": outcome.wins, "backfilled": backfilled.embedded,
                "before": before.as_json(), "after": after.as_json()}  # fmt: skip
    with engine.begin() as conn:  # the shop's backend hears of it (imgsearch.hooks)
        if tenant is None:
            outbox.emit_to_all(conn, "finetune.finished", finished)
        else:
            outbox.emit(conn, tenant, "finetune.finished", finished)
    if activate and outcome.wins:
        reembed.activate(engine, name, requeue_missing=True)
        outcome = Outcome(**{**outcome.__dict__, "activated": True})
    return outcome


def listing(engine: Engine) -> list[Listed]:
    """Every registered fine-tune (a model named ``...+ft-N``) with its record, newest last."""
    found = []
    for row in reembed.listing(engine):
        folder = split_pooling(row.name)[0]
        if not SUFFIX.search(folder):
            continue
        try:
            record = json.loads((Path(folder) / RECORD).read_text())
        except (OSError, ValueError):
            record = None
        found.append(Listed(row.name, row.active, record))
    return sorted(found, key=lambda f: f.name)
