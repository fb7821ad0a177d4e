"""Training a checkpoint on (text, image) pairs with its family's own loss, and saving it as a
plain checkpoint that ``from_pretrained`` loads.

* **Loss**: the model's own, through ``return_loss=True``: SigLIP's and SigLIP 2's sigmoid loss,
  CLIP's contrastive (InfoNCE both ways) loss. An image-only backbone (DINOv2, DINOv3) learns
  image↔image: two views of each product (two of its images, or two crops of its only one),
  InfoNCE both ways at temperature 0.07, the batch's other products as negatives. A batch holds
  one pair per product, so no two of its pairs are positives of each other.
* **Method**: ``full`` trains every weight (small models, or training from random weights);
  ``lora`` trains low-rank adapters (``peft``) on the encoder layers' attention and MLP
  projections, then merges them in (``merge_and_unload``). The vision head's
  ``MultiheadAttention`` is left out: LoRA on its ``out_proj`` gets no gradient.
* **Device**: ``cuda`` trains under bfloat16 autocast; the CPU in float32.
* Each image is decoded by imgsearch's own path (:func:`imgsearch.embed.decode.decode`), then a
  random crop of 70-100% of its area and a random mirror make each epoch's view a new one.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgsearch.embed import backbones
from imgsearch.embed import decode as decoding
from imgsearch.embed.loading import resolve
from imgsearch.embed.onnx import tokenize
from imgsearch.embed.registry import DEFAULT_POOLING, IMAGE_ONLY, split_pooling
from imgsearch.errors import ConfigurationError, InvalidImage, InvalidInput, ModelUnavailable

METHODS = ("full", "lora")
TEXT_FAMILIES = ("siglip", "siglip2", "clip")
# the encoder layers' projections, text and vision towers, not the vision head's attention
LORA_TARGETS = r".*encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"
# an image-only backbone's: DINOv2's and DINOv3's attention and MLP projections
BACKBONE_LORA_TARGETS = r".*layer\.\d+\.(attention\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(fc1|fc2|up_proj|down_proj))"
DEFAULT_LR = {"full": 1e-5, "lora": 1e-4}
DEFAULT_BATCH_SIZE = 64
TEMPERATURE = 0.07  # InfoNCE's, for image-only backbones


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


def _batches(pairs: Sequence[Pair], batch_size: int, rng: random.Random) -> list[list[tuple[Pair, Pair]]]:
    """One epoch: every product once, in batches of distinct products, each with one of its pairs
    and a second one (another image of it when it has one: an image-only model's positive)."""
    by_product: dict[str, list[Pair]] = {}
    for pair in pairs:
        by_product.setdefault(pair.product, []).append(pair)
    products = list(by_product)
    rng.shuffle(products)
    chosen = []
    for product in products:
        first = rng.choice(by_product[product])
        others = [p for p in by_product[product] if p.image != first.image] or [first]
        chosen.append((first, rng.choice(others)))
    batches = [chosen[i : i + batch_size] for i in range(0, len(chosen), batch_size)]
    return [b for b in batches if len(b) > 1]  # a lone pair has no negative to learn from


def load(checkpoint: str, device: str) -> tuple[Any, Any, str, str]:
    """The model (float32, on ``device``), its processor, its family and the source it came from."""
    from transformers import AutoConfig, AutoModel, AutoProcessor

    source, offline = resolve(checkpoint)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
        if config.model_type not in (*TEXT_FAMILIES, *IMAGE_ONLY):
            raise ConfigurationError(
                f"fine-tuning takes {', '.join((*TEXT_FAMILIES, *IMAGE_ONLY))} checkpoints; "
                f"{checkpoint!r} is {config.model_type!r}"
            )
        if config.model_type in IMAGE_ONLY:
            processor: Any = backbones.preprocessor(source, config)
        else:
            processor = AutoProcessor.from_pretrained(source, local_files_only=offline)  # type: ignore[no-untyped-call]  # untyped upstream
        model = AutoModel.from_pretrained(source, local_files_only=offline, dtype=None)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot load model {checkpoint!r}: {exc}") from exc
    return model.float().to(device), processor, config.model_type, source


def _info_nce(first: Any, second: Any) -> Any:
    """InfoNCE both ways between two views of each product (each row's positive is its own)."""
    import torch
    import torch.nn.functional as F

    a, b = F.normalize(first, dim=-1), F.normalize(second, dim=-1)
    logits = a @ b.T / TEMPERATURE
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


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

    A text-image model learns each pair's text against its image with its own loss. An image-only
    backbone (``NAME#pooling``) learns two views of each product (two of its images, or two crops
    of its one) with InfoNCE; under ``#gem``, GeM's exponent is learnt too and kept beside the
    weights (:data:`imgsearch.embed.backbones.SETTINGS_FILE`). ``on_step(step, steps, loss)`` is
    told after each step (a progress bar)."""
    import torch

    if method not in METHODS:
        raise InvalidInput(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise InvalidInput(f"epochs must be a whole number of at least 1, got {epochs!r}")
    if len({p.product for p in pairs}) < 2:
        raise InvalidInput("fine-tuning needs pairs of at least 2 products (each batch learns from the others)")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    checkpoint, pooling = split_pooling(checkpoint)
    model, processor, family, source = load(checkpoint, device)
    image_only = family in IMAGE_ONLY
    if pooling is not None and not image_only:
        raise ConfigurationError(f"a pooling after '#' is for image-only backbones; {checkpoint!r} is {family}")
    pooling = pooling or DEFAULT_POOLING
    if method == "lora":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:
            raise ConfigurationError(
                "--method lora needs peft: pip install 'imgsearch[finetune]' (or train with --method full)"
            ) from exc
        targets = BACKBONE_LORA_TARGETS if image_only else LORA_TARGETS
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    gem = torch.nn.Parameter(torch.tensor(backbones.gem_p(source), device=device))
    if image_only and pooling == "gem":
        params.append(gem)
    registers = backbones.register_tokens(model.config)
    optimizer = torch.optim.AdamW(params, lr=lr or DEFAULT_LR[method], weight_decay=0.01)
    options = options or decoding.DecodeOptions()
    plan = [_batches(pairs, batch_size, rng) for _ in range(epochs)]
    steps = sum(len(epoch) for epoch in plan)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else None
    started, step, loss_value = time.perf_counter(), 0, float("nan")

    def pixels(chosen: list[Pair]) -> Any:
        images = []
        for pair in chosen:
            try:
                images.append(augment(decoding.decode(pair.image, options), rng))
            except InvalidImage as exc:
                raise InvalidInput(f"a training image of product {pair.product} can't be read: {exc}") from exc
        return processor.image_processor(images=images, return_tensors="pt")["pixel_values"].to(device)

    def loss_of(batch: list[tuple[Pair, Pair]]) -> Any:
        if image_only:
            views = model(pixel_values=torch.cat([pixels([a for a, _ in batch]), pixels([b for _, b in batch])]))
            pooled = backbones.pool(views, pooling, registers, gem)
            return _info_nce(pooled[: len(batch)], pooled[len(batch) :])
        tokens = tokenize(processor, model.config, family, [a.text for a, _ in batch])
        inputs = {k: torch.from_numpy(v).to(device) for k, v in tokens.items()}
        return model(pixel_values=pixels([a for a, _ in batch]), return_loss=True, **inputs).loss

    for epoch in plan:
        for batch in epoch:
            if autocast is not None:
                with autocast:
                    loss = loss_of(batch)
            else:
                loss = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if image_only and pooling == "gem":
                with torch.no_grad():
                    gem.clamp_(min=1.0)  # below 1 GeM is no longer a mean that leans to the largest
            step += 1
            loss_value = float(loss.detach())
            if on_step is not None:
                on_step(step, steps, loss_value)
    if method == "lora":
        model = model.merge_and_unload()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if image_only:  # imgsearch's own preprocessing reads the checkpoint's numbers: keep them
        if (Path(source) / "preprocessor_config.json").is_file():
            shutil.copy(Path(source) / "preprocessor_config.json", out / "preprocessor_config.json")
        (out / backbones.SETTINGS_FILE).write_text(json.dumps({"gem_p": round(float(gem.detach()), 4)}) + "\n")
    else:
        processor.save_pretrained(out)
    return Trained(step, time.perf_counter() - started, len(pairs), method, loss_value)
