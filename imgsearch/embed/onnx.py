"""ONNX Runtime for the image and text towers: an export per checkpoint, int8 weights, and a
quality check against torch wherever it runs.

``IMGSEARCH_RUNTIME=onnx`` runs a float32 export of both towers; ``onnx-int8`` the same export with
its weights quantized to int8 (``onnxruntime.quantization.quantize_dynamic``), 2-2.5x torch's
speed on a CPU. Exports are made once per checkpoint with ``torch.onnx.export`` and kept under
``IMGSEARCH_HOME/onnx/<checkpoint hash>/``; a file lock keeps workers starting together from
exporting twice. Preprocessing stays the checkpoint's own processor and tokenizer.

Before a runtime serves a checkpoint the first time, :func:`quality_check` embeds a fixed
calibration set (the bundled sample pictures, a few generated ones, a list of texts) through both
torch float32 and the runtime, and records the minimum and mean cosine between the two. Below
``IMGSEARCH_RUNTIME_MIN_COSINE`` (0.99) the runtime refuses to load, naming the figures: a user
with the real weights learns at first start whether int8 is safe for that checkpoint. The record
names the files it checked by hash, so an export changed since is checked again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from imgsearch.errors import ConfigurationError, ModelUnavailable

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx", "onnx-int8")
EXPORTABLE = ("siglip", "clip")  # SigLIP 2's NaFlex inputs (variable patches per image) don't export
OPSET = 17
DEFAULT_MIN_COSINE = 0.99
CALIBRATION_TEXTS = (
    "a red leather handbag",
    "white running shoes",
    "a blue ceramic mug",
    "black baseball cap with a logo",
    "a wooden desk lamp",
    "green cotton t-shirt",
    "product photo on a white background",
    "a yellow raincoat for children",
    "silver wristwatch with a metal strap",
    "an ergonomic office chair",
    "two mugs on a kitchen table",
    "Rote Sneaker aus Leder",
)

Matrix = npt.NDArray[np.float32]


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ConfigurationError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return runtime


# -- the checkpoint's identity and the export folder --------------------------------------------


def checkpoint_files(source: str) -> Path:
    """The folder holding a checkpoint's files: a local directory, or the hub cache's snapshot."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source, "config.json")
    if not isinstance(found, str):
        raise ModelUnavailable(f"model {source!r} is not in the Hugging Face cache; it can't be exported")
    return Path(found).parent


def checkpoint_hash(folder: Path, cache: Path | None = None) -> str:
    """SHA-256 over the names and contents of the checkpoint's config and weight files;
    remembered in ``cache`` (see :func:`remembered`)."""
    files = [
        file
        for file in sorted(folder.iterdir())
        if file.suffix in (".json", ".safetensors", ".bin", ".model", ".txt") and file.is_file()
    ]

    def compute() -> str:
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode() + b"\0")
            _update(digest, file)
        return digest.hexdigest()

    return remembered(cache, files, compute)


def file_hash(path: Path, cache: Path | None = None) -> str:
    """SHA-256 of a file's contents; remembered in ``cache`` (see :func:`remembered`)."""

    def compute() -> str:
        digest = hashlib.sha256()
        _update(digest, path)
        return digest.hexdigest()

    return remembered(cache, [path], compute)


def _update(digest: Any, path: Path) -> None:
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)


DIGESTS = "digests.json"  # in IMGSEARCH_HOME/onnx: digests remembered by the files' stat
MAX_DIGESTS = 256
RACY_NS = 2_000_000_000  # files modified this recently are hashed each time


