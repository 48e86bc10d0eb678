"""CLIP and Chinese-CLIP image / text embeddings through transformers.

Models come from a local folder (anything `save_pretrained` wrote) or the Hugging Face cache, downloaded
into it on first use unless `HF_HUB_OFFLINE=1` (`dataflow.models.hub`); no remote code is ever run. A
model that cannot be had raises `ModelNotFoundError`, naming what was looked for and how to provide it.
The model kind (CLIP or Chinese-CLIP) is read from the folder's config.json.

Also here, so operators stay thin:
- `resolve_device(device)`: None -> cuda when available, else cpu; a requested but absent cuda warns and
  falls back to cpu.
- `load_image_embedder(model_name, device)`: "efficientnet-lite0" -> the EfficientNet-Lite0 ImageNet
  features, anything else -> CLIP; both give `encode_images(images) -> (N, dim)` L2-normalised float32.

torch and transformers are imported lazily, so `ModelNotFoundError` and `resolve_device` can be imported
without the [clip] extra installed.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from dataflow.models.hub import ModelNotFoundError, hf_cache_dir, incomplete_model, resolve_model_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

__all__ = [
    "ModelNotFoundError",
    "ImageEmbedder",
    "CLIPEmbedder",
    "EfficientNetLite0Embedder",
    "load_clip",
    "load_image_embedder",
    "resolve_device",
    "hf_cache_dir",
    "EFFICIENTNET_LITE0",
]

EFFICIENTNET_LITE0 = "efficientnet-lite0"
# OpenAI CLIP pixel statistics, used when a model folder has no preprocessor_config.json.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None -> cuda if available else cpu; "cuda" (or "cuda:N") without a GPU -> cpu with a warning."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            f"device {str(dev)!r} was requested but CUDA is not available; using cpu", RuntimeWarning, stacklevel=2
        )
        return torch.device("cpu")
    return dev


@runtime_checkable
class ImageEmbedder(Protocol):
    """What operators need from an image model: L2-normalised float32 embeddings of a known width."""

    name: str
    dim: int

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:  # pragma: no cover - protocol
        ...


def _projected(out: Any) -> torch.Tensor:
    """The projected embeddings from ``get_*_features``: a tensor, or (transformers 5) its ``pooler_output``."""
    return out if not hasattr(out, "pooler_output") else out.pooler_output


def _l2_normalize(x: torch.Tensor) -> np.ndarray:
    """Rows scaled to unit norm (in float32), as a numpy array."""
    x = x.float()
    return (x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu().numpy().astype(np.float32, copy=False)


def _resolve_model_dir(model_name: str | os.PathLike, local_files_only: bool | None = None) -> Path:
    """A local folder for the CLIP model `model_name` (a folder, the HF cache, or a first-use download)."""
    return resolve_model_dir(
        model_name, "CLIP model", "openai/clip-vit-base-patch32", local_files_only=local_files_only
    )


class CLIPEmbedder:
    """A CLIP model on one device: `encode_images` / `encode_texts` give L2-normalised float32 rows.

    fp16 on cuda, fp32 elsewhere; inference only (`torch.inference_mode`), in batches of `batch_size`.
    """

    def __init__(
        self, model: Any, tokenizer: Any, image_config: dict, device: torch.device, name: str, batch_size: int = 32
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.name = name
        self.batch_size = batch_size
        self.dim = int(model.config.projection_dim)
        self.dtype = next(model.parameters()).dtype
        vision = model.config.vision_config
        crop = image_config.get("crop_size", vision.image_size)
        size = image_config.get("size", crop)
        # preprocessor_config.json spells sizes as ints or dicts ({"shortest_edge": 224}, {"height": .., "width": ..})
        self.crop_size = int(crop.get("height", vision.image_size)) if isinstance(crop, dict) else int(crop)
        self.resize_to = (
            int(size.get("shortest_edge", size.get("height", self.crop_size))) if isinstance(size, dict) else int(size)
        )
        # {"height": h, "width": w} without "shortest_edge" (Chinese-CLIP's processor) resizes to exactly h x w.
        exact = isinstance(size, dict) and "shortest_edge" not in size and {"height", "width"} <= size.keys()
        self.exact_size = (int(size["width"]), int(size["height"])) if exact else None
        self.mean = np.asarray(image_config.get("image_mean", _CLIP_MEAN), dtype=np.float32)
        self.std = np.asarray(image_config.get("image_std", _CLIP_STD), dtype=np.float32)
        self.max_length = int(model.config.text_config.max_position_embeddings)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> (N, 3, crop, crop) pixels: RGB, shorter side to `resize_to` (or to exactly
        `exact_size`) (bicubic), centre crop,
        scaled to 0..1 and normalised with the model's mean / std (as CLIPImageProcessor does)."""
        import torch
        from PIL import Image

        out = np.empty((len(images), 3, self.crop_size, self.crop_size), dtype=np.float32)
        for n, image in enumerate(images):
            image = image.convert("RGB")
            w, h = image.size
            # Shorter side to resize_to, longer side scaled and truncated, as transformers does.
            if self.exact_size:
                nw, nh = self.exact_size
            elif w <= h:
                nw, nh = self.resize_to, int(self.resize_to * h / w)
            else:
                nw, nh = int(self.resize_to * w / h), self.resize_to
            nw, nh = max(nw, self.crop_size), max(nh, self.crop_size)
            image = image.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - self.crop_size) // 2, (nh - self.crop_size) // 2
            image = image.crop((left, top, left + self.crop_size, top + self.crop_size))
            pixels = np.asarray(image, dtype=np.float32) / 255.0
            out[n] = ((pixels - self.mean) / self.std).transpose(2, 0, 1)
        return torch.from_numpy(out)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> (N, dim) float32, rows of unit L2 norm."""
        import torch

        parts = [np.empty((0, self.dim), dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                pixels = self.preprocess(images[start : start + self.batch_size]).to(self.device, self.dtype)
                parts.append(_l2_normalize(_projected(self.model.get_image_features(pixel_values=pixels))))
        return np.concatenate(parts)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Strings -> (N, dim) float32, rows of unit L2 norm (texts longer than the model allows are truncated)."""
        import torch

        parts = [np.empty((0, self.dim), dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                parts.append(_l2_normalize(_projected(self.model.get_text_features(**batch))))
        return np.concatenate(parts)


def load_clip(
    model_name: str | os.PathLike, device: str | torch.device | None = None, batch_size: int = 32
) -> CLIPEmbedder:
    """Load a CLIP or Chinese-CLIP model from a folder or the HF cache (see `dataflow.models.hub`; never remote
    code).

    model_name: a folder written by `save_pretrained`, or a Hub repo id (e.g. "openai/clip-vit-base-patch32",
        "OFA-Sys/chinese-clip-vit-base-patch16").
    Raises ModelNotFoundError when it cannot be had, ValueError when the folder holds another kind of model.
    """
    folder = _resolve_model_dir(model_name)
    model_class, tokenizer_class = _clip_classes(folder, model_name)
    dev = resolve_device(device)
    try:
        model = model_class.from_pretrained(folder, local_files_only=True)
        tokenizer = tokenizer_class.from_pretrained(folder, local_files_only=True)
    except OSError as exc:  # e.g. weights or tokenizer files missing from the folder
        raise incomplete_model(model_name, folder, exc, "CLIP model", "openai/clip-vit-base-patch32") from exc
    image_config_path = folder / "preprocessor_config.json"
    image_config = json.loads(image_config_path.read_text()) if image_config_path.is_file() else {}
    model = model.to(dev, dtype=_torch_dtype_for(dev)).eval()
    return CLIPEmbedder(model, tokenizer, image_config, dev, name=os.fspath(model_name), batch_size=batch_size)


def _clip_classes(folder: Path, model_name) -> tuple[Any, Any]:
    """The model and tokenizer classes of the CLIP kind in ``folder``'s config.json (CLIP or Chinese-CLIP)."""
    import transformers

    try:
        kind = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"CLIP model {os.fspath(model_name)!r}: unreadable {folder / 'config.json'}: {exc}"
        ) from exc
    if kind == "clip":
        return transformers.CLIPModel, transformers.CLIPTokenizer
    if kind == "chinese_clip":  # a BERT text tower: its tokenizer is a BertTokenizer
        return transformers.ChineseCLIPModel, transformers.AutoTokenizer
    raise ValueError(
        f"{os.fspath(model_name)!r} is a {kind!r} model, not CLIP: image-text operators take a CLIP "
        "(model_type 'clip') or Chinese-CLIP ('chinese_clip') model"
    )


def _torch_dtype_for(device: torch.device) -> torch.dtype:
    """fp16 on cuda (half the memory, tensor cores), fp32 elsewhere (fp16 on cpu is slow and lossy)."""
    import torch

    return torch.float16 if device.type == "cuda" else torch.float32


class EfficientNetLite0Embedder:
    """EfficientNet-Lite0 ImageNet features (1280-d, globally pooled) as L2-normalised image embeddings."""

    name = EFFICIENTNET_LITE0

    def __init__(
        self,
        device: str | torch.device | None = None,
        weights_path: str | os.PathLike | None = None,
        batch_size: int = 64,
    ):
        from dataflow.models.efficientnet_lite import FEATURE_DIM, load_efficientnet_lite0

        self.device = resolve_device(device)
        self.model = load_efficientnet_lite0(weights_path, device=self.device)
        self.dim = FEATURE_DIM
        self.batch_size = batch_size

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> (N, 1280) float32, rows of unit L2 norm."""
        import torch

        from dataflow.models.efficientnet_lite import preprocess

        parts = [np.empty((0, self.dim), dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                pixels = preprocess(images[start : start + self.batch_size]).to(self.device)
                parts.append(_l2_normalize(self.model.features(pixels)))
        return np.concatenate(parts)


def load_image_embedder(model_name: str | os.PathLike, device: str | torch.device | None = None) -> ImageEmbedder:
    """ "efficientnet-lite0" -> `EfficientNetLite0Embedder`; anything else -> `load_clip(model_name)`.

    Both raise ModelNotFoundError / FileNotFoundError with instructions when weights are not on disk.
    """
    if os.fspath(model_name).lower() == EFFICIENTNET_LITE0:
        return EfficientNetLite0Embedder(device)
    return load_clip(model_name, device)
