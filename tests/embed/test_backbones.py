"""Image-only backbones (DINOv2, DINOv3) with tiny configs: imgsearch's own preprocessing, the
three poolings named after the checkpoint, a text query refused naming the model, and a catalog
that searches images with one and falls back to lexical matching for a text."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgsearch import Catalog
from imgsearch.embed import backbones
from imgsearch.embed.model import Embedder
from imgsearch.embed.registry import canonical_name, model_dim
from imgsearch.errors import ConfigurationError, InvalidQuery
from imgsearch.samples import dataset


def _png(seed: int) -> bytes:
    return dataset.draw(1, seed=seed, size=48)[0].png


def _direct(path: Path, data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's own outputs for an image, preprocessed by imgsearch."""
    from transformers import AutoConfig, AutoModel

    model = AutoModel.from_pretrained(path).eval()
    processor = backbones.preprocessor(str(path), AutoConfig.from_pretrained(path))
    with torch.inference_mode():
        output = model(**processor(images=[Image.open(io.BytesIO(data))]))
    return output.last_hidden_state[0], output.pooler_output[0]


@pytest.mark.parametrize("kind", ["tiny_dinov2", "tiny_dinov3"])
def test_each_pooling_is_the_backbones_tokens_pooled_as_named(kind: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(kind)
    data = _png(1)
    tokens, pooled = _direct(path, data)
    registers = 2 if kind == "tiny_dinov3" else 0
    patches = tokens[1 + registers :]
    expected = {
        "cls": pooled,
        "mean": patches.mean(0),
        "gem": patches.clamp(min=1e-6).pow(3).mean(0).pow(1 / 3),
    }
    found = {}
    for pooling, vector in expected.items():
        embedder = Embedder(f"{path}#{pooling}")
        row = embedder.embed_images([data])[0]
        assert isinstance(row, np.ndarray) and row.shape == (32,)
        want = vector.numpy() / np.linalg.norm(vector.numpy())
        assert np.allclose(row, want, atol=1e-5), pooling
        found[pooling] = row
        embedder.close()
    assert not np.allclose(found["cls"], found["mean"]) and not np.allclose(found["mean"], found["gem"])
    plain = Embedder(str(path))  # no pooling named: the class token
    assert np.allclose(plain.embed_images([data])[0], found["cls"], atol=1e-6)
    plain.close()


def test_dinov2s_preprocessing_gives_the_numbers_of_its_own_processor(tiny_dinov2: Path) -> None:
    from transformers import BitImageProcessor

    config = json.loads((tiny_dinov2 / "preprocessor_config.json").read_text())
    theirs = BitImageProcessor(size=config["size"], crop_size=config["crop_size"], do_center_crop=True,
                               image_mean=config["image_mean"], image_std=config["image_std"])  # fmt: skip
    image = Image.open(io.BytesIO(_png(2))).convert("RGB")
    ours = backbones.preprocessor(str(tiny_dinov2), type("C", (), {"image_size": 32})())
    mine = ours(images=[image])["pixel_values"].numpy()
    assert mine.shape == (1, 3, 32, 32)
    assert np.abs(mine - np.asarray(theirs(images=[image], return_tensors="np")["pixel_values"])).max() < 0.05


def test_gems_exponent_is_read_beside_the_checkpoint(tiny_dinov2: Path, tmp_path: Path) -> None:
    copy = tmp_path / "dino"
    shutil.copytree(tiny_dinov2, copy)
    (copy / backbones.SETTINGS_FILE).write_text(json.dumps({"gem_p": 1.0}))
    data = _png(3)
    tokens, _ = _direct(copy, data)
    mean_of_clamped = tokens[1:].clamp(min=1e-6).mean(0).numpy()
    row = Embedder(f"{copy}#gem").embed_images([data])[0]
    assert np.allclose(row, mean_of_clamped / np.linalg.norm(mean_of_clamped), atol=1e-5)


def test_names_with_a_pooling_keep_it_and_a_bad_one_is_named(tiny_dinov2: Path, tiny_siglip: Path) -> None:
    assert model_dim(f"{tiny_dinov2}#gem") == 32
    assert canonical_name(f"{tiny_dinov2}#mean") == f"{tiny_dinov2.resolve()}#mean"
    assert model_dim("facebook/dinov3-vitb16-pretrain-lvd1689m#gem") == 768
    with pytest.raises(ConfigurationError, match=r"the pooling after '#' is one of cls, mean, gem, got 'max'"):
        model_dim(f"{tiny_dinov2}#max")
    with pytest.raises(ConfigurationError, match="a pooling after '#' is for image-only backbones"):
        Embedder(f"{tiny_siglip}#gem").load()
    with pytest.raises(ConfigurationError, match="ONNX runtimes support"):
        Embedder(str(tiny_dinov2), runtime="onnx").load()


@pytest.mark.parametrize("kind", ["tiny_dinov2", "tiny_dinov3"])
def test_a_text_query_on_an_image_only_model_is_refused_naming_it(kind: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(kind)
    embedder = Embedder(str(path))
    with pytest.raises(InvalidQuery, match=rf"the model '{path}' is an image-only backbone \(dinov.*\): it embeds no text"):
        embedder.embed_text("a red mug")
    with pytest.raises(InvalidQuery, match="embeds no text"):
        embedder.embed_texts(["a red mug"])
    assert embedder.probability(0.5) is None
    embedder.close()


def test_a_catalog_on_dinov3_searches_images_and_matches_text_lexically_saying_so(
    database_url: str, tiny_dinov3: Path
) -> None:
    with Catalog.open(database_url, model=f"{tiny_dinov3}#mean") as catalog:
        items = dataset.draw(12, seed=5, size=48)
        rows = [{"tenant": "acme", "product_id": f"p{i}", "image": item.png, "title": item.caption}
                for i, item in enumerate(items)]  # fmt: skip
        vectors = catalog.embedder.embed_images([r["image"] for r in rows])  # type: ignore[misc]
        ids = catalog.add_many([{**r, "embedding": np.asarray(v)} for r, v in zip(rows, vectors, strict=True)])
        assert catalog.registered_model().name == f"{tiny_dinov3.resolve()}#mean"
        found = catalog.search(image=items[3].png, tenant="acme", k=3)
        assert found[0].image_id == ids[3] and found.notice is None
        similar = catalog.search(similar_to=ids[3], tenant="acme", k=3)
        assert ids[3] not in [h.image_id for h in similar] and len(similar) == 3
        text = items[4].caption
        lexical = catalog.search(text=text, tenant="acme", k=3, parse=False)
        assert lexical.mode == "lexical" and "embeds no text" in (lexical.notice or "")
        assert lexical[0].product_id in {f"p{i}" for i, item in enumerate(items) if item.caption == text}
        with pytest.raises(InvalidQuery, match="image-only backbone"):
            catalog.search(text=text, tenant="acme", k=3, mode="semantic")
