"""Chinese-CLIP (Z-Image aligns captions with CN-CLIP) through the same loader and operators as CLIP.

A tiny random ``ChineseCLIPModel`` (a BERT text tower with a character vocabulary, a ViT image tower) and
its processor config are saved as ``save_pretrained`` writes them; the kind is read from config.json.
Embeddings are checked against the model's own ``get_image_features`` / ``get_text_features`` with the
processor's resizing (Chinese-CLIP resizes to exactly height x width, not by the shorter side).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import torch
from PIL import Image

from dataflow.models.clip import load_clip
from dataflow.operators.core_vision.eval.image_text_similarity_evaluator import ImageTextSimilarityEvaluator
from dataflow.utils.storage import FileStorage

SIZE = 32
CAPTIONS = ["一只猫在沙发上", "红色的汽车", "a dog on the grass", ""]


def make_tiny_chinese_clip(folder: Path, seed: int = 0) -> Path:
    from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted(set("".join(CAPTIONS)) - {" "}) + ["a", "dog", "on", "the", "grass"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(chars)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(folder / "vocab.txt"), tokenize_chinese_chars=True).save_pretrained(folder)
    torch.manual_seed(seed)
    text = {"vocab_size": len(vocab), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    text |= {"intermediate_size": 64, "max_position_embeddings": 64}
    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    vision |= {"image_size": SIZE, "patch_size": 8}
    config = ChineseCLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    ChineseCLIPModel(config).eval().save_pretrained(folder)
    processor = {
        "image_processor_type": "ChineseCLIPImageProcessor",
        "size": {"height": SIZE, "width": SIZE},
        "crop_size": {"height": SIZE, "width": SIZE},
        "do_resize": True,
        "do_center_crop": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


@pytest.fixture(scope="module")
def cn_clip_dir(tmp_path_factory) -> Path:
    return make_tiny_chinese_clip(tmp_path_factory.mktemp("cn-clip"))


def images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 64), (64, 30), (32, 32)]]


def reference_image_features(folder: Path, pictures: list[Image.Image]) -> np.ndarray:
    """What the model gives through the transformers processor's own pixel recipe (the PIL backend)."""
    from transformers import ChineseCLIPModel
    from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil

    config = json.loads((folder / "preprocessor_config.json").read_text())
    processor = ChineseCLIPImageProcessorPil(**{k: v for k, v in config.items() if k != "image_processor_type"})
    pixels = processor(images=pictures, return_tensors="pt")["pixel_values"]
    model = ChineseCLIPModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        out = model.get_image_features(pixel_values=pixels)
    out = getattr(out, "pooler_output", out)
    return (out / out.norm(dim=-1, keepdim=True)).numpy()


def reference_text_features(folder: Path, texts: list[str]) -> np.ndarray:
    from transformers import AutoTokenizer, ChineseCLIPModel

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = ChineseCLIPModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        out = model.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt"))
    out = getattr(out, "pooler_output", out)
    return (out / out.norm(dim=-1, keepdim=True)).numpy()


def test_the_kind_is_read_from_the_config_and_embeddings_match_the_model(cn_clip_dir):
    clip = load_clip(cn_clip_dir, device="cpu", batch_size=2)
    assert type(clip.model).__name__ == "ChineseCLIPModel" and clip.dim == 16
    assert clip.exact_size == (SIZE, SIZE)
    pictures = images()
    np.testing.assert_allclose(clip.encode_images(pictures), reference_image_features(cn_clip_dir, pictures), atol=1e-5)
    texts = CAPTIONS[:3]
    np.testing.assert_allclose(clip.encode_texts(texts), reference_text_features(cn_clip_dir, texts), atol=1e-5)


def test_the_image_text_operator_scores_with_chinese_clip(cn_clip_dir, tmp_path):
    pictures = images()
    rows = []
    for n, (picture, caption) in enumerate(zip(pictures, CAPTIONS, strict=False)):
        picture.save(tmp_path / f"{n}.png")
        rows.append({"image": f"{n}.png", "caption": caption})
    pd.DataFrame(rows).to_json(tmp_path / "rows.jsonl", orient="records", lines=True, force_ascii=False)
    storage = FileStorage(str(tmp_path / "rows.jsonl"), cache_path=str(tmp_path / "cache"), cache_type="jsonl")
    op = ImageTextSimilarityEvaluator(model_name=str(cn_clip_dir), device="cpu", num_workers=0)
    op.run(storage.step(), input_image_key="image", input_text_key="caption", output_score_key="cn_clip_score")
    out = storage.step().read("dataframe")
    # Images reach the model upright and decoded once; PNG round-trips exactly, so the cosine is the model's.
    expected = np.sum(
        reference_image_features(cn_clip_dir, pictures) * reference_text_features(cn_clip_dir, CAPTIONS[:3]), axis=1
    )
    np.testing.assert_allclose(out["cn_clip_score"].to_numpy(), expected, atol=1e-4)


def test_a_model_that_is_not_clip_is_refused_by_name(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1)).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match=r"is a 'bert' model, not CLIP.*'chinese_clip'"):
        load_clip(tmp_path, device="cpu")
