"""ImageComplexityFilter: keep captions in which an NLI model finds at least ``min_k`` visual capabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.operator import Threshold
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import RowFilter, Verdict
from dataflow.models.text_classifier import DEFAULT_NLI_MODEL, ENTAILMENT_INDEX, ClassifierCache, text_of

# DataFlow-MM's capability labels and hypothesis template, word for word: the model reads these exact
# sentences, so any rewording would change which captions pass.
CAPABILITIES = (
    "color",
    "shape",
    "object recognition",
    "action recognition",
    "text recognition",
    "spatial recognition",
    "counting",
    "spatial relationship",
    "object interaction",
    "scene understanding",
)
TEMPLATE = "The following text describes {}."
MIN_CAPTION_CHARS = 5  # shorter captions (after stripping) count no capability, as in DataFlow-MM


@OPERATOR_REGISTRY.register()
class ImageComplexityFilter(RowFilter):
    """Keeps rows whose caption an NLI model finds at least ``min_k`` of ten visual capabilities in.

    For each caption and each capability (color, shape, object recognition, action recognition, text
    recognition, spatial recognition, counting, spatial relationship, object interaction, scene
    understanding) the model reads the pair (caption, "The following text describes <capability>.");
    the capability counts when the softmax probability of its entailment class (index 2 by default)
    is at least ``threshold``. A caption that is null, empty or shorter than 5 characters once stripped
    counts none. Dropped rows go to the rejected file with reason ``low_complexity``, a detail naming
    the capabilities found, and a `capabilities` column listing them.

    Differences from DataFlow-MM:

    - pairs run in batches of `batch_size` (DataFlow-MM: one pair per forward pass); padding is masked,
      so a pair's probabilities do not depend on its batch (equal to within float rounding);
    - the model loads on first `run`, not in `__init__`, and stays loaded so the operator can run again;
      models load from a local folder or the Hugging Face cache, downloaded into it on first use unless
      `HF_HUB_OFFLINE=1` (DataFlow-MM passes `local_files_only=True`, so it never downloads);
    - a null or non-text caption counts no capability (DataFlow-MM raises on a NaN caption); a model
      error is raised, not logged with the capabilities found so far;
    - options: `entailment_label` (read another class, for NLI models that order their labels
      differently) and `output_count_key` (the number of capabilities found, on the kept rows);
    - dropped rows are in the rejected file with the reason and what was found.

    Parameters:
        model_name: a local folder holding a sequence-classification (NLI) model, or a Hugging Face repo
            id (from the local cache, downloaded into it on first use unless `HF_HUB_OFFLINE=1`)
        threshold: lowest entailment probability at which a capability counts (inclusive)
        min_k: fewest capabilities a kept caption covers
        device: `"cuda"`, `"cpu"` or None (cuda when available); cuda without a GPU warns and uses the cpu
        batch_size: (caption, hypothesis) pairs per model forward pass
        entailment_label: the class whose probability is read: an index (DataFlow-MM reads 2, entailment
            in bart-large-mnli) or a label name from the model's config (`"entailment"`)
        input_caption_key: column holding the caption
        output_count_key: when set, kept rows get the number of capabilities found in this column; None
            (the default) writes no column, as DataFlow-MM
    """

    description = "Keeps captions in which an NLI model finds at least min_k of ten visual capabilities."
    description_zh = "用 NLI 模型判断描述文本涵盖的视觉能力（颜色、形状、计数等）数量，保留不少于 min_k 项的样本。"
    loads_model = True
    model_params = {"model_name": "text_classifier"}
    thresholds = (Threshold("min_k", "output_count_key", "min"),)

    example = Example.on_example_data(
        "ImageComplexityFilter",
        """
        op = ImageComplexityFilter(model_name="facebook/bart-large-mnli", threshold=0.4, min_k=2)
        op.run(storage.step(), input_caption_key="caption")
        """,
        not_run="needs a local NLI model (download it once with "
        "`huggingface-cli download facebook/bart-large-mnli` on a machine with network access)",
    )

    def __init__(
        self,
        model_name: str = DEFAULT_NLI_MODEL,
        threshold: float = 0.4,
        min_k: int = 2,
        device: str | None = None,
        batch_size: int = 32,
        entailment_label: int | str = ENTAILMENT_INDEX,
    ):
        self.model_name = model_name
        self.threshold = threshold
        self.min_k = min_k
        self.device = device
        self.batch_size = batch_size
        self.entailment_label = entailment_label
        self.models = ClassifierCache(model_name, device, batch_size)

    def capabilities(self, captions: list[str]) -> list[list[str]]:
        """Per caption, the capabilities whose entailment probability reaches ``threshold``."""
        scored = [i for i, c in enumerate(captions) if len(c.strip()) >= MIN_CAPTION_CHARS]
        found: list[list[str]] = [[] for _ in captions]
        if not scored:
            return found
        classifier = self.models.get()
        column = classifier.label_index(self.entailment_label)
        pairs = [(captions[i], TEMPLATE.format(cap)) for i in scored for cap in CAPABILITIES]
        probs = classifier.probabilities(pairs, desc="ImageComplexityFilter")[:, column]
        hits = probs.reshape(len(scored), len(CAPABILITIES)) >= self.threshold
        for row, i in enumerate(scored):
            found[i] = [cap for cap, hit in zip(CAPABILITIES, hits[row]) if hit]
        return found

    def judge(self, df: pd.DataFrame, base_dir: str, input_caption_key: str, output_count_key: str | None) -> Verdict:
        if input_caption_key not in df.columns:
            raise KeyError(
                f"input_caption_key={input_caption_key!r} is not a column (columns: {', '.join(map(str, df.columns))})"
            )
        found = self.capabilities([text_of(v) for v in df[input_caption_key].tolist()])
        counts = np.array([len(f) for f in found], dtype=int)
        if output_count_key:
            df[output_count_key] = counts
        verdict = Verdict.keep_all(len(df))
        verdict.drop(
            counts < self.min_k,
            "low_complexity",
            lambda at: [f"{counts[i]} capabilities < min_k {self.min_k}: {', '.join(found[i]) or 'none'}" for i in at],
        )
        verdict.columns["capabilities"] = lambda at: [list(found[i]) for i in at]
        return verdict

    def run(self, storage, input_caption_key: str = "caption", output_count_key: str | None = None) -> list[str]:
        self.filter(storage, input_caption_key=input_caption_key, output_count_key=output_count_key)
        return [input_caption_key]  # what DataFlow-MM's run returns
