"""The embedder: SigLIP, SigLIP 2 or CLIP image and text towers, or an image-only DINOv2 or DINOv3
backbone (:mod:`imgsearch.embed.backbones`), through transformers.

Loaded once per process, lazily and thread-safely, on first use (immich's pattern: a public
method that loads under a lock, then calls the private one). Returns L2-normalised float32
numpy arrays. Needs the ``worker`` extra (torch, transformers).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from imgsearch.embed import backbones, exported, onnx
from imgsearch.embed import decode as decoding
from imgsearch.embed.batching import CacheInfo, LRUCache, MicroBatcher
from imgsearch.embed.loading import resolve
from imgsearch.embed.registry import (
    DEFAULT_POOLING,
    IMAGE_ONLY,
    INT8_SUFFIX,
    model_dim,
    split_name,
    split_pooling,
)
from imgsearch.errors import ConfigurationError, InvalidImage, InvalidInput, InvalidQuery, ModelUnavailable
from imgsearch.ingest import checks
from imgsearch.ingest.images import Limits
from imgsearch.settings import Settings

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float32]
SUPPORTED = ("siglip", "siglip2", "clip", *IMAGE_ONLY)
DEFAULT_BATCH_SIZE = 32  # CPU: larger batches gain <5% here; GPU: see docs/benchmarks.md
MAX_TEXT_CHARS = 2000
# text queries remembered per embedder (768-d: ~3 KiB each); declared once, on Settings
DEFAULT_TEXT_CACHE_SIZE: int = Settings.model_fields["text_cache_size"].default
DEFAULT_QUERY_BATCH_SIZE: int = Settings.model_fields["query_batch_size"].default
DEFAULT_QUERY_BATCH_WAIT_MS: float = Settings.model_fields["query_batch_wait_ms"].default


@dataclass
class PreparedBatch:
    """A batch decoded and preprocessed, ready for the forward pass."""

    inputs: dict[str, Any]  # processor output (pixel_values, and for NaFlex the mask and shapes)
    good: list[int]  # positions in the batch with a usable image
    errors: dict[int, InvalidImage]


def check_text(text: object) -> None:
    """Raise :class:`InvalidInput` unless ``text`` is a text query the embedder takes."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"a text query must be a non-empty string, got {text!r}")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(f"text query is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    checks.unicode(text, "text query")


def _normalise(features: torch.Tensor) -> Matrix:
    return _normalise_array(features.detach().float().cpu().numpy())


def _normalise_array(array: npt.NDArray[Any]) -> Matrix:
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    result: Matrix = (array / np.maximum(norms, 1e-12)).astype(np.float32)
    return result


