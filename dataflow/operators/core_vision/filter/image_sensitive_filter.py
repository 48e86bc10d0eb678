"""ImageSensitiveFilter: drop rows whose image is missing or whose texts an NLI model finds unsafe."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.images import image_column
from dataflow.core.operator import Threshold
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import RowFilter, Verdict
from dataflow.media import ImageLoadError
from dataflow.media.loader import is_null, read_source_bytes, resolve_path
from dataflow.models.text_classifier import DEFAULT_NLI_MODEL, ENTAILMENT_INDEX, ClassifierCache

# DataFlow-MM's risk labels and their hypotheses, word for word: the model reads these exact sentences,
# so any rewording would change which texts are flagged.
RISKS = {
    "sexual_content": "The text describes sexual content, nudity or pornography.",
    "violence": "The text describes or encourages physical violence, injury, or killing.",
    "self_harm": "The text mentions suicide, self-harm or wanting to die.",
    "hate": "The text attacks or insults a group based on race, religion, gender or similar traits.",
    "harassment": "The text insults, bullies or harasses a person.",
    "threat": "The text threatens to harm a person or a group.",
}


def image_problem(source, base_dir: str | None) -> tuple[str, str] | None:
    """Why a row's image is not there (reason code, detail), or None; nothing is decoded."""
    try:
        if isinstance(source, (str, os.PathLike)) and not is_null(source) and os.fspath(source):
            path = resolve_path(source, base_dir)
            if path.is_file() and path.stat().st_size > 0:
                return None  # the common case, answered by a stat: the file is not read
        # bytes, {bytes, path} dicts, tar members, table rows, and paths that failed above: the loader
        # reads them and names the reason (missing, empty, not_an_image, ...)
        read_source_bytes(source, base_dir)
    except ImageLoadError as exc:
        return exc.code, exc.detail
    return None


def texts_of(value) -> list[str]:
    """A text cell as the texts to check: a string, or each string of a list; blank ones are skipped."""
    if isinstance(value, str):
        values = [value]
    elif isinstance(value, (list, tuple, np.ndarray)):
        values = [v for v in value if isinstance(v, str)]
    else:
        values = []
    return [v for v in values if v.strip()]


