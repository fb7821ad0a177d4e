"""Checkpoints and images for the benchmarks that run a model: one of SigLIP base/16's size with
random weights (speed does not depend on the weights, and no hub is needed), the tests' tiny one,
and JPEGs like product shots. Saved once beside IMGSEARCH_HOME."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.tiny_models


def build_base_checkpoint(path: Path) -> Path:
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    from tests.tiny_models import small_sentencepiece  # the tokenizer only matters for text

    tokenizer = SiglipTokenizer(vocab_file=str(small_sentencepiece(path)))
    # the processor settings of google/siglip-base-patch16-224
    processor = SiglipImageProcessor(
        size={"height": 224, "width": 224}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    SiglipProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(path)
    torch.manual_seed(0)
    SiglipModel(SiglipConfig()).eval().save_pretrained(path)
    return path


def base_checkpoint(home: Path) -> Path:
    """The base-size checkpoint (random weights) beside ``home``, saved the first time."""
    path = home.parent / f"{home.name}-siglip-base-random"
    if not (path / "config.json").exists():
        print(f"saving a siglip-base-sized checkpoint (random weights) to {path} ...", flush=True)
        path.mkdir(parents=True, exist_ok=True)
        build_base_checkpoint(path)
    return path


def product_photos(count: int, size: tuple[int, int] = (800, 800)) -> list[bytes]:
    """JPEGs like product shots: an object on a plain background, some texture, quality 90."""
    rng = np.random.default_rng(0)
    photos = []
    for i in range(count):
        y, x = np.mgrid[0 : size[1], 0 : size[0]]
        background = np.full((*size[::-1], 3), 245.0)
        mask = ((x - size[0] / 2) ** 2 / (size[0] / 3) ** 2 + (y - size[1] / 2) ** 2 / (size[1] / 4) ** 2) < 1
        colour = rng.uniform(0, 255, 3)
        background[mask] = colour + rng.normal(0, 12, (int(mask.sum()), 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(background, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        photos.append(buf.getvalue())
        del i
    return photos


def build_models(folder: Path) -> dict[str, Path]:
    """The tests' tiny SigLIP, and one of SigLIP base/16's size (``SiglipConfig()``: 768-d,
    12 + 12 layers, 224 px, 64 text tokens) with random weights and the tests' small tokenizer."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    from tests.tiny_models import build_tiny_siglip, small_sentencepiece

    tiny = build_tiny_siglip(folder / "tiny")
    base = folder / "base"
    base.mkdir()
    tokenizer = SiglipTokenizer(vocab_file=str(small_sentencepiece(base)), model_max_length=64)
    image_processor = SiglipImageProcessor(size={"height": 224, "width": 224})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(base)
    torch.manual_seed(0)
    config = SiglipConfig()
    config.text_config.pad_token_id, config.text_config.eos_token_id, config.text_config.bos_token_id = (
        0,
        1,
        1,
    )
    SiglipModel(config).eval().save_pretrained(base)
    return {"tiny": tiny, "base": base}
