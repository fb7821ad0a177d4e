"""Model names and their embedding dimensions, known without loading weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imgsearch.errors import ConfigurationError

# Embedding sizes (the pooled image/text features) of the checkpoints users pick most.
KNOWN_DIMS: dict[str, int] = {
    "google/siglip-base-patch16-224": 768,
    "google/siglip-base-patch16-256": 768,
    "google/siglip-base-patch16-384": 768,
    "google/siglip-base-patch16-512": 768,
    "google/siglip-base-patch16-256-multilingual": 768,
    "google/siglip-large-patch16-256": 1024,
    "google/siglip-large-patch16-384": 1024,
    "google/siglip-so400m-patch14-224": 1152,
    "google/siglip-so400m-patch14-384": 1152,
    "google/siglip-so400m-patch16-256-i18n": 1152,
    "google/siglip2-base-patch16-224": 768,
    "google/siglip2-base-patch16-256": 768,
    "google/siglip2-base-patch16-384": 768,
    "google/siglip2-base-patch16-512": 768,
    "google/siglip2-large-patch16-256": 1024,
    "google/siglip2-large-patch16-384": 1024,
    "google/siglip2-large-patch16-512": 1024,
    "google/siglip2-so400m-patch14-224": 1152,
    "google/siglip2-so400m-patch14-384": 1152,
    "google/siglip2-so400m-patch16-256": 1152,
    "google/siglip2-so400m-patch16-384": 1152,
    "google/siglip2-so400m-patch16-512": 1152,
    "google/siglip2-giant-opt-patch16-256": 1536,
    "google/siglip2-giant-opt-patch16-384": 1536,
    "openai/clip-vit-base-patch32": 512,
    "openai/clip-vit-base-patch16": 512,
    "openai/clip-vit-large-patch14": 768,
    "openai/clip-vit-large-patch14-336": 768,
    # image-only backbones (no text tower): DINOv2 (Apache-2.0) and DINOv3 (its own licence, gated)
    "facebook/dinov2-small": 384,
    "facebook/dinov2-base": 768,
    "facebook/dinov2-large": 1024,
    "facebook/dinov2-giant": 1536,
    "facebook/dinov2-with-registers-small": 384,
    "facebook/dinov2-with-registers-base": 768,
    "facebook/dinov2-with-registers-large": 1024,
    "facebook/dinov3-vits16-pretrain-lvd1689m": 384,
    "facebook/dinov3-vits16plus-pretrain-lvd1689m": 384,
    "facebook/dinov3-vitb16-pretrain-lvd1689m": 768,
    "facebook/dinov3-vitl16-pretrain-lvd1689m": 1024,
    "facebook/dinov3-vith16plus-pretrain-lvd1689m": 1280,
}

# models with an image tower only: a text query on one is refused, naming it
IMAGE_ONLY = ("dinov2", "dinov3_vit", "dinov2_with_registers")
# how an image-only backbone's tokens become one vector, named after the checkpoint: ``NAME#gem``
POOLINGS = ("cls", "mean", "gem")
DEFAULT_POOLING = "cls"


INT8_SUFFIX = "@onnx-int8"  # a model registered with its int8 ONNX embeddings: a model of its own


def split_name(name: str) -> tuple[str, bool]:
    """A registered model name as (checkpoint, int8): ``"X@onnx-int8"`` is X's int8 embeddings,
    which differ from X's float32 ones and so never share a model row with them."""
    if name.endswith(INT8_SUFFIX):
        return name[: -len(INT8_SUFFIX)], True
    return name, False


def split_pooling(checkpoint: str) -> tuple[str, str | None]:
    """``"X#gem"`` as ``("X", "gem")``; a name without a pooling as ``(name, None)``. An unknown
    pooling is a :class:`ConfigurationError` naming the three."""
    base, sep, pooling = checkpoint.rpartition("#")
    if not sep:
        return checkpoint, None
    if pooling not in POOLINGS:
        raise ConfigurationError(
            f"model {checkpoint!r}: the pooling after '#' is one of {', '.join(POOLINGS)}, got {pooling!r}"
        )
    return base, pooling


def dim_from_config(config: dict[str, Any]) -> int:
    """The embedding dimension a transformers config describes (SigLIP, SigLIP 2, CLIP, or an
    image-only DINOv2 or DINOv3 backbone: its hidden size, whatever the pooling)."""
    model_type = config.get("model_type")
    if model_type in IMAGE_ONLY:
        return int(config.get("hidden_size", 768))
    if model_type in ("siglip", "siglip2"):
        vision = config.get("vision_config") or {}
        return int(vision.get("hidden_size", 768))
    if model_type == "clip":
        return int(config.get("projection_dim", 512))
    raise ConfigurationError(
        f"unsupported model type {model_type!r}: imgsearch embeds with SigLIP, SigLIP 2, CLIP, DINOv2 or DINOv3"
    )


def _cached_config(name: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid hub id either (e.g. a path to a missing folder)
        return None
    return Path(found) if isinstance(found, str) else None


def model_dim(name: str) -> int:
    """Dimension of ``name`` (a hub id or a local checkpoint directory), without loading weights."""
    name, _ = split_name(name)
    name, _ = split_pooling(name)
    path = Path(name).expanduser()
    config_file: Path | None = path / "config.json" if path.is_dir() else None
    if config_file is None:
        if name in KNOWN_DIMS:
            return KNOWN_DIMS[name]
        config_file = _cached_config(name)
    if config_file is None or not config_file.is_file():
        raise ConfigurationError(
            f"unknown model {name!r}: not a built-in SigLIP/CLIP name, not a local directory with a "
            "config.json, and not in the Hugging Face cache; point IMGSEARCH_MODEL at a local checkpoint"
        )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {config_file}: {exc}") from exc
    return dim_from_config(config)


def canonical_name(name: str) -> str:
    """How a model is registered: a local checkpoint directory by its absolute path (workers in
    other directories must find it), a hub id as given; ``#pooling`` and ``@onnx-int8`` stay at
    the end."""
    checkpoint, int8 = split_name(name)
    checkpoint, pooling = split_pooling(checkpoint)
    path = Path(checkpoint).expanduser()
    found = str(path.resolve()) if path.is_dir() else checkpoint
    return found + (f"#{pooling}" if pooling else "") + (INT8_SUFFIX if int8 else "")