@OPERATOR_REGISTRY.register()
class ImageSensitiveFilter(RowFilter):
    """Drops rows whose image is missing or whose texts an NLI model finds sexual, violent, self-harming,
    hateful, harassing or threatening.

    Each text of the columns in ``input_text_keys`` is paired with six risk hypotheses ("The text
    describes or encourages physical violence, injury, or killing.", ...); the risk of a label is the
    softmax probability of the entailment class (index 2 by default). A row is kept when its image is
    there and every risk of every text is below ``threshold``; blank texts carry no risk. A row whose
    image is missing is rejected with the loader's reason (``missing``, ``empty``, ``not_an_image``)
    before any text is scored; an unsafe one with reason ``sensitive_text``, its detail naming the
    label, the score and the column.

    Differences from DataFlow-MM:

    - pairs run in batches of `batch_size` (DataFlow-MM: one pair per forward pass); padding is masked,
      so a pair's probabilities do not depend on its batch (equal to within float rounding);
    - the model loads on first `run`, not in `__init__`, and stays loaded so the operator can run again;
      models load from a local folder or the local Hugging Face cache only;
    - relative image paths resolve against the input file's folder as everywhere in dataflow
      (DataFlow-MM: the working directory); images given as bytes or `{bytes, path}` dicts count as
      present; like DataFlow-MM, the image is checked to be there, not decoded;
    - a null or non-text cell carries no risk (DataFlow-MM raises on a NaN cell); a cell holding a list
      of strings has each string checked; `input_text_keys` may also be one column name;
    - options: `entailment_label` (read another class, for NLI models that order their labels
      differently) and `output_score_key` (the highest risk of the row, on the kept rows);
    - dropped rows are in the rejected file with the reason and the label that flagged them.

    Parameters:
        model_name: a local folder holding a sequence-classification (NLI) model, or a Hugging Face repo
            id (from the local cache, downloaded into it on first use unless `HF_HUB_OFFLINE=1`)
        threshold: a risk probability at or above this flags the text (rows kept have every risk below it)
        device: `"cuda"`, `"cpu"` or None (cuda when available); cuda without a GPU warns and uses the cpu
        batch_size: (text, hypothesis) pairs per model forward pass
        entailment_label: the class whose probability is the risk: an index (DataFlow-MM reads 2,
            entailment in bart-large-mnli) or a label name from the model's config (`"entailment"`)
        input_image_key: column holding the image, which must be there: a path (relative to the input
            file's folder), bytes, or a `{bytes, path}` dict
        input_text_keys: the text columns checked (a list of names, or one name)
        output_score_key: when set, kept rows get their highest risk (0 when they have no text) in this
            column; None (the default) writes no column, as DataFlow-MM
    """

    description = "Drops rows with a missing image or texts an NLI model flags as sexual, violent, hateful, ..."
    description_zh = (
        "用 NLI 零样本推理检测文本中的色情、暴力、自残、仇恨、骚扰、威胁内容，并剔除图像缺失或文本不安全的样本。"
    )
    loads_model = True
    model_params = {"model_name": "text_classifier"}
    thresholds = (Threshold("threshold", "output_score_key", "max"),)

    example = Example.on_example_data(
        "ImageSensitiveFilter",
        """
        op = ImageSensitiveFilter(model_name="facebook/bart-large-mnli", threshold=0.5)
        op.run(storage.step(), input_image_key="image", input_text_keys=["caption"])
        """,
        not_run="needs a local NLI model (download it once with "
        "`huggingface-cli download facebook/bart-large-mnli` on a machine with network access)",
    )

    def __init__(
        self,
        model_name: str = DEFAULT_NLI_MODEL,
        threshold: float = 0.5,
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

    def judge(
        self,
        df: pd.DataFrame,
        base_dir: str,
        input_image_key: str,
        input_text_keys: list[str] | str,
        output_score_key: str | None,
    ) -> Verdict:
        text_keys = [input_text_keys] if isinstance(input_text_keys, str) else list(input_text_keys)
        for column in text_keys:
            if column not in df.columns:
                raise KeyError(
                    f"input_text_keys: {column!r} is not a column (columns: {', '.join(map(str, df.columns))})"
                )
        sources = image_column(df, input_image_key, type(self).__name__)
        problems = [image_problem(s, base_dir) for s in sources]
        verdict = Verdict(
            np.array([p[0] if p else None for p in problems], dtype=object),
            np.array([p[1] if p else None for p in problems], dtype=object),
        )

        # Texts of rows whose image is there (DataFlow-MM checks the image first and stops there).
        texts = [
            (row, column, text)
            for column in text_keys
            for row, value in enumerate(df[column].tolist())
            if problems[row] is None
            for text in texts_of(value)
        ]
        labels = list(RISKS)
        risk = np.zeros(len(df), dtype=float)
        flagged: dict[int, str] = {}
        if texts:
            classifier = self.models.get()
            index = classifier.label_index(self.entailment_label)
            pairs = [(text, RISKS[label]) for _, _, text in texts for label in labels]
            probs = classifier.probabilities(pairs, desc="ImageSensitiveFilter")[:, index]
            probs = probs.reshape(len(texts), len(labels))
            for (row, column, _), p in zip(texts, probs):
                top = int(np.argmax(p))
                if row not in flagged or p[top] > risk[row]:  # the row's highest risk, and where it is
                    risk[row] = float(p[top])
                    flagged[row] = f"{labels[top]} {p[top]:.4g} >= {self.threshold} in {column}"
        if output_score_key:
            df[output_score_key] = risk
        verdict.drop(risk >= self.threshold, "sensitive_text", lambda at: [flagged.get(i, "") for i in at])
        return verdict

    def run(
        self,
        storage,
        input_image_key: str,
        input_text_keys: list[str] | str,
        output_score_key: str | None = None,
    ) -> list[str]:
        self.filter(
            storage, input_image_key=input_image_key, input_text_keys=input_text_keys, output_score_key=output_score_key
        )
        keys = [input_text_keys] if isinstance(input_text_keys, str) else list(input_text_keys)
        return [input_image_key, *keys]  # what DataFlow-MM's run returns
