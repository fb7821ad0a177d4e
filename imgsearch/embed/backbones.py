"""Image-only backbones (DINOv2, DINOv3): imgsearch's own preprocessing and the pooling of their
tokens into one vector.

* **Preprocessing** is done here, not by the checkpoint's image processor: DINOv3's imports
  torchvision, which imgsearch doesn't install. The checkpoint's ``preprocessor_config.json`` is
  read for its numbers only (``size`` as a shortest edge or a height and width, ``crop_size`` with
  ``do_center_crop``, ``image_mean``, ``image_std``); without one, the image is resized to the
  model's ``image_size`` and normalised with ImageNet's mean and deviation.
* **Pooling**, named after the checkpoint (``facebook/dinov2-small#gem``): ``cls``, the class
  token as the model pools it (``pooler_output``, the default); ``mean``, the mean of the patch
  tokens (register tokens left out); ``gem``, generalised mean pooling over the patch tokens,
  ``(mean(max(x, eps)^p))^(1/p)``, with ``p`` from the checkpoint's ``imgsearch.json``
  (``{"gem_p": ...}``, which ``imgsearch finetune`` learns) or 3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_GEM_P = 3.0
GEM_EPS = 1e-6
SETTINGS_FILE = "imgsearch.json"  # what imgsearch keeps beside a checkpoint's weights (GeM's p)


class ImagePreprocessor:
    """Resize, centre-crop, rescale and normalise PIL images into ``pixel_values``, the same
    numbers the checkpoint's own processor would use. It stands where a transformers processor
    stands: ``processor.image_processor(images=..., return_tensors="pt")``."""

    def __init__(self, config: dict[str, Any], image_size: int) -> None:
        size = config.get("size") or {"height": image_size, "width": image_size}
        self.shortest_edge: int | None = size.get("shortest_edge")
        self.size = (int(size.get("width", image_size)), int(size.get("height", image_size)))
        crop = config.get("crop_size") if config.get("do_center_crop", "crop_size" in config) else None
        self.crop = None if not crop else (int(crop["width"]), int(crop["height"]))
        self.mean = np.asarray(config.get("image_mean", IMAGENET_MEAN), dtype=np.float32)
        self.std = np.asarray(config.get("image_std", IMAGENET_STD), dtype=np.float32)
        self.rescale = float(config.get("rescale_factor", 1 / 255))

    @property
    def image_processor(self) -> ImagePreprocessor:
        return self

    def _one(self, image: Any) -> np.ndarray:
        from PIL import Image

        image = image.convert("RGB")
        if self.shortest_edge is not None:
            scale = self.shortest_edge / min(image.size)
            target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        else:
            target = self.size
        image = image.resize(target, Image.Resampling.BICUBIC)
        if self.crop is not None:
            width, height = self.crop
            left, top = (image.width - width) // 2, (image.height - height) // 2
            image = image.crop((left, top, left + width, top + height))
        array = np.asarray(image, dtype=np.float32) * self.rescale
        return ((array - self.mean) / self.std).transpose(2, 0, 1)

    def __call__(self, images: list[Any], return_tensors: str = "pt") -> dict[str, Any]:
        import torch

        return {"pixel_values": torch.from_numpy(np.stack([self._one(i) for i in images]))}


def preprocessor(source: str, model_config: Any) -> ImagePreprocessor:
    """The checkpoint's preprocessing numbers (a local folder's, or the hub cache's)."""
    found: dict[str, Any] = {}
    path = Path(source) / "preprocessor_config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "preprocessor_config.json")
            path = Path(cached) if isinstance(cached, str) else path
        except (ImportError, ValueError):
            pass
    if path.is_file():
        found = json.loads(path.read_text())
    return ImagePreprocessor(found, int(getattr(model_config, "image_size", 224)))


def gem_p(source: str) -> float:
    """GeM's exponent kept beside the checkpoint (:data:`SETTINGS_FILE`), else 3."""
    try:
        return float(json.loads((Path(source) / SETTINGS_FILE).read_text())["gem_p"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_GEM_P


def pool(output: Any, pooling: str, register_tokens: int, p: float | torch.Tensor = DEFAULT_GEM_P) -> torch.Tensor:
    """One vector per image from a backbone's output (see the module's doc)."""
    if pooling == "cls":
        pooled: torch.Tensor = output.pooler_output
        return pooled
    patches = output.last_hidden_state[:, 1 + register_tokens :]
    if pooling == "mean":
        mean: torch.Tensor = patches.mean(dim=1)
        return mean
    gem: torch.Tensor = patches.clamp(min=GEM_EPS).pow(p).mean(dim=1).pow(1.0 / p)
    return gem


def register_tokens(config: Any) -> int:
    return int(getattr(config, "num_register_tokens", 0) or 0)