def remembered(cache: Path | None, files: list[Path], compute: Callable[[], str]) -> str:
    """``compute()`` (a digest of ``files``), remembered in the JSON file ``cache`` under each
    file's path, size, modification time (ns) and inode, as git's index tells changed files: a
    worker start then reads no checkpoint (the base model's 800 MB took 1-2 s) unless a file
    changed. Without ``cache``, computed each time. A cache that can't be read or written only
    costs the computation."""
    if cache is None:
        return compute()
    stats, newest = [], 0
    for file in files:
        stat = file.stat()
        stats.append(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}")
        newest = max(newest, stat.st_mtime_ns)
    if time.time_ns() - newest < RACY_NS:
        # written just now: a second write within the clock's tick could keep size and mtime
        # (git's "racy" files); such a digest is computed, not remembered
        return compute()
    key = hashlib.sha256("\n".join(stats).encode()).hexdigest()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    value = known.get(key)
    if isinstance(value, str):
        return value
    value = compute()
    known[key] = value
    for stale in list(known)[: max(0, len(known) - MAX_DIGESTS)]:
        del known[stale]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        _atomic(cache, lambda path: path.write_text(json.dumps(known)))
    except OSError as exc:
        log.debug("could not remember digests in %s: %s", cache, exc)
    return value


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` between processes (workers starting together)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as handle:
        started = time.monotonic()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process exporting to %s", folder)
            fcntl.flock(handle, fcntl.LOCK_EX)
            log.info("waited %.1f s for the export", time.monotonic() - started)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write through ``write`` to a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# -- export ---------------------------------------------------------------------------------------


@dataclass
class Meta:
    """What running the exports needs besides them: read once at export, from the torch model."""

    model_type: str
    dim: int
    text_inputs: list[str]  # the tokenizer's outputs the text tower takes, in order
    logit_scale: float  # exp(logit_scale)
    logit_bias: float | None
    checkpoint: str


def _towers(model: Any, text_inputs: list[str]) -> tuple[Any, Any]:
    import torch

    class ImageTower(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            output = self.model.get_image_features(pixel_values=pixel_values)
            return getattr(output, "pooler_output", output)  # type: ignore[no-any-return]

    class TextTower(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            output = self.model.get_text_features(**dict(zip(text_inputs, tensors, strict=True)))
            return getattr(output, "pooler_output", output)  # type: ignore[no-any-return]

    return ImageTower().eval(), TextTower().eval()


def export(model: Any, processor: Any, model_type: str, folder: Path, checkpoint: str) -> Meta:
    """Export both towers of a float32 torch model to ``folder`` (image.onnx, text.onnx), quantize
    them to int8 (image-int8.onnx, text-int8.onnx) and write meta.json. The caller holds the lock."""
    import warnings

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if model_type not in EXPORTABLE:
        raise ConfigurationError(
            f"the ONNX runtimes support {', '.join(EXPORTABLE)} checkpoints; {checkpoint!r} is {model_type!r} "
            "(SigLIP 2's variable-resolution inputs don't export): use IMGSEARCH_RUNTIME=torch"
        )
    texts = list(CALIBRATION_TEXTS[:2])
    tokens = tokenize(processor, model.config, model_type, texts)
    text_inputs = list(tokens)
    image_tower, text_tower = _towers(model, text_inputs)
    size = processor.image_processor.size
    height = size.get("height") or size.get("shortest_edge")
    width = size.get("width") or size.get("shortest_edge")
    crop = getattr(processor.image_processor, "crop_size", None)
    if model_type == "clip" and crop:
        height, width = crop["height"], crop["width"]
    pixels = torch.zeros(2, 3, int(height), int(width))
    started = time.monotonic()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's tracer and deprecation notes
        _atomic(
            folder / "image.onnx",
            lambda path: torch.onnx.export(
                image_tower,
                (pixels,),
                str(path),
                input_names=["pixel_values"],
                output_names=["embedding"],
                dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            ),
        )
        _atomic(
            folder / "text.onnx",
            lambda path: torch.onnx.export(
                text_tower,
                tuple(torch.as_tensor(tokens[name]) for name in text_inputs),
                str(path),
                input_names=text_inputs,
                output_names=["embedding"],
                dynamic_axes={
                    **{n: {0: "batch", 1: "tokens"} for n in text_inputs},
                    "embedding": {0: "batch"},
                },
                opset_version=OPSET,
                dynamo=False,
            ),
        )
    quiet = _QuietRoot()  # the quantizer logs every tensor it skips, at INFO, on the root logger
    for tower in ("image", "text"):
        with quiet:
            _atomic(
                folder / f"{tower}-int8.onnx",
                lambda path, tower=tower: quantize_dynamic(  # type: ignore[misc]
                    folder / f"{tower}.onnx", path, weight_type=QuantType.QInt8, reduce_range=True
                ),
            )
    scale = float(model.logit_scale.detach().float().exp().item())
    bias = getattr(model, "logit_bias", None)
    meta = Meta(
        model_type=model_type,
        dim=_dim(model, model_type),
        text_inputs=text_inputs,
        logit_scale=scale,
        logit_bias=None if bias is None else float(bias.detach().float().item()),
        checkpoint=checkpoint,
    )
    _atomic(folder / "meta.json", lambda path: path.write_text(json.dumps(asdict(meta), indent=2)))
    log.info("exported %s to %s in %.1f s", checkpoint, folder, time.monotonic() - started)
    return meta


class _QuietRoot:
    def __enter__(self) -> None:
        self.level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().setLevel(self.level)


def _dim(model: Any, model_type: str) -> int:
    if model_type == "clip":
        return int(model.config.projection_dim)
    return int(model.config.vision_config.hidden_size)


def tokenize(processor: Any, config: Any, model_type: str, texts: list[str]) -> dict[str, Any]:
    """The tokenizer's output as the embedder makes it (numpy), for torch and ONNX alike."""
    tokenizer = processor.tokenizer
    if model_type in ("siglip", "siglip2"):
        # SigLIP was trained on max_length padding; other padding changes its embeddings
        max_length = config.text_config.max_position_embeddings
        tokens = tokenizer(
            texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np"
        )
    else:
        # no longer than the position embeddings (a checkpoint's tokenizer may allow more)
        max_length = min(tokenizer.model_max_length, config.text_config.max_position_embeddings)
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {key: np.asarray(value, dtype=np.int64) for key, value in tokens.items()}


def read_meta(folder: Path) -> Meta | None:
    try:
        return Meta(**json.loads((folder / "meta.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def exported(folder: Path) -> bool:
    names = ("image.onnx", "text.onnx", "image-int8.onnx", "text-int8.onnx")
    return read_meta(folder) is not None and all((folder / n).is_file() for n in names)


# -- running --------------------------------------------------------------------------------------


class Towers:
    """ONNX Runtime sessions of both towers of one checkpoint, float32 or int8."""

    def __init__(self, folder: Path, int8: bool, threads: int | None, meta: Meta) -> None:
        import onnxruntime as ort

        self.folder, self.int8, self.meta = folder, int8, meta
        suffix = "-int8" if int8 else ""
        self.files = {tower: folder / f"{tower}{suffix}.onnx" for tower in ("image", "text")}
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.image = ort.InferenceSession(
                str(self.files["image"]), options, providers=["CPUExecutionProvider"]
            )
            self.text = ort.InferenceSession(
                str(self.files["text"]), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelUnavailable(f"cannot load the ONNX export in {folder}: {exc}") from exc

    def run_image(self, pixel_values: npt.NDArray[np.float32]) -> Matrix:
        (out,) = self.image.run(None, {"pixel_values": np.ascontiguousarray(pixel_values, dtype=np.float32)})
        return np.asarray(out, dtype=np.float32)

    def run_text(self, tokens: dict[str, Any]) -> Matrix:
        feeds = {name: np.asarray(tokens[name], dtype=np.int64) for name in self.meta.text_inputs}
        (out,) = self.text.run(None, feeds)
        return np.asarray(out, dtype=np.float32)


# -- the quality check ----------------------------------------------------------------------------


@dataclass
class Quality:
    """Cosines between a runtime's embeddings and torch float32's on the calibration set."""

    runtime: str
    image_min: float
    image_mean: float
    text_min: float
    text_mean: float
    images: int
    texts: int
    files: dict[str, str]  # the export files checked, by their SHA-256

    def passes(self, threshold: float) -> bool:
        return min(self.image_min, self.text_min) >= threshold

    def describe(self) -> str:
        return (
            f"{self.runtime}: images min {self.image_min:.5f} mean {self.image_mean:.5f} ({self.images}), "
            f"texts min {self.text_min:.5f} mean {self.text_mean:.5f} ({self.texts}) cosine to torch float32"
        )


def calibration_images() -> list[bytes]:
    """The bundled sample pictures and query pictures, and four generated photos."""
    from imgsearch.samples.edits import original

    here = Path(__file__).resolve().parents[1] / "samples"
    files = sorted((here / "images").glob("*.png")) + sorted((here / "queries").glob("*.png"))
    data = [f.read_bytes() for f in files]
    for index in (1, 3, 5, 7):
        out = io.BytesIO()
        original(index, seed=99).save(out, format="PNG")
        data.append(out.getvalue())
    return data


def _cosines(a: Matrix, b: Matrix) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.asarray(
        (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)), dtype=np.float64
    )


def quality_check(
    runtime: str,
    towers: Towers,
    torch_images: Matrix,
    torch_texts: Matrix,
    pixel_values: npt.NDArray[np.float32],
    tokens: dict[str, Any],
) -> Quality:
    images = _cosines(towers.run_image(pixel_values), torch_images)
    texts = _cosines(towers.run_text(tokens), torch_texts)
    return Quality(
        runtime=runtime,
        image_min=float(images.min()),
        image_mean=float(images.mean()),
        text_min=float(texts.min()),
        text_mean=float(texts.mean()),
        images=len(images),
        texts=len(texts),
        files={
            tower: file_hash(path, towers.folder.parent / DIGESTS) for tower, path in towers.files.items()
        },
    )


def read_quality(folder: Path, runtime: str, towers: Towers) -> Quality | None:
    """The recorded check of ``runtime``, if it checked the files as they are now."""
    try:
        quality = Quality(**json.loads((folder / f"check-{runtime}.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    current = {tower: file_hash(path, folder.parent / DIGESTS) for tower, path in towers.files.items()}
    return quality if quality.files == current else None


def write_quality(folder: Path, quality: Quality) -> None:
    _atomic(
        folder / f"check-{quality.runtime}.json",
        lambda path: path.write_text(json.dumps(asdict(quality), indent=2)),
    )
