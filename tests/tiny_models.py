"""Tiny SigLIP and CLIP checkpoints with random weights, built by the tests (no model hub).

They are saved with ``save_pretrained`` and loaded back through the same ``from_pretrained``
path users take for real checkpoints.
"""

from __future__ import annotations

import io
from pathlib import Path

CORPUS = [
    "a photo of a red shoe",
    "a blue leather bag",
    "white cotton shirt with buttons",
    "a wooden chair",
    "a green ceramic mug",
    "black running shoes",
    "a desk lamp",
    "silver watch with a metal strap",
    "a straw hat",
    "product photo on a white background",
] * 20


def small_sentencepiece(folder: Path) -> Path:
    """A 48-piece SentencePiece model trained on :data:`CORPUS`, saved as ``spiece.model``."""
    import sentencepiece as spm

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=proto,
        vocab_size=48,
        model_type="unigram",
        character_coverage=1.0,
        unk_id=2,
        eos_id=1,
        pad_id=0,
        bos_id=-1,
        minloglevel=2,
    )
    spm_file = folder / "spiece.model"
    spm_file.write_bytes(proto.getvalue())
    return spm_file


def build_tiny_siglip(path: Path, *, dim: int = 32, image_size: int = 32, seed: int = 0) -> Path:
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    path.mkdir(parents=True, exist_ok=True)
    spm_file = small_sentencepiece(path)
    tokenizer = SiglipTokenizer(vocab_file=str(spm_file), model_max_length=16)
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)

    torch.manual_seed(seed)
    config = SiglipConfig(
        text_config={
            "vocab_size": 48,
            "hidden_size": dim,
            "intermediate_size": 2 * dim,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 1,
            "projection_size": dim,
        },
        vision_config={
            "hidden_size": dim,
            "intermediate_size": 2 * dim,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
    )
    SiglipModel(config).eval().save_pretrained(path)
    return path


def _byte_symbols() -> list[str]:
    """GPT-2's byte-to-unicode table (CLIP's byte-level BPE alphabet)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def build_tiny_clip(path: Path, *, dim: int = 24, image_size: int = 32, seed: int = 0) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab_list),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": len(vocab_list) - 2,
            "eos_token_id": len(vocab_list) - 1,
            "pad_token_id": len(vocab_list) - 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=dim,
    )
    CLIPModel(config).eval().save_pretrained(path)
    return path


def build_tiny_siglip2(path: Path, *, dim: int = 32, seed: int = 0) -> Path:
    """A tiny SigLIP 2 (NaFlex: variable resolution, patch masks) with a small Gemma tokenizer."""
    import torch
    from transformers import (
        GemmaTokenizer,
        Siglip2Config,
        Siglip2ImageProcessor,
        Siglip2Model,
        Siglip2Processor,
    )

    path.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    symbols = ["▁", *"abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab = {tok: i for i, tok in enumerate(specials + symbols)}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[])
    image_processor = Siglip2ImageProcessor(patch_size=8, max_num_patches=16)
    Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)

    torch.manual_seed(seed)
    config = Siglip2Config(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": dim,
            "intermediate_size": 2 * dim,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 2,
            "projection_size": dim,
        },
        vision_config={
            "hidden_size": dim,
            "intermediate_size": 2 * dim,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_patches": 16,
            "patch_size": 8,
        },
    )
    Siglip2Model(config).eval().save_pretrained(path)
    return path


def build_tiny_dino(path: Path, *, kind: str = "dinov2", dim: int = 32, image_size: int = 32, seed: int = 0) -> Path:
    """A tiny image-only backbone: DINOv2 (``kind="dinov2"``, with a processor config naming a
    shortest edge and a centre crop, as facebook/dinov2-* have) or DINOv3 (``"dinov3"``, with 2
    register tokens and a processor config of height and width, as facebook/dinov3-* have)."""
    import json

    import torch
    from transformers import Dinov2Config, Dinov2Model, DINOv3ViTConfig, DINOv3ViTModel

    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    common = {"hidden_size": dim, "intermediate_size": 2 * dim, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": image_size, "patch_size": 8}  # fmt: skip
    if kind == "dinov2":
        Dinov2Model(Dinov2Config(**common)).eval().save_pretrained(path)
        processor = {"size": {"shortest_edge": image_size + 8}, "do_center_crop": True,
                     "crop_size": {"height": image_size, "width": image_size},
                     "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}  # fmt: skip
    else:
        DINOv3ViTModel(DINOv3ViTConfig(**common, num_register_tokens=2)).eval().save_pretrained(path)
        processor = {"size": {"height": image_size, "width": image_size},
                     "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
                     "image_processor_type": "DINOv3ViTImageProcessorFast"}  # fmt: skip
    (path / "preprocessor_config.json").write_text(json.dumps(processor))
    return path


def build_tiny_yolos(path: Path, *, labels: tuple[str, ...] = ("mugs", "bags", "caps"), seed: int = 0) -> Path:
    """A tiny YOLOS object detector (random weights: its boxes are whatever they are, the same
    every time) with its PIL image processor (no torchvision), labelled with ``labels``."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessorPil

    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = YolosConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=[64, 64],
        patch_size=16, num_detection_tokens=10, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )  # fmt: skip
    YolosForObjectDetection(config).eval().save_pretrained(path)
    YolosImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(path)
    return path


def build_tiny_owlv2(path: Path, *, seed: int = 0) -> Path:
    """A tiny OWLv2 (open-vocabulary detection: boxes for names, or by objectness), 64 px input in
    a 4 x 4 grid of patches, with a CLIP tokenizer and OWLv2's PIL image processor. Its box head's
    last layer is zero, so each patch proposes the box OWLv2's prior gives it (random weights would
    propose boxes of no area); its scores are the random weights'."""
    import torch
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessorPil,
        Owlv2Processor,
    )

    path.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={tok: i for i, tok in enumerate(vocab_list)}, merges=[])
    Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size={"height": 64, "width": 64}), tokenizer=tokenizer).save_pretrained(path)
    torch.manual_seed(seed)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = Owlv2Config(
        text_config={**small, "vocab_size": len(vocab_list), "max_position_embeddings": 16,
                     "bos_token_id": len(vocab_list) - 2, "eos_token_id": len(vocab_list) - 1,
                     "pad_token_id": len(vocab_list) - 1},
        vision_config={**small, "image_size": 64, "patch_size": 16},
        projection_dim=32,
    )  # fmt: skip
    model = Owlv2ForObjectDetection(config).eval()
    with torch.no_grad():
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(path)
    return path
