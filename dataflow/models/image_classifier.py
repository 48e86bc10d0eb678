"""Any Hugging Face image classifier (``AutoModelForImageClassification`` + ``AutoImageProcessor``) as a scorer.

AIGC detectors, watermark detectors, NSFW and quality classifiers are published on the Hub as image
classification checkpoints. ``load_image_classifier(model_name, device)`` gives an :class:`ImageClassifier`
whose ``scores(inputs)`` turns the processor's outputs into per-label scores, in batches, by the rule the
transformers ``image-classification`` pipeline applies by default (:func:`output_function`).

The folder comes from ``dataflow.models.hub.resolve_model_dir`` (a local folder, the local HF cache or a
first-use download where allowed); the model's own code is never run (``trust_remote_code=False``).
:func:`preprocess_image` is the per-image step for worker processes: decode with our loader, then the
model's own processor. :func:`classifier_problem` and :func:`label_problem` answer from ``config.json``
alone, for ``compile()``: no torch import, no weights read.

torch and transformers are imported lazily, so this module imports without the [clip] extra.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dataflow.models.clip import resolve_device
from dataflow.models.hub import ModelNotFoundError, resolve_model_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "FUNCTIONS",
    "ImageClassifier",
    "classifier_problem",
    "config_labels",
    "input_side",
    "label_index",
    "label_problem",
    "load_image_classifier",
    "output_function",
    "preprocess_image",
]

# What turns logits into scores: the transformers image-classification pipeline's `function_to_apply`.
FUNCTIONS = ("default", "softmax", "sigmoid", "none")
# A processor that keeps the aspect ratio (resize the short side) would turn a 20000 x 10 strip into a
# 224 x 448000 input; beyond this ratio the long side is first cut, around the centre, to this many short sides.
MAX_ASPECT = 10


WHAT, HINT = "image classifier", "Organika/sdxl-detector"  # the words and repo of the not-found message


def _read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {folder / 'config.json'}: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{folder / 'config.json'} is not a JSON object")
    return config


def config_labels(config: dict) -> list[str]:
    """The label names in index order, from ``id2label`` (``LABEL_<i>`` where a name is missing)."""
    id2label = config.get("id2label") or {}
    count = len(id2label) or int(config.get("num_labels") or 2)  # transformers' default is 2 labels
    names = {int(k): str(v) for k, v in id2label.items()}
    return [names.get(i, f"LABEL_{i}") for i in range(count)]


def _labels_text(labels: Sequence[str]) -> str:
    return ", ".join(f"{i}={name!r}" for i, name in enumerate(labels))


def label_index(labels: Sequence[str], label: int | str | None, model_name: str) -> int:
    """The column of the scores for ``label``: an index, a name from ``id2label`` (any case), or None for
    a model with one output. A wrong label raises ``ValueError`` listing the model's labels."""
    if isinstance(label, bool) or not isinstance(label, (int, str, type(None))):
        raise TypeError(f"label must be a label name, an index or None, got {label!r}")
    if label is None:
        if len(labels) == 1:
            return 0
        raise ValueError(
            f"{model_name!r} has {len(labels)} labels; say which one to score with label=<name or index> "
            f"(its labels: {_labels_text(labels)})"
        )
    if isinstance(label, int):
        if not -len(labels) <= label < len(labels):
            raise ValueError(
                f"label index {label} is out of range for {model_name!r} (its labels: {_labels_text(labels)})"
            )
        return label % len(labels)
    matches = [i for i, name in enumerate(labels) if name.lower() == label.strip().lower()]
    if not matches:
        raise ValueError(f"{model_name!r} has no label {label!r}; its labels: {_labels_text(labels)}")
    return matches[0]


def output_function(config: dict, function_to_apply: str = "default") -> str:
    """``"softmax"``, ``"sigmoid"`` or ``"none"``; ``"default"`` follows the transformers image-classification
    pipeline: none for ``problem_type`` regression, sigmoid for multi_label_classification or a single
    label, softmax otherwise."""
    if function_to_apply not in FUNCTIONS:
        raise ValueError(f"function_to_apply must be one of {FUNCTIONS}, got {function_to_apply!r}")
    if function_to_apply != "default":
        return function_to_apply
    problem = config.get("problem_type")
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or len(config_labels(config)) == 1:
        return "sigmoid"
    return "softmax"