class Embedder:
    """Image and text embeddings from one checkpoint.

    >>> embedder = Embedder("google/siglip-base-patch16-224")      # doctest: +SKIP
    >>> embedder.embed_texts(["a red shoe"]).shape                  # doctest: +SKIP
    (1, 768)
    """

    def __init__(
        self,
        name: str,
        *,
        device: str | None = None,
        options: decoding.DecodeOptions | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        text_cache_size: int = DEFAULT_TEXT_CACHE_SIZE,
        query_batch_size: int = DEFAULT_QUERY_BATCH_SIZE,
        query_batch_wait_ms: float = DEFAULT_QUERY_BATCH_WAIT_MS,
        runtime: str = "torch",
        threads: int | None = None,
        home: Path | None = None,
        min_cosine: float = onnx.DEFAULT_MIN_COSINE,
    ) -> None:
        onnx.check_runtime(runtime)
        self.checkpoint, int8 = split_name(name)
        self.checkpoint, self.pooling = split_pooling(self.checkpoint)  # set at load for a backbone
        self._gem_p = backbones.DEFAULT_GEM_P
        if runtime == "onnx-int8" and not int8:
            raise ConfigurationError(
                f"the runtime onnx-int8 gives embeddings that differ from {name!r}'s float32 ones and must "
                f"not mix with them: int8 embeddings are the model {name + INT8_SUFFIX!r}. Switch the "
                f"catalog with `imgsearch reembed --model {name + INT8_SUFFIX}` and `imgsearch model "
                "activate`, or use IMGSEARCH_RUNTIME=torch or onnx (float32) for this model"
            )
        # the model's name decides its precision; the runtime setting picks float32's executor
        self.runtime = "onnx-int8" if int8 else runtime
        self._threads = threads
        self._home = home
        self.min_cosine = min_cosine
        self.quality: onnx.Quality | None = None  # the ONNX runtimes' check against torch
        self._towers: onnx.Towers | None = None
        self._config: Any = None
        if batch_size < 1:
            raise ConfigurationError(f"batch size must be at least 1, got {batch_size}")
        if text_cache_size < 0:
            raise ConfigurationError(f"text cache size must not be negative, got {text_cache_size}")
        if query_batch_size < 1:
            raise ConfigurationError(f"query batch size must be at least 1, got {query_batch_size}")
        if query_batch_wait_ms < 0:
            raise ConfigurationError(f"query batch wait must not be negative, got {query_batch_wait_ms}")
        self.name = name
        self.options = options or decoding.DecodeOptions()
        self.batch_size = batch_size
        self._device_setting = device
        self._lock = threading.Lock()
        self._model: Any = None
        self._processor: Any = None
        self._model_type = ""
        self._logit_params: tuple[float, float | None] | None = None
        self.device = "cpu"
        self.dtype: Any = None
        # a shop's search box sees the same queries again and again: each costs a text forward
        # pass (tens of ms on a CPU) the first time only
        self._text_cache: LRUCache[str, Matrix] = LRUCache(text_cache_size)
        # queries asked for from many threads at once (a server's requests) share forward passes
        wait = query_batch_wait_ms / 1000
        self._text_batcher: MicroBatcher[str, Matrix] = MicroBatcher(
            self._embed_text_batch, max_size=query_batch_size, max_wait_seconds=wait, name="imgsearch-text"
        )
        self._image_batcher: MicroBatcher[bytes, Matrix] = MicroBatcher(
            self.embed_images, max_size=query_batch_size, max_wait_seconds=wait, name="imgsearch-image"
        )

    @classmethod
    def from_settings(cls, settings: Settings, name: str | None = None) -> Embedder:
        options = decoding.DecodeOptions(
            limits=Limits(settings.max_image_bytes, settings.max_image_pixels),
            aspect=settings.aspect,
            max_aspect_ratio=settings.max_aspect_ratio,
        )
        return cls(
            name or settings.model,
            device=settings.device,
            options=options,
            batch_size=settings.batch_size,
            text_cache_size=settings.text_cache_size,
            query_batch_size=settings.query_batch_size,
            query_batch_wait_ms=settings.query_batch_wait_ms,
            runtime=settings.runtime,
            threads=settings.torch_threads,
            home=settings.home,
            min_cosine=settings.runtime_min_cosine,
        )

    @property
    def dim(self) -> int:
        """The embedding dimension, known without loading weights."""
        return model_dim(self.checkpoint)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load weights and processor once; later calls (from any thread) return at once."""
        if self._model is not None:
            return
        with self._lock:
            if self._model is None:
                self._load()

    def _load(self) -> None:
        source, offline = resolve(self.checkpoint)
        import torch
        import transformers
        from transformers import AutoConfig, AutoModel, AutoProcessor

        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped upstream
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=offline)
            if config.model_type not in SUPPORTED:
                raise ModelUnavailable(
                    f"model {self.name!r} is a {config.model_type!r} model; imgsearch embeds with {', '.join(SUPPORTED)}"
                )
            if self.runtime != "torch":
                processor = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]  # untyped upstream
                    source, local_files_only=offline
                )
                self._load_onnx(source, offline, config, processor)
                return
            image_only = config.model_type in IMAGE_ONLY
            if self.pooling is not None and not image_only:
                raise ConfigurationError(
                    f"model {self.name!r}: a pooling after '#' is for image-only backbones (DINOv2, DINOv3); "
                    f"{config.model_type} pools its own embeddings"
                )
            device = self._device_setting or ("cuda" if torch.cuda.is_available() else "cpu")
            if device.startswith("cuda"):
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            else:
                dtype = torch.float32
            if image_only:  # preprocessed here: DINOv3's own processor imports torchvision
                processor = backbones.preprocessor(source, config)
                self.pooling = self.pooling or DEFAULT_POOLING
                self._gem_p = backbones.gem_p(source)
            else:
                processor = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]  # untyped upstream
                    source, local_files_only=offline
                )
            model = AutoModel.from_pretrained(source, local_files_only=offline, dtype=dtype)
            model = model.to(device).eval()
        except ModelUnavailable:
            raise
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelUnavailable(f"cannot load model {self.name!r}: {exc}") from exc
        self._processor, self.device, self.dtype = processor, device, dtype
        self._model_type = config.model_type
        self._model = model  # last: `loaded` turns true only once everything is in place
        log.info("loaded %s (%s) on %s as %s", self.name, config.model_type, device, dtype)

    def _load_onnx(self, source: str, offline: bool, config: Any, processor: Any) -> None:
        """The ONNX runtime's towers (:func:`imgsearch.embed.exported.open_towers`)."""
        towers, quality, meta = exported.open_towers(
            runtime=self.runtime, checkpoint=self.checkpoint, source=source, offline=offline, config=config,
            processor=processor, device_setting=self._device_setting, home=self._home, threads=self._threads,
            min_cosine=self.min_cosine, options=self.options,
        )  # fmt: skip
        self.quality = quality
        self._processor, self._config, self._model_type = processor, config, config.model_type
        self.device, self.dtype = "cpu", "int8" if towers.int8 else "float32"
        self._logit_params = meta.logit_scale, meta.logit_bias
        self._towers = towers
        self._model = towers  # last: `loaded` turns true only once everything is in place
        log.info("loaded %s (%s) with ONNX Runtime, %s; %s", self.name, config.model_type, self.dtype, quality.describe())

    # -- images ---------------------------------------------------------------------------

    def prepare(self, images: Sequence[bytes]) -> PreparedBatch:
        """Decode and preprocess a batch; bad images become per-position errors (CPU, no model needed
        beyond the processor, so it can run in another thread while the model works)."""
        self.load()
        decoded: list[Image.Image] = []
        good: list[int] = []
        errors: dict[int, InvalidImage] = {}
        for position, data in enumerate(images):
            try:
                if not isinstance(data, bytes | bytearray | memoryview):
                    raise InvalidImage(f"image must be bytes, got {type(data).__name__}")
                decoded.append(decoding.decode(bytes(data), self.options))
                good.append(position)
            except InvalidImage as exc:
                errors[position] = exc
        inputs = self._processor.image_processor(images=decoded, return_tensors="pt") if decoded else {}
        return PreparedBatch(dict(inputs), good, errors)

    def forward(self, batch: PreparedBatch) -> Matrix:
        """The image tower on a prepared batch: one row per good image."""
        import torch

        if not batch.good:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        if self._towers is not None:
            return _normalise_array(self._towers.run_image(batch.inputs["pixel_values"].numpy()))
        inputs = {
            key: (value.to(self.device, self.dtype) if key == "pixel_values" else value.to(self.device))
            for key, value in batch.inputs.items()
        }
        with torch.inference_mode():
            if self.image_only:
                output = self._model(**inputs)
                register_tokens = backbones.register_tokens(self._model.config)
                return _normalise(backbones.pool(output, self.pooling or DEFAULT_POOLING, register_tokens, self._gem_p))
            output = self._model.get_image_features(**inputs)
        return _normalise(getattr(output, "pooler_output", output))

    @property
    def image_only(self) -> bool:
        """Whether the model has no text tower (DINOv2, DINOv3); known once it is loaded."""
        return self._model_type in IMAGE_ONLY

    def _refuse_text(self) -> None:
        self.load()
        if self.image_only:
            raise InvalidQuery(
                f"the model {self.name!r} is an image-only backbone ({self._model_type}): it embeds no text; "
                "search it with an image, a stored image (similar_to) or a vector, or text with mode='lexical'"
            )

    def assemble(self, batch: PreparedBatch, count: int, vectors: Matrix) -> list[Matrix | InvalidImage]:
        """One result per image of a prepared batch: its vector (rows of ``vectors``) or its error."""
        results: list[Matrix | InvalidImage] = list(batch.errors.get(i) for i in range(count))  # type: ignore[misc]
        for row, position in enumerate(batch.good):
            results[position] = vectors[row]
        return results

    def embed_images(self, images: Sequence[bytes]) -> list[Matrix | InvalidImage]:
        """One result per image, in order: its unit vector, or the :class:`InvalidImage` it raised.

        A bad image never fails the others.
        """
        results: list[Matrix | InvalidImage] = []
        for batch_results in self.iter_embed_images(images):
            results.extend(batch_results)
        return results

    def iter_embed_images(
        self, images: Iterable[bytes], batch_size: int | None = None
    ) -> Iterator[list[Matrix | InvalidImage]]:
        """Embed in batches, decoding batch n+1 in a thread while the model runs batch n."""
        size = batch_size or self.batch_size
        self.load()

        def batches() -> Iterator[list[bytes]]:
            chunk: list[bytes] = []
            for item in images:
                chunk.append(item)
                if len(chunk) == size:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgsearch-decode") as pool:
            source = batches()
            first = next(source, None)
            if first is None:
                return
            pending = (first, pool.submit(self.prepare, first))
            for upcoming in source:
                current, future = pending
                pending = (upcoming, pool.submit(self.prepare, upcoming))
                prepared = future.result()
                yield self.assemble(prepared, len(current), self.forward(prepared))
            current, future = pending
            prepared = future.result()
            yield self.assemble(prepared, len(current), self.forward(prepared))

    def decode(self, data: bytes) -> Image.Image:
        """An image's upright RGB pixels, within this embedder's limits (unpadded: the pixels a
        region's box names); raises its :class:`InvalidImage`."""
        return decoding.decode(data, self.options, upright=True)

    def embed_pictures(self, pictures: Sequence[Image.Image]) -> Matrix:
        """Unit vectors of upright RGB images (an image's regions, cropped), one row each."""
        self.load()
        rows = [np.zeros((0, self.dim), dtype=np.float32)]
        for start in range(0, len(pictures), self.batch_size):
            chunk = [decoding.fit(p, self.options) for p in pictures[start : start + self.batch_size]]
            inputs = self._processor.image_processor(images=chunk, return_tensors="pt")
            rows.append(self.forward(PreparedBatch(dict(inputs), list(range(len(chunk))), {})))
        return np.concatenate(rows)

    def embed_image(self, data: bytes) -> Matrix:
        """One image's unit vector (a query); raises its :class:`InvalidImage`. Images asked for
        from several threads at once share a forward pass (:class:`MicroBatcher`)."""
        return self._image_batcher.submit(data)

    # -- text -----------------------------------------------------------------------------

    def embed_texts(self, texts: Sequence[str]) -> Matrix:
        """Unit vectors of the text tower, one row per text."""
        import torch

        if isinstance(texts, str):
            raise InvalidInput("embed_texts takes a list of strings; wrap a single query in a list")
        for text in texts:
            check_text(text)
        if not texts:  # nothing to embed: no weights loaded for it
            return np.zeros((0, self.dim), dtype=np.float32)
        self._refuse_text()
        if self._towers is not None:
            tokens = onnx.tokenize(self._processor, self._config, self._model_type, list(texts))
            return _normalise_array(self._towers.run_text(tokens))
        tokens = onnx.tokenize(self._processor, self._model.config, self._model_type, list(texts))
        inputs = {key: torch.from_numpy(value).to(self.device) for key, value in tokens.items()}
        with torch.inference_mode():
            output = self._model.get_text_features(**inputs)
        return _normalise(getattr(output, "pooler_output", output))

    def embed_text(self, text: str) -> Matrix:
        """One text's unit vector (a query), from a cache of the last ``text_cache_size`` texts
        asked for (the same text gives the same vector: the forward pass is deterministic). Texts
        asked for from several threads at once share a forward pass (:class:`MicroBatcher`)."""
        check_text(text)
        self._refuse_text()
        row = self._text_cache.get(text)
        if row is None:
            row = self._text_batcher.submit(text)
            row.setflags(write=False)  # shared by every caller of the cache: they get copies
            self._text_cache.put(text, row)
        return row.copy()

    def cached_text(self, text: str) -> Matrix | None:
        """A text's vector when this embedder's text cache holds it (counted as a hit), else None."""
        check_text(text)
        row = self._text_cache.peek(text)
        return None if row is None else row.copy()

    def remember_text(self, text: str, row: Matrix) -> None:
        """Put a text's vector, computed elsewhere by this model (a worker), in the text cache."""
        row = np.asarray(row, dtype=np.float32).copy()
        row.setflags(write=False)
        self._text_cache.put(text, row)

    def text_cache_info(self) -> CacheInfo:
        """Hits, misses and size of the text cache (as :func:`functools.lru_cache`'s ``cache_info``)."""
        return self._text_cache.info()

    def query_batches(self) -> tuple[int, int]:
        """Forward passes run for text and image queries, and the queries they embedded."""
        text, image = self._text_batcher, self._image_batcher
        return text.batches + image.batches, text.items + image.items

    def on_query_batch(self, observe: Callable[[str, int], None] | None) -> None:
        """Have ``observe(kind, size)`` told of each forward pass of queries (``"text"`` or
        ``"image"``, and how many queries it embedded), e.g. for metrics."""
        self._text_batcher.on_batch = None if observe is None else functools.partial(observe, "text")
        self._image_batcher.on_batch = None if observe is None else functools.partial(observe, "image")

    def close(self) -> None:
        """Stop the query batchers' threads (they also stop with the process)."""
        self._text_batcher.close()
        self._image_batcher.close()

    def _embed_text_batch(self, texts: list[str]) -> list[Matrix]:
        """One forward pass over the distinct texts of a batch of queries."""
        distinct = list(dict.fromkeys(texts))
        rows = self.embed_texts(distinct)
        by_text = {text: rows[i] for i, text in enumerate(distinct)}
        return [by_text[text] for text in texts]

    # -- scores ---------------------------------------------------------------------------

    def probability(self, cosine: float | npt.NDArray[np.floating[Any]]) -> Any:
        """SigLIP's calibrated text-image match probability, ``sigmoid(exp(logit_scale) * cos + logit_bias)``.

        None for CLIP, which was trained with a softmax over a batch and has no calibrated bias.
        """
        scale, bias = self.logit_params()
        if bias is None:
            return None
        logits = scale * np.asarray(cosine, dtype=np.float64) + bias
        result = 1.0 / (1.0 + np.exp(-logits))
        return float(result) if np.ndim(result) == 0 else result

    def logit_params(self) -> tuple[float, float | None]:
        """``(exp(logit_scale), logit_bias)`` of the checkpoint; bias None for CLIP. Read from the
        weights once: every text search asks (a few torch calls each, on a server's hot path)."""
        if self._logit_params is None:
            self.load()
            if self.image_only:
                return 1.0, None  # no text tower: no text-image probability
            scale = float(self._model.logit_scale.detach().float().exp().item())
            bias = getattr(self._model, "logit_bias", None)
            self._logit_params = scale, (None if bias is None else float(bias.detach().float().item()))
        return self._logit_params
