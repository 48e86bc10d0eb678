"""Text(-pair) sequence classifiers through transformers, loaded only from local files.

The NLI filters ported from DataFlow-MM (``facebook/bart-large-mnli`` by default) ask a classifier how
likely a hypothesis follows from a premise. Here: ``load_text_classifier(model_name, device)`` gives a
:class:`TextPairClassifier` whose ``probabilities(pairs)`` is the softmax over the model's logits for each
(premise, hypothesis) pair, in batches. Models come from a local folder (anything ``save_pretrained``
wrote) or the local Hugging Face cache (``local_files_only=True``); nothing is downloaded and no remote
code is run. A model that is not on disk raises ``ModelNotFoundError`` saying how to provide it;
``resolve_model_dir`` finds any other transformers model (a BLIP VQA model, say) the same way.

torch and transformers are imported lazily, so this module imports without the [clip] extra.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dataflow.models.clip import ModelNotFoundError, _looks_like_path, hf_cache_dir, resolve_device

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
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


def _missing_message(model_name: str, reason: str, what: str, repo_hint: str) -> str:
    repo_id = repo_hint if _looks_like_path(model_name) else model_name
    return (
        f"{what} {model_name!r} was not found on local disk ({reason}). dataflow never downloads "
        "models at run time. Either:\n"
        "  1. pass the path of a local folder holding the model (config.json, weights, tokenizer and "
        "processor files, as written by save_pretrained), or\n"
        "  2. download it once, on a machine with network access, into the Hugging Face cache read here "
        f"({hf_cache_dir()}; set HF_HOME to move it):\n"
        f"       hf download {repo_id}    (older huggingface_hub: huggingface-cli download {repo_id})\n"
    )


def resolve_model_dir(
    model_name: str | os.PathLike, what: str = "text classifier", repo_hint: str = DEFAULT_NLI_MODEL
) -> Path:
    """A local folder for a transformers model: the folder itself, or its snapshot in the local HF cache.

    ``what`` names the model in the error (``ModelNotFoundError``), ``repo_hint`` is the repo id its
    download hint shows when ``model_name`` is a path.
    """
    name = os.fspath(model_name)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(_missing_message(name, f"folder {path} has no config.json", what, repo_hint))
        return path
    if _looks_like_path(name) or path.exists():
        raise ModelNotFoundError(_missing_message(name, f"no folder at {path.resolve()}", what, repo_hint))
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # not a valid repo id, or not in the local cache
        reason = f"no folder at {path.resolve()} and not in the HF cache {hf_cache_dir()}"
        raise ModelNotFoundError(_missing_message(name, reason, what, repo_hint)) from exc


def incomplete_model(model_name, folder: Path, exc: Exception, what: str, repo_hint: str) -> ModelNotFoundError:
    """The error for a folder whose weights, tokenizer or processor files are missing."""
    reason = f"incomplete model in {folder}: {exc}"
    return ModelNotFoundError(_missing_message(os.fspath(model_name), reason, what, repo_hint))


def classifier_problem(model_name, what: str = "text classifier", repo_hint: str = DEFAULT_NLI_MODEL) -> str | None:
    """Why the transformers model ``model_name`` cannot be loaded from local disk, or None when it can
    (loads nothing); ``what`` and ``repo_hint`` as for :func:`resolve_model_dir`."""
    if model_name is None or not str(model_name):
        return "no model given"
    try:
        resolve_model_dir(model_name, what, repo_hint)
    except ModelNotFoundError as exc:
        return str(exc).strip()
    except ImportError as exc:
        from dataflow import install_hint

        return f"cannot look for it: {exc.name or exc} is not installed ({install_hint('clip')})"
    return None


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
