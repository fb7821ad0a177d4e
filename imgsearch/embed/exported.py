"""Opening a checkpoint's ONNX towers for the ``onnx`` and ``onnx-int8`` runtimes: exported once per
checkpoint, checked against torch once per export, refused below the minimum cosine
(:mod:`imgsearch.embed.onnx` exports, runs and checks them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imgsearch.embed import decode as decoding
from imgsearch.embed import onnx
from imgsearch.errors import ConfigurationError, ModelUnavailable


def open_towers(
    *,
    runtime: str,
    checkpoint: str,
    source: str,
    offline: bool,
    config: Any,
    processor: Any,
    device_setting: str | None,
    home: Path | None,
    threads: int | None,
    min_cosine: float,
    options: decoding.DecodeOptions,
) -> tuple[onnx.Towers, onnx.Quality, onnx.Meta]:
    """Export (once per checkpoint), open the runtime's sessions, check them against torch
    (once per export) and refuse them below ``min_cosine``."""
    from transformers import AutoModel

    if device_setting and not device_setting.startswith("cpu"):
        raise ConfigurationError(f"the runtime {runtime} runs on the CPU; IMGSEARCH_DEVICE is {device_setting!r}")
    if config.model_type not in onnx.EXPORTABLE:
        raise ConfigurationError(
            f"the ONNX runtimes support {', '.join(onnx.EXPORTABLE)} checkpoints; {checkpoint!r} is "
            f"{config.model_type!r} (SigLIP 2's variable-resolution inputs don't export): use IMGSEARCH_RUNTIME=torch"
        )
    from imgsearch.settings import default_home

    home = home or default_home()  # settings are read by entry points (Embedder.from_settings)
    exports = home / "onnx"
    folder = exports / onnx.checkpoint_hash(onnx.checkpoint_files(source), exports / onnx.DIGESTS)[:24]
    torch_model: Any = None

    def load_torch() -> Any:
        model = AutoModel.from_pretrained(source, local_files_only=offline, dtype=None)
        return model.float().eval()

    with onnx.locked(folder):
        if not onnx.exported(folder):
            torch_model = load_torch()
            onnx.export(torch_model, processor, config.model_type, folder, checkpoint)
    meta = onnx.read_meta(folder)
    if meta is None:
        raise ModelUnavailable(f"the ONNX export in {folder} has no readable meta.json")
    towers = onnx.Towers(folder, runtime == "onnx-int8", threads, meta)
    quality = onnx.read_quality(folder, runtime, towers)
    if quality is None:
        with onnx.locked(folder):
            quality = onnx.read_quality(folder, runtime, towers)
            if quality is None:
                torch_model = torch_model or load_torch()
                quality = _check_against_torch(runtime, towers, torch_model, processor, config, options)
                onnx.write_quality(folder, quality)
    del torch_model
    if not quality.passes(min_cosine):
        raise ModelUnavailable(
            f"the {runtime} runtime is refused for {checkpoint!r}: {quality.describe()}, below "
            f"IMGSEARCH_RUNTIME_MIN_COSINE={min_cosine}; use IMGSEARCH_RUNTIME=torch for this checkpoint"
        )
    return towers, quality, meta


def _check_against_torch(
    runtime: str, towers: onnx.Towers, model: Any, processor: Any, config: Any, options: decoding.DecodeOptions
) -> onnx.Quality:
    import torch

    decoded = [decoding.decode(data, options) for data in onnx.calibration_images()]
    pixels = processor.image_processor(images=decoded, return_tensors="pt")["pixel_values"]
    tokens = onnx.tokenize(processor, config, config.model_type, list(onnx.CALIBRATION_TEXTS))
    with torch.inference_mode():
        images = model.get_image_features(pixel_values=pixels)
        texts = model.get_text_features(**{k: torch.from_numpy(v) for k, v in tokens.items()})
    return onnx.quality_check(
        runtime,
        towers,
        getattr(images, "pooler_output", images).float().numpy(),
        getattr(texts, "pooler_output", texts).float().numpy(),
        pixels.numpy(),
        tokens,
    )
