"""Improved-aesthetic-predictor MLP: layout of the original, save / load round trip, predict contract."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dataflow.models.aesthetic import AestheticMLP, AestheticPredictor, load_aesthetic_predictor
from dataflow.models.clip import ModelNotFoundError


def _embeddings(n: int, dim: int = 768, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_layer_names_match_the_original_mlp():
    keys = set(AestheticMLP().state_dict())
    expected = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    assert keys == expected
    shapes = {k: tuple(v.shape) for k, v in AestheticMLP().state_dict().items() if k.endswith("weight")}
    assert shapes == {
        "layers.0.weight": (1024, 768),
        "layers.2.weight": (128, 1024),
        "layers.4.weight": (64, 128),
        "layers.6.weight": (16, 64),
        "layers.7.weight": (1, 16),
    }


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_saved_and_loaded_predicts_like_in_memory(tmp_path, suffix, aesthetic_weights_factory):
    path = aesthetic_weights_factory(tmp_path / f"weights{suffix}", seed=1)
    torch.manual_seed(1)
    in_memory = AestheticPredictor(AestheticMLP(), device="cpu")
    loaded = load_aesthetic_predictor(path, device="cpu")
    x = _embeddings(9)
    expected = in_memory.predict(x)
    got = loaded.predict(x)
    assert got.shape == (9,) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    # And it is the plain MLP output on the embeddings.
    with torch.inference_mode():
        direct = in_memory.model(torch.from_numpy(x)).squeeze(1).numpy()
    np.testing.assert_allclose(got, direct, rtol=1e-6, atol=1e-6)


def test_predict_normalises_rows_and_is_deterministic(tiny_aesthetic_weights):
    model = load_aesthetic_predictor(tiny_aesthetic_weights, device="cpu")
    x = _embeddings(4, seed=2)
    scores = model.predict(x)
    np.testing.assert_allclose(model.predict(3.0 * x), scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.predict(x), scores)
    assert model.predict(np.empty((0, 768), np.float32)).shape == (0,)


def test_wrong_width_is_rejected(tiny_aesthetic_weights):
    model = load_aesthetic_predictor(tiny_aesthetic_weights, device="cpu")
    with pytest.raises(ValueError, match="768"):
        model.predict(np.ones((2, 512), np.float32))


def test_input_width_comes_from_the_weights(tmp_path, aesthetic_weights_factory):
    path = aesthetic_weights_factory(tmp_path / "small.pth", input_size=16)
    model = load_aesthetic_predictor(path, device="cpu")
    assert model.input_size == 16 and model.predict(_embeddings(3, dim=16)).shape == (3,)


def test_missing_or_foreign_weights(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_aesthetic_predictor(tmp_path / "absent.pth")
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(1, 2)}, other)
    with pytest.raises(ValueError, match="layers.0.weight"):
        load_aesthetic_predictor(other)
