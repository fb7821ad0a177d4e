"""The embedder on tiny SigLIP and CLIP checkpoints loaded through from_pretrained."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgsearch.embed.decode import DecodeOptions
from imgsearch.embed.model import Embedder
from imgsearch.errors import (
    ConfigurationError,
    EmptyImage,
    ImageTooLarge,
    InvalidInput,
    ModelUnavailable,
    UnsupportedImage,
)
from imgsearch.ingest.images import Limits
from imgsearch.settings import Settings


def photo(seed: int, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    # smooth gradients plus noise: resampling differences show up, as in real photos
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([x * 255 / size[0], y * 255 / size[1], (x + y) * 127 / sum(size)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def siglip(tiny_siglip: Path) -> Embedder:
    return Embedder(str(tiny_siglip), device="cpu")


def reference_image_embeddings(path: Path, datas: list[bytes]) -> np.ndarray:
    from transformers import SiglipModel, SiglipProcessor

    processor = SiglipProcessor.from_pretrained(path)
    model = SiglipModel.from_pretrained(path).eval()
    images = [Image.open(io.BytesIO(d)).convert("RGB") for d in datas]
    with torch.no_grad():
        out = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
    out = out.numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_image_embeddings_equal_siglip_processor_and_model(siglip: Embedder, tiny_siglip: Path) -> None:
    datas = [photo(1, (32, 32)), photo(2, (640, 480), "JPEG"), photo(3, (123, 457)), photo(4, (17, 19))]
    ours = np.stack(siglip.embed_images(datas))  # type: ignore[arg-type]
    theirs = reference_image_embeddings(tiny_siglip, datas)
    assert ours.dtype == np.float32 and ours.shape == (4, 32)
    assert np.abs(ours - theirs).max() <= 1e-4
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_text_embeddings_equal_siglip_processor_and_model(siglip: Embedder, tiny_siglip: Path) -> None:
    from transformers import SiglipModel, SiglipProcessor

    texts = ["a red shoe", "Blue Leather BAG", "a wooden chair with a very long description " * 5]
    ours = siglip.embed_texts(texts)
    processor = SiglipProcessor.from_pretrained(tiny_siglip)
    model = SiglipModel.from_pretrained(tiny_siglip).eval()
    with torch.no_grad():
        inputs = processor(text=texts, padding="max_length", truncation=True, return_tensors="pt")
        theirs = model.get_text_features(**inputs).pooler_output.numpy()
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    assert np.abs(ours - theirs).max() <= 1e-4


def test_probability_is_siglips_calibrated_sigmoid(siglip: Embedder, tiny_siglip: Path) -> None:
    from transformers import SiglipModel, SiglipProcessor

    data = photo(5, (40, 40))
    cos = float(siglip.embed_text("a red shoe") @ siglip.embed_image(data))
    processor = SiglipProcessor.from_pretrained(tiny_siglip)
    model = SiglipModel.from_pretrained(tiny_siglip).eval()
    inputs = processor(
        text=["a red shoe"],
        images=[Image.open(io.BytesIO(data)).convert("RGB")],
        padding="max_length",
        return_tensors="pt",
    )
    with torch.no_grad():
        expected = torch.sigmoid(model(**inputs).logits_per_text)[0, 0].item()
    assert siglip.probability(cos) == pytest.approx(expected, abs=1e-4)
    assert 0.0 < siglip.probability(cos) < 1.0
    many = siglip.probability(np.array([-1.0, 0.0, 1.0]))
    assert np.all(np.diff(many) > 0)


def test_bad_images_fail_alone_and_the_rest_is_embedded(tiny_siglip: Path) -> None:
    embedder = Embedder(
        str(tiny_siglip),
        device="cpu",
        options=DecodeOptions(limits=Limits(max_bytes=200_000, max_pixels=4_000_000)),
    )
    good_a, good_b = photo(6, (50, 40)), photo(7, (80, 80), "JPEG")
    noisy = photo(8, (300, 300), "JPEG")
    bomb = io.BytesIO()
    Image.new("1", (3000, 3000)).save(bomb, "PNG")
    batch = [
        good_a,
        b"",
        noisy[: len(noisy) // 2],
        b"\x00\x01binary junk",
        bomb.getvalue(),
        photo(9, (2000, 20)),
        b"x" * 300_000,
        "not bytes",
        good_b,
    ]
    results = embedder.embed_images(batch)  # type: ignore[arg-type]
    kinds = [type(r).__name__ for r in results]
    assert kinds == [
        "ndarray",
        "EmptyImage",
        "UnsupportedImage",
        "UnsupportedImage",
        "ImageTooLarge",
        "UnsupportedImage",
        "ImageTooLarge",
        "InvalidImage",
        "ndarray",
    ]
    assert "aspect ratio" in str(results[5]) and "byte limit" in str(results[6])
    assert np.abs(results[0] - embedder.embed_image(good_a)).max() < 1e-5
    assert np.abs(results[8] - embedder.embed_image(good_b)).max() < 1e-5
    with pytest.raises(EmptyImage):
        embedder.embed_image(b"")
    assert isinstance(results[4], ImageTooLarge) and isinstance(results[2], UnsupportedImage)


def test_batches_overlap_and_match_single_calls(siglip: Embedder) -> None:
    datas = [photo(i, (30 + i, 30)) for i in range(7)]
    batches = list(siglip.iter_embed_images(iter(datas), batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = np.stack([v for b in batches for v in b])  # type: ignore[misc]
    single = np.stack([siglip.embed_image(d) for d in datas])
    assert np.abs(flat - single).max() < 1e-5


def test_pad_policy_changes_wide_images_only(tiny_siglip: Path, siglip: Embedder) -> None:
    padded = Embedder(str(tiny_siglip), device="cpu", options=DecodeOptions(aspect="pad"))
    square, wide = photo(10, (40, 40)), photo(11, (80, 40))
    assert np.abs(padded.embed_image(square) - siglip.embed_image(square)).max() < 1e-5
    assert np.abs(padded.embed_image(wide) - siglip.embed_image(wide)).max() > 1e-3


def test_clip_family(tiny_clip: Path) -> None:
    clip = Embedder(str(tiny_clip))
    assert clip.dim == 24
    image = clip.embed_image(photo(12, (50, 60)))
    text = clip.embed_texts(["a red shoe", "a hat"])
    assert image.shape == (24,) and text.shape == (2, 24)
    assert clip.probability(0.5) is None


def test_text_input_is_checked(siglip: Embedder) -> None:
    with pytest.raises(InvalidInput, match="non-empty string"):
        siglip.embed_texts(["ok", "  "])
    with pytest.raises(InvalidInput, match="list of strings"):
        siglip.embed_texts("a red shoe")
    with pytest.raises(InvalidInput, match="limit is 2000"):
        siglip.embed_texts(["x" * 2001])
    with pytest.raises(InvalidInput, match=r"text query .* is not valid Unicode"):
        siglip.embed_texts(["ok", "red \ud800 shoe"])
    assert siglip.embed_texts([]).shape == (0, 32)


def test_text_queries_are_embedded_once_then_cached(tiny_siglip: Path) -> None:
    embedder = Embedder(str(tiny_siglip), device="cpu", text_cache_size=2)
    forwards: list[int] = []
    embedder.load()
    embedder._model.text_model.register_forward_hook(lambda *_: forwards.append(1))

    first = embedder.embed_text("a red shoe")
    first[:] = 0  # the caller's copy: the cached vector is untouched
    again = embedder.embed_text("a red shoe")
    assert len(forwards) == 1
    assert np.array_equal(again, embedder.embed_texts(["a red shoe"])[0])  # what the model gives
    assert np.linalg.norm(again) == pytest.approx(1.0, abs=1e-5)
    assert again.flags.writeable

    embedder.embed_text("a blue hat")
    embedder.embed_text("a green bag")  # the cache holds 2: "a red shoe" is dropped
    embedder.embed_text("a red shoe")
    info = embedder.text_cache_info()
    assert (info.hits, info.misses, info.currsize, info.maxsize) == (1, 4, 2, 2)
    assert len(forwards) == 4 + 1  # a forward pass per miss, and embed_texts above


def test_text_cache_can_be_turned_off_and_checks_its_input(tiny_siglip: Path) -> None:
    embedder = Embedder(str(tiny_siglip), device="cpu", text_cache_size=0)
    assert np.array_equal(embedder.embed_text("a hat"), embedder.embed_text("a hat"))
    assert embedder.text_cache_info().currsize == 0
    for bad, message in [
        (["a list"], "non-empty string"),  # unhashable: refused before the cache sees it
        ("   ", "non-empty string"),
        (None, "non-empty string"),
        ("x" * 2001, "limit is 2000"),
        ("red \ud800 shoe", "not valid Unicode"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            embedder.embed_text(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="text cache size must not be negative, got -1"):
        Embedder(str(tiny_siglip), text_cache_size=-1)
    size = (
        Embedder.from_settings(Settings(model=str(tiny_siglip), text_cache_size=7)).text_cache_info().maxsize
    )
    assert size == 7


def test_loads_once_lazily_across_threads(tiny_siglip: Path) -> None:
    loads = []

    class Counting(Embedder):
        def _load(self) -> None:
            loads.append(threading.get_ident())
            super()._load()

    embedder = Counting(str(tiny_siglip))
    assert embedder.dim == 32 and not embedder.loaded  # dimension known without weights
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda: results.append(embedder.embed_text("a hat"))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len(results) == 4
    assert embedder.device == "cpu" and embedder.dtype == torch.float32


def test_settings_select_model_device_and_policy(tiny_siglip: Path) -> None:
    settings = Settings(
        model=str(tiny_siglip), device="cpu", aspect="pad", batch_size=4, max_image_pixels=1234
    )
    embedder = Embedder.from_settings(settings)
    assert (embedder.name, embedder.options.aspect, embedder.batch_size) == (str(tiny_siglip), "pad", 4)
    assert embedder.options.limits.max_pixels == 1234
    embedder.load()
    assert embedder.device == "cpu"


def test_missing_local_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="does not exist"):
        Embedder(str(tmp_path / "nope")).load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match=r"no config\.json"):
        Embedder(str(tmp_path / "empty")).load()


@pytest.mark.parametrize("offline_env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_uncached_hub_model_fails_fast_offline(tmp_path: Path, offline_env: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "IMGSEARCH_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), **offline_env)
    code = "from imgsearch.embed.model import Embedder; Embedder('google/siglip-base-patch16-224').load()"
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "imgsearch.errors.ModelUnavailable: cannot load model 'google/siglip-base-patch16-224'"
    )
    assert "IMGSEARCH_MODEL=/path/to/checkpoint" in last
    assert elapsed < 20, f"took {elapsed:.1f}s; the hub client's retries would take ~30s"


def test_siglip2_naflex_equals_its_processor_and_model(tiny_siglip2: Path) -> None:
    from transformers import Siglip2Model, Siglip2Processor

    embedder = Embedder(str(tiny_siglip2))
    datas = [photo(21, (40, 30)), photo(22, (100, 20)), photo(23, (64, 64))]
    ours = np.stack(embedder.embed_images(datas))  # type: ignore[arg-type]
    processor = Siglip2Processor.from_pretrained(tiny_siglip2)
    model = Siglip2Model.from_pretrained(tiny_siglip2).eval()
    images = [Image.open(io.BytesIO(d)).convert("RGB") for d in datas]
    with torch.no_grad():
        # Siglip2Processor's call defaults are the released checkpoints' (patch 16, 256 patches);
        # the tiny checkpoint's image processor config says patch 8, 16 patches: pass them through
        inputs = processor(images=images, return_tensors="pt", patch_size=8, max_num_patches=16)
        theirs = model.get_image_features(**inputs).pooler_output.numpy()
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    assert ours.shape == (3, 32)
    assert np.abs(ours - theirs).max() <= 1e-4
    text = embedder.embed_texts(["a red shoe"])
    assert text.shape == (1, 32) and 0.0 < embedder.probability(float(text[0] @ ours[0])) < 1.0
