"""ImageConsistencyFilter: keep question-answer rows whose answer an NLI model finds entailed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.operator import Threshold
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import RowFilter, Verdict
from dataflow.models.text_classifier import DEFAULT_NLI_MODEL, ENTAILMENT_INDEX, ClassifierCache, text_of


@OPERATOR_REGISTRY.register()
class ImageConsistencyFilter(RowFilter):
    """Keeps rows whose answer follows from their caption and question, as an NLI model judges it.

    The premise is the stripped caption, a space and the stripped question; the hypothesis is the
    stripped answer. The score is the softmax probability of the entailment class (index 2 by default);
    rows scoring at least ``threshold`` are kept. An empty answer scores 0. Dropped rows go to the
    rejected file with reason ``inconsistent`` and the score in the detail.

    Differences from DataFlow-MM:

    - rows run in batches of `batch_size` (DataFlow-MM: one row per forward pass); padding is masked,
      so a row's score does not depend on its batch (equal to within float rounding);
    - the model loads on first `run`, not in `__init__`, and stays loaded so the operator can run again;
      models load from a local folder or the local Hugging Face cache only;
    - a null or non-text cell reads as empty (DataFlow-MM raises on a NaN cell);
    - options: `entailment_label` (read another class, for NLI models that order their labels
      differently) and `output_score_key` (the entailment probability, on the kept rows);
    - dropped rows are in the rejected file with the reason and the score.

    Parameters:
        model_name: a local folder holding a sequence-classification (NLI) model, or a Hugging Face repo
            id (from the local cache, downloaded into it on first use unless `HF_HUB_OFFLINE=1`)
        threshold: lowest entailment probability kept (inclusive)
        device: `"cuda"`, `"cpu"` or None (cuda when available); cuda without a GPU warns and uses the cpu
        batch_size: rows per model forward pass
        entailment_label: the class whose probability is the score: an index (DataFlow-MM reads 2,
            entailment in bart-large-mnli) or a label name from the model's config (`"entailment"`)
        input_caption_key: column holding the image caption (first part of the premise)
        input_question_key: column holding the question (second part of the premise)
        input_answer_key: column holding the answer (the hypothesis)
        output_score_key: when set, kept rows get their entailment probability in this column; None (the
            default) writes no column, as DataFlow-MM
    """

    description = "Keeps rows whose answer an NLI model finds entailed by caption + question (prob >= threshold)."
    description_zh = "用 NLI 模型判断答案是否由图像描述与问题蕴含，保留蕴含概率不低于阈值的样本。"
    loads_model = True
    model_params = {"model_name": "text_classifier"}
    thresholds = (Threshold("threshold", "output_score_key", "min"),)

    example = Example.on_example_data(
        "ImageConsistencyFilter",
        """
        op = ImageConsistencyFilter(model_name="facebook/bart-large-mnli", threshold=0.35)
        op.run(storage.step(), input_caption_key="caption", input_question_key="question",
               input_answer_key="answer")
        """,
        not_run="needs a local NLI model (download it once with "
        "`huggingface-cli download facebook/bart-large-mnli` on a machine with network access) and "
        "question / answer columns",
    )

    def __init__(
        self,
        model_name: str = DEFAULT_NLI_MODEL,
        threshold: float = 0.35,
        device: str | None = None,
        batch_size: int = 32,
        entailment_label: int | str = ENTAILMENT_INDEX,
    ):
        self.model_name = model_name
        self.threshold = threshold
        self.device = device
        self.batch_size = batch_size
        self.entailment_label = entailment_label
        self.models = ClassifierCache(model_name, device, batch_size)

    def entailment_scores(self, captions: list, questions: list, answers: list) -> np.ndarray:
        """Per row, the entailment probability of answer given caption + question (0 for an empty answer)."""
        premises = [text_of(c).strip() + " " + text_of(q).strip() for c, q in zip(captions, questions)]
        hypotheses = [text_of(a).strip() for a in answers]
        scores = np.zeros(len(hypotheses), dtype=float)
        scored = [i for i, h in enumerate(hypotheses) if h]
        if scored:
            classifier = self.models.get()
            column = classifier.label_index(self.entailment_label)
            pairs = [(premises[i], hypotheses[i]) for i in scored]
            scores[scored] = classifier.probabilities(pairs, desc="ImageConsistencyFilter")[:, column]
        return scores

    def judge(
        self,
        df: pd.DataFrame,
        base_dir: str,
        input_caption_key: str,
        input_question_key: str,
        input_answer_key: str,
        output_score_key: str | None,
    ) -> Verdict:
        keys = {"input_caption_key": input_caption_key, "input_question_key": input_question_key}
        for name, column in {**keys, "input_answer_key": input_answer_key}.items():
            if column not in df.columns:
                raise KeyError(f"{name}={column!r} is not a column (columns: {', '.join(map(str, df.columns))})")
        answers = df[input_answer_key].tolist()
        scores = self.entailment_scores(df[input_caption_key].tolist(), df[input_question_key].tolist(), answers)
        if output_score_key:
            df[output_score_key] = scores
        empty = [not text_of(a).strip() for a in answers]
        verdict = Verdict.keep_all(len(df))
        verdict.drop(
            scores < self.threshold,
            "inconsistent",
            lambda at: [
                f"entailment {scores[i]:.4g} < {self.threshold}" + (" (empty answer)" if empty[i] else "") for i in at
            ],
        )
        return verdict

    def run(
        self,
        storage,
        input_caption_key: str = "caption",
        input_question_key: str = "question",
        input_answer_key: str = "answer",
        output_score_key: str | None = None,
    ) -> list[str]:
        self.filter(
            storage,
            input_caption_key=input_caption_key,
            input_question_key=input_question_key,
            input_answer_key=input_answer_key,
            output_score_key=output_score_key,
        )
        return [input_caption_key, input_question_key, input_answer_key]  # what DataFlow-MM's run returns
