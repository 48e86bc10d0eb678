"""CLIPScoreFilter: keep the ``keep_ratio`` of image-text pairs with the highest CLIP score (DataFlow-MM)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.images import earlier_errors, image_column
from dataflow.core.operator import OperatorABC
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import Verdict
from dataflow.operators.core_vision._embedding import EmbedderCache
from dataflow.operators.core_vision.eval.image_text_similarity_evaluator import clip_scores


def joined_text(question, answer) -> str:
    """DataFlow-MM's text: the question and the answer joined as they are (no separator); a null part is empty."""
    return "".join(part for part in (question, answer) if isinstance(part, str))


def percentile_cut(scores: np.ndarray, keep_ratio: float, *, keep: str) -> tuple[np.ndarray, float | None]:
    """Rows kept by DataFlow-MM's percentile rule and the cut: ``keep="high"`` keeps scores at or above the
    ``(1 - keep_ratio)`` percentile, ``keep="low"`` those at or below the ``keep_ratio`` one (numpy's linear
    interpolation, ties at the cut all kept). NaN scores are never kept; None: no score at all."""
    valid = ~np.isnan(scores)
    if not valid.any():
        return np.zeros(len(scores), dtype=bool), None
    q = (1.0 - keep_ratio) * 100.0 if keep == "high" else keep_ratio * 100.0
    cut = float(np.percentile(scores[valid], q))
    with np.errstate(invalid="ignore"):
        return (scores >= cut) if keep == "high" else (scores <= cut), cut


def check_ratio(keep_ratio: float) -> float:
    if not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio is a share of the rows in [0, 1], got {keep_ratio}")
    return keep_ratio


