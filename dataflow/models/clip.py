"""CLIP image / text embeddings through transformers, loaded only from local files.

Models come from a local folder (anything `save_pretrained` wrote) or from the local Hugging Face cache
(`local_files_only=True`); nothing is downloaded at run time and no remote code is ever run. A model that
is not on disk raises `ModelNotFoundError`, naming what was looked for and how to provide it.

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


class ModelNotFoundError(FileNotFoundError):
    """A model (or its weights) is not available on local disk; the message says how to provide it."""


def hf_cache_dir() -> str:
    """The Hugging Face hub cache folder this process would read (honours HF_HOME / HF_HUB_CACHE)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
        return os.environ.get("HF_HUB_CACHE", os.path.join(home, "hub"))


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


def _l2_normalize(x: torch.Tensor) -> np.ndarray:
    """Rows scaled to unit norm (in float32), as a numpy array."""
    x = x.float()
    return (x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu().numpy().astype(np.float32, copy=False)


def _looks_like_path(name: str) -> bool:
    """A name meant as a folder (absolute, relative with ./ or ../, ~, or an OS separator other than /)."""
    return name.startswith((".", "/", "~")) or os.sep != "/" and os.sep in name or Path(name).is_absolute()


def _missing_model_message(model_name: str, reason: str) -> str:
    """How to provide a model that is not on disk: a folder, or a one-off download into the HF cache."""
    repo_id = "openai/clip-vit-base-patch32" if _looks_like_path(model_name) else model_name
    return (
        f"CLIP model {model_name!r} was not found on local disk ({reason}). dataflow never downloads models "
        "at run time. Either:\n"
        "  1. pass the path of a local folder holding the model (config.json, weights, tokenizer and "
        "preprocessor files, as written by save_pretrained), or\n"
        "  2. download it once, on a machine with network access, into the Hugging Face cache read here "
        f"({hf_cache_dir()}; set HF_HOME to move it):\n"
        f"       hf download {repo_id}    (older huggingface_hub: huggingface-cli download {repo_id})\n"
    )


def _resolve_model_dir(model_name: str | os.PathLike) -> Path:
    """A local folder for `model_name`: the folder itself, or its snapshot in the local HF cache."""
    name = os.fspath(model_name)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(_missing_model_message(name, f"folder {path} has no config.json"))
        return path
    if _looks_like_path(name) or path.exists():
        raise ModelNotFoundError(_missing_model_message(name, f"no folder at {path.resolve()}"))
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # not a valid repo id, or not in the local cache
        raise ModelNotFoundError(
            _missing_model_message(name, f"no folder at {path.resolve()} and not in the HF cache {hf_cache_dir()}")
        ) from exc


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
        self.mean = np.asarray(image_config.get("image_mean", _CLIP_MEAN), dtype=np.float32)
        self.std = np.asarray(image_config.get("image_std", _CLIP_STD), dtype=np.float32)
        self.max_length = int(model.config.text_config.max_position_embeddings)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> (N, 3, crop, crop) pixels: RGB, shorter side to `resize_to` (bicubic), centre crop,
        scaled to 0..1 and normalised with the model's mean / std (as CLIPImageProcessor does)."""
        import torch
        from PIL import Image

        out = np.empty((len(images), 3, self.crop_size, self.crop_size), dtype=np.float32)
        for n, image in enumerate(images):
            image = image.convert("RGB")
            w, h = image.size
            # Shorter side to resize_to, longer side scaled and truncated, as transformers does.
            if w <= h:
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
                pooled = self.model.vision_model(pixel_values=pixels).pooler_output
                parts.append(_l2_normalize(self.model.visual_projection(pooled)))
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
                out = self.model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                parts.append(_l2_normalize(self.model.text_projection(out.pooler_output)))
        return np.concatenate(parts)


def load_clip(
    model_name: str | os.PathLike, device: str | torch.device | None = None, batch_size: int = 32
) -> CLIPEmbedder:
    """Load a CLIP model from a local folder or the local HF cache (never the network, never remote code).

    model_name: a folder written by `save_pretrained`, or a Hub repo id already in the local cache
        (e.g. "openai/clip-vit-base-patch32").
    Raises ModelNotFoundError when it is not on disk.
    """
    from transformers import CLIPModel, CLIPTokenizer

    folder = _resolve_model_dir(model_name)
    dev = resolve_device(device)
    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except OSError as exc:  # e.g. weights or tokenizer files missing from the folder
        reason = f"incomplete model in {folder}: {exc}"
        raise ModelNotFoundError(_missing_model_message(os.fspath(model_name), reason)) from exc
    image_config_path = folder / "preprocessor_config.json"
    image_config = json.loads(image_config_path.read_text()) if image_config_path.is_file() else {}
    model = model.to(dev, dtype=_torch_dtype_for(dev)).eval()
    return CLIPEmbedder(model, tokenizer, image_config, dev, name=os.fspath(model_name), batch_size=batch_size)


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
