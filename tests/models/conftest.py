"""Tiny models built offline, saved to disk and loaded back, for model and operator tests.

`make_tiny_clip(folder)` writes a randomly initialised CLIP (hidden 32, 2 layers, 32 x 32 images, 8 x 8
patches, 16-d embeddings) with a byte-level tokenizer and a preprocessor config, exactly the files
`save_pretrained` would produce for a real model. Nothing is downloaded.
Fixtures: `tiny_clip_dir` (session-wide folder, embeddings of width `TINY_CLIP_DIM` = 16),
`tiny_aesthetic_weights` (a random predictor's .pth) and `aesthetic_weights_factory`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="model tests need torch (pip install 'dataflow-curate[clip]')")
transformers = pytest.importorskip(
    "transformers", reason="CLIP tests need transformers (pip install 'dataflow-curate[clip]')"
)

TINY_CLIP_DIM = 16
TINY_CLIP_IMAGE_SIZE = 32
TINY_CLIP_MAX_TOKENS = 16


def _byte_level_alphabet() -> list[str]:
    """GPT-2 / CLIP byte-to-unicode table: one printable character per byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def make_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random CLIP model, tokenizer and preprocessor config into `folder`; return it."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    # Vocabulary: every byte as a word piece and as a word end, then start / end of text (highest ids,
    # like real CLIP, so the end token is also the largest id in each sequence).
    alphabet = _byte_level_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    with tempfile.TemporaryDirectory() as raw:
        # No merges: words split into single bytes, which is all a tokenizer test needs.
        (Path(raw) / "vocab.json").write_text(json.dumps(vocab))
        (Path(raw) / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer.from_pretrained(raw, model_max_length=TINY_CLIP_MAX_TOKENS)
    tokenizer.save_pretrained(folder)

    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": TINY_CLIP_MAX_TOKENS,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": TINY_CLIP_IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=TINY_CLIP_DIM,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "size": {"shortest_edge": TINY_CLIP_IMAGE_SIZE},
                "crop_size": {"height": TINY_CLIP_IMAGE_SIZE, "width": TINY_CLIP_IMAGE_SIZE},
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
            }
        )
    )
    return folder


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a tiny random CLIP (16-d embeddings), loadable with `load_clip(path)`."""
    return make_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def make_tiny_aesthetic_weights(path: Path, input_size: int = 768, seed: int = 0) -> Path:
    """Save a randomly initialised improved-aesthetic-predictor state dict to `path` (.pth or .safetensors)."""
    from dataflow.models.aesthetic import AestheticMLP

    torch.manual_seed(seed)
    state = AestheticMLP(input_size).state_dict()
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def aesthetic_weights_factory():
    """`make_tiny_aesthetic_weights(path, input_size=768, seed=0) -> path`, for tests that need variants."""
    return make_tiny_aesthetic_weights


@pytest.fixture(scope="session")
def tiny_aesthetic_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 768 -> 1 aesthetic predictor saved as a .pth state dict."""
    return make_tiny_aesthetic_weights(tmp_path_factory.mktemp("aesthetic") / "aesthetic.pth")