def _is_classifier_problem(name: str, folder: Path) -> str | None:
    """Why the folder's config is not an image classifier with an image processor, or None."""
    try:
        config = _read_config(folder)
    except ValueError as exc:
        return str(exc)
    architectures = config.get("architectures") or []
    # save_pretrained writes the class; without it only loading could tell, so the load decides.
    if architectures and not any("ForImageClassification" in str(a) for a in architectures):
        return (
            f"{name!r} is not an image classifier: its config.json names {architectures}, and "
            "AutoModelForImageClassification loads ...ForImageClassification architectures"
        )
    if not any((folder / f).is_file() for f in ("preprocessor_config.json", "processor_config.json")):
        return f"{name!r} has no preprocessor_config.json in {folder} (the image processor's settings)"
    return None


def _local_folder(model_name) -> Path | None:
    """The model's folder when it is on disk now (nothing downloaded); None for a Hub id that a first use
    will download; raises ModelNotFoundError when it cannot be had."""
    from dataflow.models.hub import downloads_allowed, looks_like_path

    name = os.fspath(model_name)
    try:
        return resolve_model_dir(name, WHAT, HINT, local_files_only=True)
    except ModelNotFoundError:
        if looks_like_path(name) or Path(name).expanduser().exists() or not downloads_allowed():
            raise
        return None


def classifier_problem(model_name) -> str | None:
    """Why ``model_name`` cannot be loaded as an image classifier, or None when it can (or is a Hub id a
    first use will download). Reads ``config.json`` only: no weights, no torch."""
    if model_name is None or not str(model_name):
        return "no model given"
    try:
        folder = _local_folder(model_name)
    except ModelNotFoundError as exc:
        return str(exc).strip()
    except ImportError as exc:
        from dataflow import install_hint

        return f"cannot look for it: {exc.name or exc} is not installed ({install_hint('clip')})"
    return None if folder is None else _is_classifier_problem(os.fspath(model_name), folder)


def label_problem(model_name, label: int | str | None) -> str | None:
    """Why ``label`` is not one of the model's labels, from its config.json; None when it is, or when the
    model is not on disk yet (its own problem, or the check waits for the download)."""
    try:
        folder = _local_folder(model_name)
        if folder is None:
            return None
        label_index(config_labels(_read_config(folder)), label, os.fspath(model_name))
    except (ModelNotFoundError, ImportError):
        return None
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _sides(value) -> dict[str, int]:
    """A processor's ``size`` / ``crop_size`` (an int, a dict or a transformers SizeDict) as ``{key: pixels}``."""
    if isinstance(value, int):
        return {"height": value, "width": value}
    keys = ("height", "width", "shortest_edge", "longest_edge")
    items = value if isinstance(value, dict) else {k: getattr(value, k, None) for k in keys}
    return {k: int(v) for k, v in items.items() if k in keys and isinstance(v, int) and v > 0}


def input_side(processor: Any) -> int:
    """The largest side the processor resizes an image to before any crop (0 when it says none)."""
    size, crop = _sides(getattr(processor, "size", None)), _sides(getattr(processor, "crop_size", None))
    side = max([*size.values(), *crop.values(), 0])
    crop_pct = getattr(processor, "crop_pct", None)
    if "shortest_edge" in size and isinstance(crop_pct, float) and 0 < crop_pct < 1:
        side = max(side, math.ceil(size["shortest_edge"] / crop_pct))  # ConvNeXt resizes to edge / crop_pct
    return side


def _keeps_aspect(processor: Any) -> bool:
    size = _sides(getattr(processor, "size", None))
    return "shortest_edge" in size and not {"height", "width", "longest_edge"} & set(size)


