"""Training a checkpoint on (text, image) pairs with its family's own loss, and saving it as a
plain checkpoint that ``from_pretrained`` loads.

* **Loss**: the model's own, through ``return_loss=True``: SigLIP's and SigLIP 2's sigmoid loss,
  CLIP's contrastive (InfoNCE both ways) loss. A batch holds one pair per product, so no two of
  its pairs are positives of each other.
* **Method**: ``full`` trains every weight (small models, or training from random weights);
  ``lora`` trains low-rank adapters (``peft``) on the encoder layers' attention and MLP
  projections, then merges them in (``merge_and_unload``). The vision head's
  ``MultiheadAttention`` is left out: LoRA on its ``out_proj`` gets no gradient.
* **Device**: ``cuda`` trains under bfloat16 autocast; the CPU in float32.
* Each image is decoded by imgsearch's own path (:func:`imgsearch.embed.decode.decode`), then a
  random crop of 70-100% of its area and a random mirror make each epoch's view a new one.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgsearch.embed import decode as decoding
from imgsearch.embed.loading import resolve
from imgsearch.embed.onnx import tokenize
from imgsearch.errors import ConfigurationError, InvalidImage, InvalidInput, ModelUnavailable

METHODS = ("full", "lora")
FAMILIES = ("siglip", "siglip2", "clip")
# the encoder layers' projections, text and vision towers, not the vision head's attention
LORA_TARGETS = r".*encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"
DEFAULT_LR = {"full": 1e-5, "lora": 1e-4}
DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True)
class Pair:
    """A training pair: a product (its key groups its pairs: a batch holds one per product and the
    held-out split never cuts a product), a text that describes it and one of its images."""

    product: str
    text: str
    image: bytes


@dataclass(frozen=True)
class Trained:
    steps: int
    seconds: float
    pairs: int
    method: str
    final_loss: float


def augment(image: Any, rng: random.Random) -> Any:
    """A random crop of 70-100% of the area (aspect 3:4 to 4:3), mirrored half the time."""
    from PIL import Image

    width, height = image.size
    area = width * height * rng.uniform(0.7, 1.0)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(width, round(math.sqrt(area * aspect)))
    h = min(height, round(math.sqrt(area / aspect)))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    view = image.crop((left, top, left + w, top + h))
    return view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else view


def _batches(pairs: Sequence[Pair], batch_size: int, rng: random.Random) -> list[list[Pair]]:
    """One epoch: every product once, in batches of distinct products, each with one of its pairs."""
    by_product: dict[str, list[Pair]] = {}
    for pair in pairs:
        by_product.setdefault(pair.product, []).append(pair)
    products = list(by_product)
    rng.shuffle(products)
    chosen = [rng.choice(by_product[p]) for p in products]
    batches = [chosen[i : i + batch_size] for i in range(0, len(chosen), batch_size)]
    return [b for b in batches if len(b) > 1]  # a lone pair has no negative to learn from


def load(checkpoint: str, device: str) -> tuple[Any, Any, str]:
    """The model (float32, on ``device``) and processor of ``checkpoint``, and its family."""
    from transformers import AutoConfig, AutoModel, AutoProcessor

    source, offline = resolve(checkpoint)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
        if config.model_type not in FAMILIES:
            raise ConfigurationError(
                f"fine-tuning takes {', '.join(FAMILIES)} checkpoints; {checkpoint!r} is {config.model_type!r}"
            )
        processor = AutoProcessor.from_pretrained(source, local_files_only=offline)  # type: ignore[no-untyped-call]  # untyped upstream
        model = AutoModel.from_pretrained(source, local_files_only=offline, dtype=None)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot load model {checkpoint!r}: {exc}") from exc
    return model.float().to(device), processor, config.model_type


def train(
    checkpoint: str,
    out: Path,
    pairs: Sequence[Pair],
    *,
    method: str = "lora",
    epochs: int = 3,
    lr: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    seed: int = 0,
    options: decoding.DecodeOptions | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> Trained:
    """Train ``checkpoint`` on ``pairs`` and save the result in ``out`` (model and processor).

    ``on_step(step, steps, loss)`` is told after each step (a progress bar)."""
    import torch

    if method not in METHODS:
        raise InvalidInput(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise InvalidInput(f"epochs must be a whole number of at least 1, got {epochs!r}")
    if len({p.product for p in pairs}) < 2:
        raise InvalidInput("fine-tuning needs pairs of at least 2 products (each batch learns from the others)")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model, processor, family = load(checkpoint, device)
    if method == "lora":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:
            raise ConfigurationError(
                "--method lora needs peft: pip install 'imgsearch[finetune]' (or train with --method full)"
            ) from exc
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr or DEFAULT_LR[method], weight_decay=0.01)
    options = options or decoding.DecodeOptions()
    plan = [_batches(pairs, batch_size, rng) for _ in range(epochs)]
    steps = sum(len(epoch) for epoch in plan)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else None
    started, step, loss_value = time.perf_counter(), 0, float("nan")
    for epoch in plan:
        for batch in epoch:
            images = []
            for pair in batch:
                try:
                    images.append(augment(decoding.decode(pair.image, options), rng))
                except InvalidImage as exc:
                    raise InvalidInput(f"a training image of product {pair.product} can't be read: {exc}") from exc
            pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"].to(device)
            tokens = tokenize(processor, model.config, family, [p.text for p in batch])
            inputs = {k: torch.from_numpy(v).to(device) for k, v in tokens.items()}
            if autocast is not None:
                with autocast:
                    loss = model(pixel_values=pixels, return_loss=True, **inputs).loss
            else:
                loss = model(pixel_values=pixels, return_loss=True, **inputs).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
            loss_value = float(loss.detach())
            if on_step is not None:
                on_step(step, steps, loss_value)
    if method == "lora":
        model = model.merge_and_unload()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return Trained(step, time.perf_counter() - started, len(pairs), method, loss_value)