@OPERATOR_REGISTRY.register()
class CLIPScoreFilter(OperatorABC):
    """Keeps the share ``keep_ratio`` of rows whose image and text agree best by CLIP: DataFlow-MM's filter.

    The text is the question and the answer joined as they are (``question + answer``); the score
    (``clipscore``) is the cosine between the CLIP embeddings of the image and the text, in [-1, 1]. The
    cut is the ``(1 - keep_ratio) * 100``-th percentile of the scores (numpy's linear interpolation); rows
    at or above it are kept, ties included. Dropped rows go to the rejected file with reason
    ``low_clipscore`` and the cut in the detail; rows without text with ``missing_text``; unreadable
    images with their reason code (``missing``, ``truncated``, ...). Every row, kept or rejected, carries
    its score.

    Differences from DataFlow-MM:

    - a row whose question or answer is null is scored on the other part (DataFlow-MM raises adding a
      NaN to a string); a text of only spaces counts as missing; `input_question_key=None` scores the
      answer column alone (a caption);
    - scores stay aligned with their rows: DataFlow-MM's batches give one score too many for each row it
      skips within a batch that scores other rows, and then fail to write the column;
    - no readable row at all writes zero rows (DataFlow-MM fails with an unbound variable);
    - images and texts run in batches of `batch_size`, images decoded in worker processes and shrunk to
      256 pixels on the short side before CLIP's own resize to 224 (as every CLIP operator here), fp32 on
      the cpu and fp16 on cuda: scores differ slightly from DataFlow-MM's full-size decode, so a pair
      right at the cut may go the other way; images are turned upright by their EXIF orientation;
    - unreadable images and missing texts are rejected with their reason (DataFlow-MM drops them without
      a record); the model loads on first `run` and stays loaded, from a local folder or the local
      Hugging Face cache only;
    - options: `input_score_key` (a column of these scores, used instead of running the model) and
      `num_workers`; `run` returns None, as DataFlow-MM.

    Parameters:
        model_name: a local CLIP folder or a Hugging Face repo id already in the local cache; nothing
            is downloaded
        batch_size: images (and texts) per model forward pass
        keep_ratio: share of the scored rows kept, from the top score down (0 to 1)
        device: `"cuda"`, `"cpu"` or None (cuda when available); cuda without a GPU warns and uses the cpu
        num_workers: worker processes that decode images; None = one per CPU core (inputs under 48
            images run in-process)
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        input_question_key: column holding the question, put before the answer; None = no question
        input_answer_key: column holding the answer (or caption)
        output_score_key: column the score is written to
        input_score_key: a column already holding the score (CLIP cosine of image and text); when set no
            model is loaded and no image read. None: compute it
    """

    description = "Keeps the top keep_ratio of image-text pairs by CLIP cosine (question + answer as the text)."
    description_zh = "按 CLIP 图文余弦相似度保留得分最高的 keep_ratio 比例样本（文本为问题与答案拼接）。"
    execution = "table"  # the cut is a percentile over all rows
    loads_model = True
    model_params = {"model_name": "clip"}
    model_skipped_by = ("input_score_key",)

    example = Example.on_example_data(
        "CLIPScoreFilter",
        """
        op = CLIPScoreFilter(model_name="openai/clip-vit-base-patch32", keep_ratio=0.8)
        op.run(storage.step(), input_image_key="image", input_question_key=None, input_answer_key="caption",
               output_score_key="clipscore")
        """,
        not_run="needs a local CLIP model (download it once with "
        "`huggingface-cli download openai/clip-vit-base-patch32` on a machine with network access)",
    )

    def __init__(
        self,
        model_name: str = "openai/clip-vit-base-patch32",
        batch_size: int = 32,
        keep_ratio: float = 0.8,
        device: str | None = None,
        num_workers: int | None = None,
    ):
        self.model_name = model_name
        self.batch_size = batch_size
        self.keep_ratio = check_ratio(keep_ratio)
        self.device = device
        self.num_workers = num_workers
        self.models = EmbedderCache(model_name, device, batch_size)

    def required_columns(self, keys: dict) -> dict[str, str]:
        need = super().required_columns(keys)
        if keys.get("input_score_key"):  # the score is given: neither image nor text is read
            need = {"input_score_key": keys["input_score_key"]}
        return need

    def scores(self, df: pd.DataFrame, base_dir: str, keys: dict) -> tuple[np.ndarray, Verdict]:
        """Per row, its score (NaN: none) and a verdict holding the rows that have none, with why."""
        n = len(df)
        if keys.get("input_score_key"):
            scores = pd.to_numeric(df[keys["input_score_key"]], errors="coerce").to_numpy(dtype=float)
            codes, details = earlier_errors(df)
            verdict = Verdict(np.array(codes, dtype=object), np.array(details, dtype=object))
            verdict.drop(np.isnan(scores), "missing_score", f"no {keys['input_score_key']} value")
            return scores, verdict
        name = type(self).__name__
        sources = image_column(df, keys["input_image_key"], name)
        question_key, answer_key = keys.get("input_question_key"), keys["input_answer_key"]
        for key in (question_key, answer_key):
            if key and key not in df.columns:
                raise KeyError(f"{name}: {key!r} is not a column (columns: {', '.join(map(str, df.columns))})")
        questions = df[question_key].tolist() if question_key else [None] * n
        texts = [joined_text(q, a) for q, a in zip(questions, df[answer_key].tolist())]
        pairs = pd.DataFrame({"image": sources, "text": texts})
        values, results = clip_scores(
            self.models.clip(),
            base_dir,
            pairs,
            "image",
            "text",
            reduce="mean",
            batch_size=self.batch_size,
            num_workers=self.num_workers,
        )
        scores = np.array([np.nan if v is None else v for v in values], dtype=float)
        verdict = Verdict(
            np.array([r.error for r in results], dtype=object), np.array([r.detail for r in results], dtype=object)
        )
        verdict.drop(np.isnan(scores), "missing_text", "no question or answer text")
        return scores, verdict

    def run(
        self,
        storage,
        input_image_key: str = "image",
        input_question_key: str | None = "question",
        input_answer_key: str = "answer",
        output_score_key: str = "clipscore",
        input_score_key: str | None = None,
    ) -> None:
        df = storage.read("dataframe")
        keys = {
            "input_image_key": input_image_key,
            "input_question_key": input_question_key,
            "input_answer_key": input_answer_key,
            "input_score_key": input_score_key,
        }
        scores, verdict = self.scores(df, storage.image_base, keys)
        kept, cut = percentile_cut(scores, self.keep_ratio, keep="high")
        verdict.drop(
            ~kept,
            "low_clipscore",
            lambda at: [
                f"{output_score_key} {s:.4g} < {cut:.4g}, the {(1 - self.keep_ratio) * 100:g}th percentile "
                f"(keep_ratio {self.keep_ratio})"
                for s in scores[at]
            ],
        )
        df[output_score_key] = scores
        out, rejected = verdict.split(df)
        storage.write(out, rejected=rejected)
