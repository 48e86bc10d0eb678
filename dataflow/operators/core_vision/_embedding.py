"""Image embeddings for operators: the model loaded once per operator, images decoded in workers.

torch and transformers are imported only when a model is loaded, so the base install can import every
operator module.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from dataflow.core.parallel import ItemResult
from dataflow.core.parallel_stream import stream_items
from dataflow.media import DEFAULT_MAX_PIXELS, load_image

# Decoded images are shrunk in the worker so only small arrays cross the process boundary; the models
# resize to 224 anyway (bicubic on the shorter side, then a centre crop).
MODEL_SIDE = 256
# The models see the central square of an image (resize the short side, centre-crop); beyond this aspect
# ratio the long side is cut to it first, which leaves that square as it was and bounds every resize.
MAX_ASPECT = 4


def _centre_strip(img: Image.Image, length: int) -> Image.Image:
    """The centred part of ``img`` whose long side is ``length``."""
    w, h = img.size
    if w >= h:
        left = (w - length) // 2
        return img.crop((left, 0, left + length, h))
    top = (h - length) // 2
    return img.crop((0, top, w, top + length))


def model_pixels(source, base_dir: str, side: int, max_pixels: int | None) -> np.ndarray:
    """Decode upright RGB with its shorter side brought down to ``side`` (JPEG draft when possible)."""
    img = load_image(source, base_dir, draft_size=side, max_pixels=max_pixels)
    short = min(img.size)
    if max(img.size) > MAX_ASPECT * short:  # a 1 x 30000 strip would become 224 x 6.7M pixels in the model
        img = _centre_strip(img, MAX_ASPECT * short)
    if short > side:
        scale = side / short
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC
        )
    return np.asarray(img)


class EmbedderCache:
    """Loads the named model on first use and keeps it, so an operator can run again (DataFlow-MM deletes it)."""

    def __init__(self, model_name: str, device: str | None, batch_size: int):
        self.model_name, self.device, self.batch_size = model_name, device, batch_size
        self._embedder = None

    def get(self):
        if self._embedder is None:
            from dataflow.models.clip import load_image_embedder

            self._embedder = load_image_embedder(self.model_name, self.device)
            self._embedder.batch_size = self.batch_size
        return self._embedder

    def clip(self):
        """The CLIP model itself (for text embeddings); a non-CLIP model name is a clear error."""
        embedder = self.get()
        if not hasattr(embedder, "encode_texts"):
            raise ValueError(f"{self.model_name!r} embeds images only; image-text scores need a CLIP model")
        return embedder


def embed_images(
    embedder,
    sources: list,
    base_dir: str,
    *,
    batch_size: int,
    num_workers: int | None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    desc: str = "embed",
) -> list[ItemResult]:
    """One L2-normalised embedding per row (``ItemResult.value``), or the reason the image was unreadable."""
    out: list[ItemResult] = []
    window = max(batch_size * 4, 64)
    for _, results in stream_items(
        model_pixels,
        sources,
        window=window,
        num_workers=num_workers,
        desc=desc,
        base_dir=base_dir,
        side=max(MODEL_SIDE, getattr(embedder, "resize_to", 0)),  # never below a 336-px model's input
        max_pixels=max_pixels,
    ):
        images = [Image.fromarray(r.value) for r in results if r.error is None]
        vectors = iter(embedder.encode_images(images) if images else [])
        out.extend(ItemResult(next(vectors)) if r.error is None else r for r in results)
    return out


def row_vectors(
    models: EmbedderCache,
    base_dir: str,
    df,
    *,
    image_key: str,
    embedding_key: str | None,
    operator: str,
    num_workers: int | None,
) -> list[ItemResult]:
    """Per-row vectors: an existing embedding column when ``embedding_key`` is given, else the model's."""
    from dataflow.core.images import image_column
    from dataflow.operators.core_vision._vectors import vectors_from_column

    if embedding_key:
        return vectors_from_column(df, embedding_key, operator)[1]
    sources = image_column(df, image_key, operator)
    return embed_images(models.get(), sources, base_dir, batch_size=models.batch_size, num_workers=num_workers)


def stack(results: list[ItemResult], dim: int) -> np.ndarray:
    good = [r.value for r in results if r.error is None]
    return np.stack(good).astype(np.float32) if good else np.zeros((0, dim), dtype=np.float32)
