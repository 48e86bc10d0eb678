"""ImageClassifierEvaluator: any Hugging Face image classifier (AIGC, watermark, NSFW, quality) as a score column."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.evaluator import ImageEvaluator
from dataflow.core.images import image_column
from dataflow.core.parallel import ItemResult
from dataflow.core.parallel_stream import stream_items
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import DEFAULT_MAX_PIXELS
from dataflow.models.image_classifier import (
    FUNCTIONS,
    input_side,
    label_problem,
    load_image_classifier,
    preprocess_image,
)

SCORE, LABEL = "classifier_score", "classifier_label"


@OPERATOR_REGISTRY.register()
class ImageClassifierEvaluator(ImageEvaluator):
    """Adds ``classifier_score``: the probability an image classifier from the Hugging Face Hub gives
    one of its labels, e.g. "artificial" for an AI-generated-image detector or "watermark" for a
    watermark detector; optionally the top label too.

    Any `AutoModelForImageClassification` checkpoint with its `AutoImageProcessor` works: a local folder
    (what `save_pretrained` wrote) or a Hub repo id (the local cache, or downloaded on first use unless
    `HF_HUB_OFFLINE=1`); the model's own code is never run. The label is a name from the model's
    `id2label` (any case) or an index; a wrong one is an error listing the model's labels, found by
    `compile()` (or at the start of `run`), never per row. Probabilities are a softmax over the labels,
    or a sigmoid per label when the config's `problem_type` is `multi_label_classification` or the model
    has one output, and the raw output for `regression`: the rule of the transformers
    `image-classification` pipeline (`function_to_apply` overrides it). Images are decoded by our loader
    (upright by their EXIF orientation, the decode guards) in worker processes, which also run the model's
    processor, and the model sees batches of `batch_size`. Rows with an unreadable image get a null score
    and an ``image_error`` reason.

    An image more than 10 times longer than wide (or high) is cut, around its centre, to 10:1 first when
    the processor keeps the aspect ratio (resizes the short side): otherwise a 20000 x 10 strip would
    become a 224 x 448000 input.

    Parameters:
        model_name: a local folder holding an image classifier (config.json, weights and
            preprocessor_config.json, as `save_pretrained` writes them) or a Hugging Face repo id
        label: the label scored: a name from the model's `id2label` (case-insensitive) or an index; None
            only for a model with a single output
        function_to_apply: how logits become scores: `"default"` (the pipeline's rule above),
            `"softmax"`, `"sigmoid"` or `"none"` (raw logits)
        batch_size: images per model forward pass
        device: `"cuda"`, `"cpu"` or None (cuda when available, in fp16); cuda without a GPU warns and
            uses the cpu
        num_workers: worker processes that decode and preprocess images; None = one per CPU core (inputs
            under 48 images run in-process)
        draft: decode JPEGs at 1/2, 1/4 or 1/8 scale while staying at least twice the processor's input
            size: several times faster on large photos, but the pixels differ slightly from a full
            decode; leave it off for detectors of fine traces (AI-generated images, watermarks)
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        output_score_key: column the chosen label's score is written to
        output_label_key: column the top label's name is written to; None = not written
    """

    description = "Any Hugging Face image classifier (AIGC / watermark / NSFW / quality) -> one label's probability."
    description_zh = "用任意 Hugging Face 图像分类模型（AIGC 检测、水印、NSFW、质量）为图像打分：写出所选标签的概率。"
    loads_model = True
    model_params = {"model_name": "image_classifier"}
    columns = (SCORE, LABEL)
    object_columns = frozenset({LABEL})
    renames = {SCORE: "output_score_key", LABEL: "output_label_key"}

    example = Example(
        """
        import torch
        from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

        from dataflow.operators.core_vision import ImageClassifierEvaluator
        from dataflow.utils.storage import FileStorage

        # Stand-in model: a tiny random ViT with an AIGC detector's labels, so the example runs offline.
        labels = {0: "artificial", 1: "human"}
        config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, id2label=labels, label2id={v: k for k, v in labels.items()})
        torch.manual_seed(0)
        ViTForImageClassification(config).save_pretrained("tiny_detector")
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained("tiny_detector")

        storage = FileStorage("example_data/images.jsonl", cache_path="./cache_docs",
                              file_name_prefix="docs", cache_type="jsonl")
        op = ImageClassifierEvaluator(model_name="tiny_detector", label="artificial", device="cpu")
        op.run(storage.step(), input_image_key="image", output_score_key="aigc_score", output_label_key="aigc_label")
        """,
        show=["image", "aigc_score", "aigc_label", "image_error"],
        digits=3,
        rows=["images/scene_00.jpg", "images/scene_01.jpg", "images/missing.jpg"],
        note="A real detector is a Hub download, so this example builds a tiny random ViT with the same "
        "labels: the scores mean nothing, the call and the output format are the real ones.",
        real_use="""
        from dataflow.operators.core_vision import ImageClassifierEvaluator
        # any image-classification checkpoint; its labels are in config.json's id2label
        op = ImageClassifierEvaluator(model_name="Organika/sdxl-detector", label="artificial", device="cuda")
        op.run(storage.step(), input_image_key="image", output_score_key="aigc_score")
        """,
    )

    def __init__(
        self,
        model_name: str | None = None,
        label: str | int | None = None,
        function_to_apply: str = "default",
        batch_size: int = 32,
        device: str | None = None,
        num_workers: int | None = None,
        draft: bool = False,
    ):
        if function_to_apply not in FUNCTIONS:
            raise ValueError(f"function_to_apply must be one of {FUNCTIONS}, got {function_to_apply!r}")
        if isinstance(label, bool) or not isinstance(label, (str, int, type(None))):
            raise TypeError(f"label must be a label name, an index or None, got {label!r}")
        self.model_name = model_name
        self.label = label
        self.function_to_apply = function_to_apply
        self.batch_size = max(1, int(batch_size))
        self.device = device
        self.num_workers = num_workers
        self.draft = draft
        self._classifier = None

    def classifier(self):
        """The model, loaded on first use and kept, so the operator can run again."""
        if self._classifier is None:
            if not self.model_name:
                raise ValueError(f"{type(self).__name__} needs model_name: a local folder or a Hugging Face repo id")
            self._classifier = load_image_classifier(
                os.fspath(self.model_name), self.device, self.batch_size, self.function_to_apply
            )
        return self._classifier

    def missing_models(self, keys: dict | None = None) -> list[str]:
        """The model check of every operator, then the label against the model's config.json (no weights)."""
        problems = super().missing_models(keys)
        if problems:
            return problems
        problem = label_problem(self.model_name, self.label)
        return [f"label={self.label!r}: {problem}"] if problem else []

    def column_names(self, keys: dict) -> dict[str, str]:
        names = {SCORE: keys.get("output_score_key") or SCORE}
        if keys.get("output_label_key"):
            names[LABEL] = keys["output_label_key"]
        return names

    def score_rows(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        sources = image_column(df, keys["input_image_key"], type(self).__name__)
        classifier = self.classifier()
        index = classifier.label_index(self.label)  # a wrong label stops here, before any image
        out: list[ItemResult] = []
        for _, results in stream_items(
            preprocess_image,
            sources,
            window=max(self.batch_size * 4, 64),
            num_workers=self.num_workers,
            desc=type(self).__name__,
            base_dir=base_dir,
            processor=classifier.processor,
            draft_size=2 * input_side(classifier.processor) if self.draft else None,
            max_pixels=DEFAULT_MAX_PIXELS,
        ):
            good = [r.value for r in results if r.error is None]
            scores = iter(classifier.scores(good) if good else [])
            for r in results:
                if r.error is not None:
                    out.append(r)
                    continue
                row = next(scores)
                label = classifier.labels[int(np.argmax(row))]
                out.append(ItemResult({SCORE: float(row[index]), LABEL: label}))
        return out

    def run(
        self,
        storage,
        input_image_key: str = "image",
        output_score_key: str = SCORE,
        output_label_key: str | None = None,
    ) -> list[str]:
        return self.evaluate(
            storage,
            input_image_key=input_image_key,
            output_score_key=output_score_key,
            output_label_key=output_label_key,
        )