def preprocess_image(
    source, base_dir: str | None, processor: Any, draft_size: int | None, max_pixels: int | None
) -> dict[str, np.ndarray]:
    """One image through our loader (upright RGB, the decode guards, JPEG draft decoding to ``draft_size``
    when given) and then the model's processor: ``{input name: array}`` without the batch axis."""
    from dataflow.media import load_image
    from dataflow.operators.core_vision._embedding import _centre_strip

    img = load_image(source, base_dir, draft_size=draft_size, max_pixels=max_pixels)
    short = min(img.size)
    if max(img.size) > MAX_ASPECT * short and _keeps_aspect(processor):
        img = _centre_strip(img, MAX_ASPECT * short)
    # channels_last: without it transformers 4.x takes a 1- or 3-pixel-high image for channels-first
    inputs = processor(images=img, return_tensors="pt", input_data_format="channels_last")
    return {k: v[0].numpy() for k, v in inputs.items()}


class ImageClassifier:
    """An image classification model and its processor on one device.

    fp16 on cuda, fp32 elsewhere; inference only (``torch.inference_mode``), in batches of ``batch_size``
    inputs of the same shape. ``labels`` are the names in index order, ``function`` the rule
    (:func:`output_function`) that turns logits into ``scores``.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        config: dict,
        device: torch.device,
        name: str,
        batch_size: int = 32,
        function_to_apply: str = "default",
    ):
        self.model = model
        self.processor = processor
        self.device = device
        self.name = name
        self.batch_size = max(1, int(batch_size))
        self.labels = config_labels(config)
        self.function = output_function(config, function_to_apply)
        self.dtype = next(model.parameters()).dtype

    def label_index(self, label: int | str | None) -> int:
        """The column of ``scores`` for ``label`` (see :func:`label_index`)."""
        return label_index(self.labels, label, self.name)

    def _to_scores(self, logits: torch.Tensor) -> np.ndarray:
        import torch

        logits = logits.float()
        if self.function == "softmax":
            logits = torch.softmax(logits, dim=-1)
        elif self.function == "sigmoid":
            logits = torch.sigmoid(logits)
        return logits.cpu().numpy().astype(np.float32, copy=False)

    def scores(self, inputs: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
        """Per-image processor outputs (:func:`preprocess_image`) -> (N, num_labels) float32 scores."""
        import torch

        out = np.empty((len(inputs), len(self.labels)), dtype=np.float32)
        groups: dict[tuple, list[int]] = {}  # a processor that keeps the aspect ratio makes several shapes
        for i, item in enumerate(inputs):
            groups.setdefault(tuple((k, v.shape) for k, v in sorted(item.items())), []).append(i)
        with torch.inference_mode():
            for at_all in groups.values():
                for start in range(0, len(at_all), self.batch_size):
                    at = at_all[start : start + self.batch_size]
                    batch = {}
                    for key in inputs[at[0]]:
                        tensor = torch.from_numpy(np.stack([inputs[i][key] for i in at])).to(self.device)
                        batch[key] = tensor.to(self.dtype) if tensor.is_floating_point() else tensor
                    out[at] = self._to_scores(self.model(**batch).logits)
        return out


def load_image_classifier(
    model_name: str | os.PathLike,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    function_to_apply: str = "default",
) -> ImageClassifier:
    """Load an ``AutoModelForImageClassification`` and its ``AutoImageProcessor`` from a local folder, the
    local HF cache or a first-use download; never remote code. Raises ``ModelNotFoundError`` when it cannot
    be had and ``ValueError`` when it is not an image classifier."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from dataflow.models.clip import _torch_dtype_for

    name = os.fspath(model_name)
    folder = resolve_model_dir(name, WHAT, HINT)
    problem = _is_classifier_problem(name, folder)
    if problem:
        raise ValueError(problem)
    try:
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except OSError as exc:  # weights or processor files missing from the folder
        raise ModelNotFoundError(f"image classifier {name!r}: incomplete model in {folder}: {exc}") from exc
    except ValueError as exc:  # a model type transformers does not know, or one that needs its own code
        raise ValueError(
            f"{name!r} cannot be loaded as an image classifier by transformers without running the model's own "
            f"code, which dataflow never does: {exc}"
        ) from exc
    dev = resolve_device(device)
    model = model.to(dev, dtype=_torch_dtype_for(dev)).eval()
    return ImageClassifier(model, processor, _read_config(folder), dev, name, batch_size, function_to_apply)
