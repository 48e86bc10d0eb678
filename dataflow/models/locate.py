"""Is a model on local disk? Answered without importing torch or loading a weight (for ``compile()``)."""

from __future__ import annotations

import os
from pathlib import Path

KINDS = ("image", "clip", "weights", "text_classifier", "blip_vqa")


def model_problem(kind: str, name) -> str | None:
    """Why the model ``name`` of ``kind`` cannot be loaded from local disk, or None when it can.

    ``"image"``: an image embedder (``efficientnet-lite0`` or a CLIP folder / HF cache id); ``"clip"``: a
    CLIP model (it embeds text too); ``"weights"``: a state-dict file; ``"text_classifier"``: a sequence
    classifier (an NLI model); ``"blip_vqa"``: a BLIP question-answering model.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    if name is None or not str(name):
        return "no model given"
    if kind == "weights":
        path = Path(os.fspath(name)).expanduser()
        return None if path.is_file() else f"weights file not found at {path.resolve()}"
    if kind in ("text_classifier", "blip_vqa"):
        from dataflow.models.text_classifier import classifier_problem

        if kind == "text_classifier":
            return classifier_problem(name)
        return classifier_problem(name, "BLIP VQA model", "Salesforce/blip-vqa-base")
    from dataflow.models.clip import EFFICIENTNET_LITE0, ModelNotFoundError, _resolve_model_dir

    try:
        if os.fspath(name).lower() == EFFICIENTNET_LITE0:
            if kind == "clip":
                return f"{name} embeds images only; image-text scores need a CLIP model"
            from dataflow.models.efficientnet_lite import default_weights_path

            default_weights_path()
        else:
            _resolve_model_dir(name)
    except ModelNotFoundError as exc:
        return str(exc).strip()
    except ImportError as exc:
        from dataflow import install_hint

        return f"cannot look for it: {exc.name or exc} is not installed ({install_hint('clip')})"
    return None
