"""Text(-pair) sequence classifiers through transformers.

The NLI filters ported from DataFlow-MM (``facebook/bart-large-mnli`` by default) ask a classifier how
likely a hypothesis follows from a premise. Here: ``load_text_classifier(model_name, device)`` gives a
:class:`TextPairClassifier` whose ``probabilities(pairs)`` is the softmax over the model's logits for each
(premise, hypothesis) pair, in batches. Models come from a local folder (anything ``save_pretrained``
wrote) or the Hugging Face cache, downloaded into it on first use unless ``HF_HUB_OFFLINE=1``
(``dataflow.models.hub``); no remote code is run. A model that cannot be had raises
``ModelNotFoundError`` saying how to provide it; ``resolve_model_dir`` finds any other transformers model
(a BLIP VQA model, say) the same way.

torch and transformers are imported lazily, so this module imports without the [clip] extra.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dataflow.models import hub
from dataflow.models.clip import resolve_device
from dataflow.models.hub import ModelNotFoundError, incomplete_model

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "ModelNotFoundError",
    "DEFAULT_NLI_MODEL",
    "ENTAILMENT_INDEX",
    "TextPairClassifier",
    "ClassifierCache",
    "classifier_problem",
    "load_text_classifier",
    "resolve_model_dir",
    "text_of",
]

DEFAULT_NLI_MODEL = "facebook/bart-large-mnli"
# DataFlow-MM reads the probability at index 2, which is "entailment" in bart-large-mnli's id2label
# (contradiction, neutral, entailment); other NLI models order their labels differently.
ENTAILMENT_INDEX = 2


def resolve_model_dir(
    model_name: str | os.PathLike, what: str = "text classifier", repo_hint: str = DEFAULT_NLI_MODEL, **options
) -> Path:
    """A local folder for a transformers model (see ``dataflow.models.hub.resolve_model_dir``)."""
    return hub.resolve_model_dir(model_name, what, repo_hint, **options)


def classifier_problem(model_name, what: str = "text classifier", repo_hint: str = DEFAULT_NLI_MODEL) -> str | None:
    """Why the transformers model ``model_name`` cannot be loaded, or None when it can (loads nothing)."""
    return hub.model_problem(model_name, what, repo_hint)


def text_of(value) -> str:
    """A text cell as a string: null and non-text values are the empty string."""
    return value if isinstance(value, str) else ""


class TextPairClassifier:
    """A sequence classifier on one device; ``probabilities`` gives its softmax over labels per pair.

    fp32 everywhere (as DataFlow-MM runs it), inference only, in batches of ``batch_size`` pairs ordered
    by length so a batch pads little; padding is masked, so a pair's result does not depend on its batch.
    """

    def __init__(self, model: Any, tokenizer: Any, device: torch.device, name: str, batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.name = name
        self.batch_size = max(1, int(batch_size))
        self.num_labels = int(model.config.num_labels)

    def label_index(self, label: int | str) -> int:
        """The column of ``probabilities`` for ``label``: an index, or a name from the config's id2label."""
        if isinstance(label, bool):
            raise TypeError(f"label must be an index or a label name, got {label!r}")
        if isinstance(label, int):
            if not -self.num_labels <= label < self.num_labels:
                raise ValueError(f"label index {label} is out of range for {self.name!r} ({self.num_labels} labels)")
            return label % self.num_labels
        names = {str(v).lower(): int(k) for k, v in (self.model.config.id2label or {}).items()}
        if str(label).lower() not in names:
            raise ValueError(f"{self.name!r} has no label {label!r}; its labels: {sorted(names)}")
        return names[str(label).lower()]

    def probabilities(self, pairs: Sequence[tuple[str, str]], desc: str = "classify") -> np.ndarray:
        """(premise, hypothesis) pairs -> (N, num_labels) float32 softmax probabilities."""
        import torch

        from dataflow.log import progress

        out = np.empty((len(pairs), self.num_labels), dtype=np.float32)
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        starts = range(0, len(order), self.batch_size)
        with torch.inference_mode():
            for start in progress(starts, total=len(starts), desc=desc, unit="batch"):
                at = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [pairs[i][0] for i in at],
                    [pairs[i][1] for i in at],
                    return_tensors="pt",
                    truncation=True,
                    padding=True,
                ).to(self.device)
                logits = self.model(**batch).logits.float()
                out[at] = torch.softmax(logits, dim=-1).cpu().numpy()
        return out


def load_text_classifier(
    model_name: str | os.PathLike, device: str | torch.device | None = None, batch_size: int = 32
) -> TextPairClassifier:
    """Load a sequence classifier (``AutoModelForSequenceClassification`` and its fast tokenizer) from a
    local folder or the local HF cache; raises ``ModelNotFoundError`` when it is not on disk."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = resolve_model_dir(model_name)
    dev = resolve_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, use_fast=True)
        model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
    except OSError as exc:  # weights or tokenizer files missing from the folder
        raise incomplete_model(model_name, folder, exc, "text classifier", DEFAULT_NLI_MODEL) from exc
    model = model.to(dev).float().eval()
    return TextPairClassifier(model, tokenizer, dev, name=os.fspath(model_name), batch_size=batch_size)


class ClassifierCache:
    """Loads the named classifier on first use and keeps it, so an operator can run again."""

    def __init__(self, model_name: str, device: str | None, batch_size: int):
        self.model_name, self.device, self.batch_size = model_name, device, batch_size
        self._classifier: TextPairClassifier | None = None

    def get(self) -> TextPairClassifier:
        if self._classifier is None:
            self._classifier = load_text_classifier(self.model_name, self.device, self.batch_size)
        return self._classifier
