"""ImageClipFilter: DataFlow-MM's CLIP filter, keeping pairs whose cosine clipped to [0, 1] reaches ``threshold``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.images import earlier_errors, image_column
from dataflow.core.operator import Threshold
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import RowFilter, Verdict
from dataflow.operators.core_vision._embedding import EmbedderCache
from dataflow.operators.core_vision.eval.image_clip_evaluator import scale_cosine
from dataflow.operators.core_vision.eval.image_text_similarity_evaluator import clip_scores


@OPERATOR_REGISTRY.register()
class ImageClipFilter(RowFilter):
    """Keeps image-caption pairs whose CLIP cosine, clipped to [0, 1], is at least ``threshold``.

    DataFlow-MM's scale and semantics: the score is the raw cosine with negatives raised to 0 (not the
    (cos + 1) / 2 of ``ImageCLIPEvaluator``), the test is ``score >= threshold``, and an empty or null
    caption scores 0, so ``threshold=0.0`` keeps every readable row and 0.25 (the default) keeps
    cosines of 0.25 and up. ``threshold`` is a `run` argument, as in DataFlow-MM. Dropped rows go to the
    rejected file with reason ``low_clip_score`` and the score in the detail; rows whose image cannot be
    read with its reason code (``missing``, ``truncated``, ...).

    Differences from DataFlow-MM:

    - an unreadable image is rejected with its reason (DataFlow-MM scores it 0.0, so `threshold=0.0`
      keeps it, for missing or undecodable files, and crashes on other errors); relative image paths
      resolve against the input file's folder;
    - a null caption scores 0 (DataFlow-MM raises on a NaN caption); a list of strings is scored by
      its mean cosine; a caption longer than the model's 77 tokens is truncated (DataFlow-MM's filter
      does not truncate, and raises on it);
    - images and captions run in batches of `batch_size` (DataFlow-MM: one pair per forward pass),
      images shrunk to 256 pixels on the short side before CLIP's own resize (fp32 on the cpu, scores
      within about 1e-3 of DataFlow-MM's; fp16 on cuda): only pairs that close to the threshold can go
      the other way;
    - images are turned upright by their EXIF orientation (DataFlow-MM scores them as stored);
    - the model loads on first `run`, not in `__init__`, and stays loaded; it loads from a local folder
      or the Hugging Face cache, downloaded into it on first use unless `HF_HUB_OFFLINE=1`;
    - options: `output_score_key` (the score, on the kept rows), `input_score_key` (a column of this
      score, e.g. from `ImageCLIPEvaluator(scale="clamp")`, used instead of running the model),
      `batch_size`, `num_workers`; `run` returns `[input_image_key, input_caption_key]` as DataFlow-MM.

    Parameters:
        model_name: a local CLIP folder or a Hugging Face repo id already in the local cache; nothing
            is downloaded
        device: `"cuda"`, `"cpu"` or None (cuda when available); cuda without a GPU warns and uses the cpu
        batch_size: images (and captions) per model forward pass
        num_workers: worker processes that decode images; None = one per CPU core (inputs under 48
            images run in-process)
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        input_caption_key: column holding the caption: one string or a list of strings
        threshold: lowest score kept (inclusive), on the clipped-cosine scale
        input_score_key: a column already holding this filter's score (the clipped cosine: write it with
            `ImageCLIPEvaluator(scale="clamp")`); when set no model is loaded. None: compute it
        output_score_key: when set, kept rows get their score in this column; None (the default) writes
            no column, as DataFlow-MM
    """

    description = "DataFlow-MM's CLIP filter: keeps pairs whose cosine clipped to [0, 1] is >= threshold."
    description_zh = "按 DataFlow-MM 的方式用本地 CLIP 过滤图文对：余弦相似度截断到 [0, 1] 后不低于 threshold 的保留。"
    loads_model = True
    model_params = {"model_name": "clip"}
    model_skipped_by = ("input_score_key",)
    thresholds = (Threshold("threshold", "output_score_key", "min"),)

    example = Example.on_example_data(
        "ImageClipFilter",
        """
        op = ImageClipFilter(model_name="openai/clip-vit-base-patch32")
        op.run(storage.step(), input_image_key="image", input_caption_key="caption", threshold=0.25)
        """,
        not_run="needs a local CLIP model (download it once with "
        "`huggingface-cli download openai/clip-vit-base-patch32` on a machine with network access)",
    )

    def __init__(
        self,
        model_name: str = "openai/clip-vit-base-patch32",
        device: str | None = None,
        batch_size: int = 32,
        num_workers: int | None = None,
    ):
        self.model_name = model_name
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.models = EmbedderCache(model_name, device, batch_size)

    def judge(
        self,
        df: pd.DataFrame,
        base_dir: str,
        input_image_key: str,
        input_caption_key: str,
        threshold: float,
        input_score_key: str | None,
        output_score_key: str | None,
    ) -> Verdict:
        if input_score_key:
            if input_score_key not in df.columns:
                raise KeyError(f"input_score_key={input_score_key!r} is not a column")
            scores = pd.to_numeric(df[input_score_key], errors="coerce").to_numpy(float)
            errors, details = earlier_errors(df)
        else:
            image_column(df, input_image_key, type(self).__name__)  # a missing column names this operator
            cosines, results = clip_scores(
                self.models.clip(),
                base_dir,
                df,
                input_image_key,
                input_caption_key,
                reduce="mean",
                batch_size=self.batch_size,
                num_workers=self.num_workers,
            )
            # DataFlow-MM: a caption that is empty scores 0.0, compared with the threshold like any score
            scores = np.array(
                [
                    np.nan if r.error is not None else 0.0 if c is None else scale_cosine(c, "clamp")
                    for c, r in zip(cosines, results)
                ],
                dtype=float,
            )
            errors, details = [r.error for r in results], [r.detail for r in results]
        if output_score_key:
            df[output_score_key] = scores
        verdict = Verdict(
            np.array([e if isinstance(e, str) and e else None for e in errors], dtype=object),
            np.array(details, dtype=object),
        )
        verdict.drop(np.isnan(scores), "missing_score", "no clip score")
        with np.errstate(invalid="ignore"):
            verdict.drop(
                scores < threshold,
                "low_clip_score",
                lambda at: [f"clip score {scores[i]:.4g} < {threshold}" for i in at],
            )
        return verdict

    def call_thresholds(self, keys: dict) -> list[dict]:
        # DataFlow-MM takes the threshold in run(), so the report finds it among the call's keys
        params = {**self.params, "threshold": keys.get("threshold")}
        return [t for t in (th.resolve(params, keys) for th in self.thresholds) if t is not None]

    def run(
        self,
        storage,
        input_image_key: str = "image",
        input_caption_key: str = "caption",
        threshold: float = 0.25,
        input_score_key: str | None = None,
        output_score_key: str | None = None,
    ) -> list[str]:
        self.filter(
            storage,
            input_image_key=input_image_key,
            input_caption_key=input_caption_key,
            threshold=threshold,
            input_score_key=input_score_key,
            output_score_key=output_score_key,
        )
        return [input_image_key, input_caption_key]  # what DataFlow-MM's run returns
