"""Can a model be had (on local disk, or a Hub id downloaded on first use)? Answered without importing torch,
loading a weight or downloading (for ``compile()``)."""

from __future__ import annotations

import os
from pathlib import Path

KINDS = ("image", "clip", "weights", "text_classifier", "blip_vqa", "image_classifier", "nudenet", "longclip", "vlm")


def model_problem(kind: str, name) -> str | None:
    """Why the model ``name`` of ``kind`` cannot be loaded, or None when it can (a Hub id not on disk counts as
    loadable unless downloads are off: ``HF_HUB_OFFLINE=1``).

    ``"image"``: an image embedder (``efficientnet-lite0`` or a CLIP folder / HF cache id); ``"clip"``: a
    CLIP model (it embeds text too); ``"weights"``: a state-dict file; ``"text_classifier"``: a sequence
    classifier (an NLI model); ``"blip_vqa"``: a BLIP question-answering model; ``"image_classifier"``: an
    ``AutoModelForImageClassification`` checkpoint (its config.json is read: no weights); ``"nudenet"``: a
    NudeNet ``.onnx`` file, None meaning the one shipped in the ``nudenet`` package; ``"longclip"``: a LongCLIP
    checkpoint (an OpenAI-clip-format ``.pt``, a folder holding one, or a 248-position transformers CLIP);
    ``"vlm"``: a vision-language model (``AutoModelForImageTextToText``: Qwen2-VL, Qwen2.5-VL, LLaVA...).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    if kind == "nudenet":
        from dataflow.models.nudenet import model_path_problem

        return model_path_problem(name)
    if name is None or not str(name):
        return "no model given"
    if kind == "longclip":
        from dataflow.models.longclip import longclip_problem

        return longclip_problem(name)
    if kind == "weights":
        path = Path(os.fspath(name)).expanduser()
        return None if path.is_file() else f"weights file not found at {path.resolve()}"
    if kind == "vlm":
        from dataflow.models.vlm import vlm_problem

        return vlm_problem(name)
    if kind == "image_classifier":
        from dataflow.models.image_classifier import classifier_problem as image_classifier_problem

        return image_classifier_problem(name)
    if kind in ("text_classifier", "blip_vqa"):
        from dataflow.models.text_classifier import classifier_problem

        if kind == "text_classifier":
            return classifier_problem(name)
        return classifier_problem(name, "BLIP VQA model", "Salesforce/blip-vqa-base")
    from dataflow.models.clip import EFFICIENTNET_LITE0
    from dataflow.models.hub import ModelNotFoundError, model_problem

    if os.fspath(name).lower() != EFFICIENTNET_LITE0:
        return model_problem(name, "CLIP model", "openai/clip-vit-base-patch32")
    if kind == "clip":
        return f"{name} embeds images only; image-text scores need a CLIP model"
    try:
        from dataflow.models.efficientnet_lite import default_weights_path

        default_weights_path()
    except ModelNotFoundError as exc:
        return str(exc).strip()
    except ImportError as exc:
        from dataflow import install_hint

        return f"cannot look for it: {exc.name or exc} is not installed ({install_hint('clip')})"
    return None
