"""Training with the family's own loss, full and LoRA, saved as a plain checkpoint that
``from_pretrained`` (and so the embedder) loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imgsearch.embed.model import Embedder
from imgsearch.errors import InvalidInput
from imgsearch.finetune import scoring
from imgsearch.finetune.training import LORA_TARGETS, Pair, train
from imgsearch.samples import dataset


def _pairs(count: int, seed: int) -> list[Pair]:
    return [Pair(f"d{seed}-{i}", item.caption, item.png) for i, item in enumerate(dataset.draw(count, seed=seed, size=64))]


def test_a_full_fine_tune_from_random_weights_learns_what_a_held_out_drawing_shows(
    untrained_small: Path, tmp_path: Path
) -> None:
    held_out = _pairs(120, seed=2)
    before_model = Embedder(str(untrained_small))
    before = scoring.score(held_out, before_model.embed_texts, before_model.embed_images)
    trained = train(
        str(untrained_small), tmp_path / "full", _pairs(600, seed=1), method="full", epochs=4, lr=2e-3, batch_size=48
    )
    assert trained.steps == 4 * (600 // 48 + 1) and trained.pairs == 600
    after_model = Embedder(str(tmp_path / "full"))  # the path users take: from_pretrained of the folder
    after = scoring.score(held_out, after_model.embed_texts, after_model.embed_images)
    assert after.figures["text_to_image"]["recall@10"] > before.figures["text_to_image"]["recall@10"] + 0.15
    assert after.mean > before.mean
    before_model.close()
    after_model.close()


def test_lora_trains_adapters_on_the_encoder_layers_and_merges_them_into_a_plain_checkpoint(
    untrained_small: Path, tmp_path: Path
) -> None:
    import re

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    base = AutoModel.from_pretrained(untrained_small)
    wrapped = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS))
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in wrapped.named_parameters() if ".lora_A" in name}
    assert any("vision_model.encoder.layers.0.self_attn.q_proj" in n for n in adapted)
    assert any("text_model.encoder.layers.1.mlp.fc2" in n for n in adapted)
    assert not any("head" in n for n in adapted)  # the vision head's MultiheadAttention is left out
    assert all(re.fullmatch(LORA_TARGETS, n.removeprefix("base_model.model.")) for n in adapted)

    out = tmp_path / "lora"
    trained = train(str(untrained_small), out, _pairs(200, seed=3), method="lora", epochs=1, lr=1e-3, batch_size=50)
    assert trained.method == "lora" and trained.steps == 4
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "siglip"
    assert not list(out.glob("adapter_*"))  # merged: a plain checkpoint, no peft files
    merged = AutoModel.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    original = AutoModel.from_pretrained(untrained_small)
    moved = [
        name for (name, p), (_, q) in zip(merged.named_parameters(), original.named_parameters(), strict=True)
        if not np.allclose(p.detach().numpy(), q.detach().numpy())
    ]  # fmt: skip
    assert moved and all(re.search(r"encoder\.layers\.\d+\.(self_attn|mlp)\.", n) for n in moved)
    assert Embedder(str(out)).embed_texts(["a red mug"]).shape == (1, 64)


def test_bad_training_arguments_are_refused_with_their_names(untrained_small: Path, tmp_path: Path) -> None:
    pairs = _pairs(4, seed=4)
    with pytest.raises(InvalidInput, match="method must be one of full, lora, got 'adam'"):
        train(str(untrained_small), tmp_path / "x", pairs, method="adam")
    with pytest.raises(InvalidInput, match="epochs must be a whole number of at least 1, got 0"):
        train(str(untrained_small), tmp_path / "x", pairs, epochs=0)
    with pytest.raises(InvalidInput, match="at least 2 products"):
        train(str(untrained_small), tmp_path / "x", [Pair("one", "a red mug", pairs[0].image)] * 3)
    broken = [Pair("a", "a red mug", b"not an image"), Pair("b", "a blue cap", pairs[1].image)]
    with pytest.raises(InvalidInput, match="a training image of product a can't be read"):
        train(str(untrained_small), tmp_path / "x", broken, method="full", epochs=1)
    assert not (tmp_path / "x").exists()  # nothing half-written


@pytest.mark.parametrize(("kind", "method"), [("tiny_dinov2", "full"), ("tiny_dinov3", "lora")])
def test_an_image_only_backbone_learns_image_to_image_with_info_nce_and_gems_exponent(
    kind: str, method: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModel

    from imgsearch.embed import backbones

    path: Path = request.getfixturevalue(kind)
    pairs = _pairs(64, seed=6)
    # a second image of each of the first 20 products: a positive other than a crop
    pairs += [Pair(p.product, p.text, dataset.draw(1, seed=100 + i, size=64)[0].png) for i, p in enumerate(pairs[:20])]
    out = tmp_path / "tuned"
    trained = train(f"{path}#gem", out, pairs, method=method, epochs=2, lr=1e-2, batch_size=16)
    assert trained.steps == 8 and np.isfinite(trained.final_loss)
    kept = json.loads((out / backbones.SETTINGS_FILE).read_text())
    assert kept["gem_p"] >= 1.0 and kept["gem_p"] != backbones.DEFAULT_GEM_P  # learnt
    assert (out / "preprocessor_config.json").is_file()
    before, after = AutoModel.from_pretrained(path), AutoModel.from_pretrained(out)
    assert not any("lora" in n for n, _ in after.named_parameters())
    assert any(not torch.equal(p, q) for (_, p), (_, q) in zip(before.named_parameters(), after.named_parameters(), strict=True))
    row = Embedder(f"{out}#gem").embed_images([pairs[0].image])[0]
    assert row.shape == (32,) and abs(float(np.linalg.norm(row)) - 1) < 1e-5


def test_clip_learns_with_its_contrastive_loss(tiny_clip: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel

    pairs = _pairs(96, seed=9)
    trained = train(str(tiny_clip), tmp_path / "clip", pairs, method="full", epochs=3, lr=1e-3, batch_size=32)
    assert trained.steps == 9 and np.isfinite(trained.final_loss)
    model = AutoModel.from_pretrained(tmp_path / "clip")
    assert model.config.model_type == "clip" and not hasattr(model, "logit_bias")
    # the loss the model reports on a batch is CLIP's (InfoNCE both ways), and training lowered it
    from transformers import AutoProcessor

    from imgsearch.embed.decode import decode
    from imgsearch.embed.onnx import tokenize

    processor = AutoProcessor.from_pretrained(tmp_path / "clip")
    batch = pairs[:32]
    pixels = processor.image_processor(images=[decode(p.image) for p in batch], return_tensors="pt")["pixel_values"]
    tokens = {k: torch.from_numpy(v) for k, v in tokenize(processor, model.config, "clip", [p.text for p in batch]).items()}

    def loss(checkpoint: Path) -> float:
        m = AutoModel.from_pretrained(checkpoint).eval()
        with torch.no_grad():
            return float(m(pixel_values=pixels, return_loss=True, **tokens).loss)

    assert loss(tmp_path / "clip") < loss(tiny_clip)
