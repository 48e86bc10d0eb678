"""The LAION "improved aesthetic predictor": an MLP scoring CLIP ViT-L/14 image embeddings (about 1..10).

Same shape and parameter names as the `MLP` class of christophschuhmann/improved-aesthetic-predictor, so its
released state dicts (e.g. `sac+logos+ava1-l14-linearMSE.pth`) load as they are:

    layers.0  Linear(768, 1024)   layers.1  Dropout(0.2)
    layers.2  Linear(1024, 128)   layers.3  Dropout(0.2)
    layers.4  Linear(128, 64)     layers.5  Dropout(0.1)
    layers.6  Linear(64, 16)      layers.7  Linear(16, 1)

There are no activations between the layers (they are commented out in the original), so the trained
model is affine in its input. It expects L2-normalised embeddings; `predict` normalises rows itself.
Weights load only from a local file (`.pth` / `.pt` via `torch.load(weights_only=True)`, or `.safetensors`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dataflow.models.clip import ModelNotFoundError, resolve_device

__all__ = ["AestheticMLP", "AestheticPredictor", "load_aesthetic_predictor", "CLIP_L14_DIM"]

CLIP_L14_DIM = 768  # width of CLIP ViT-L/14 image embeddings, the predictor's input


class AestheticMLP(nn.Module):
    """The improved-aesthetic-predictor MLP: input_size -> 1024 -> 128 -> 64 -> 16 -> 1."""

    def __init__(self, input_size: int = CLIP_L14_DIM):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, input_size) embeddings -> (N, 1) scores."""
        return self.layers(x)


class AestheticPredictor:
    """An `AestheticMLP` in eval mode on a device, with a numpy-in, numpy-out `predict`."""

    def __init__(self, model: AestheticMLP, device: str | torch.device | None = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.input_size = model.input_size

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, input_size) CLIP image embeddings -> (N,) float32 aesthetic scores.

        Rows are L2-normalised first (as the predictor was trained on), so normalised or raw CLIP
        embeddings give the same scores.
        """
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"expected embeddings of shape (N, {self.input_size}), got {x.shape}")
        if x.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        t = torch.from_numpy(x)
        t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
        with torch.inference_mode():
            scores = self.model(t.to(self.device)).squeeze(1)
        return scores.float().cpu().numpy().astype(np.float32, copy=False)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch pickle loaded with weights_only=True (no code runs)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:  # Lightning checkpoints nest it
        state = state["state_dict"]
    return state


def load_aesthetic_predictor(
    weights_path: str | os.PathLike, device: str | torch.device | None = None
) -> AestheticPredictor:
    """Load improved-aesthetic-predictor weights from a local file; the input width comes from the weights.

    Raises ModelNotFoundError if the file does not exist.
    """
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(
            f"aesthetic predictor weights not found at {path.resolve()}. Download the state dict once (e.g. "
            "sac+logos+ava1-l14-linearMSE.pth from christophschuhmann/improved-aesthetic-predictor) on a "
            "machine with network access and pass its local path; dataflow never downloads at run time."
        )
    state = _read_state_dict(path)
    if "layers.0.weight" not in state:
        raise ValueError(f"{path} is not an improved-aesthetic-predictor state dict (no 'layers.0.weight')")
    model = AestheticMLP(input_size=int(state["layers.0.weight"].shape[1]))
    model.load_state_dict(state, strict=True)
    return AestheticPredictor(model, device)
