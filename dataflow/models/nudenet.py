"""NudeNet's body-part detector (the ONNX model shipped in the `nudenet` wheel), fed images we decoded.

`nudenet.NudeDetector().detect(path)` reads the file with OpenCV, pads it to a square, resizes it to
320 x 320, runs a YOLOv8n-style ONNX model and keeps boxes scoring at least 0.2 before a non-maximum
suppression (score 0.25, IoU 0.45). This module does the same steps on an RGB image from
:func:`dataflow.media.load_image`, so the image is decoded once, by our loader, and:

- ``preprocess`` gives the model input nudenet gives for the same pixels, bit for bit: the padding and
  OpenCV's bilinear resize, except that only the image plus one row and column of the padding is
  resized (with the same scale factor, so every output pixel samples the same source pixels with the
  same weights); a 20000 x 10 strip never becomes a 20000 x 20000 array;
- ``postprocess`` is nudenet's decoding vectorised over the 2100 candidate boxes (nudenet loops over
  them in Python), with the same float32 arithmetic, the same candidates in the same order and
  OpenCV's ``NMSBoxes``, so detections are equal, not just close;
- the model takes a batch dimension (``images: [batch, 3, height, width]``); a batch gives each image
  the outputs it gets alone.

``LABELS`` is nudenet's class list, in the model's output order. onnxruntime and OpenCV are imported
only when a model is loaded or an image preprocessed; both come with nudenet.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dataflow.models.hub import ModelNotFoundError

__all__ = [
    "LABELS",
    "INPUT_SIZE",
    "MODEL_PACKAGE",
    "NudeNetModel",
    "default_model_path",
    "model_path_problem",
    "preprocess",
    "postprocess",
    "cached_model",
]

MODEL_PACKAGE = "nudenet"
MODEL_FILE = "320n.onnx"
INPUT_SIZE = 320
# nudenet's constants: a box is a candidate at 0.2, survives NMS at 0.25, overlaps suppressed above IoU 0.45.
CANDIDATE_SCORE = 0.2
NMS_SCORE = 0.25
NMS_IOU = 0.45

# nudenet 3.4's `__labels`, in the order of the model's class outputs (tests check they still agree).
LABELS = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)


def default_model_path() -> Path:
    """The ONNX model inside the installed `nudenet` package (found without importing it)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"NudeNet model not found: the package '{MODEL_PACKAGE}' is not installed (its wheel ships "
            f"{MODEL_FILE}). Install it (pip install nudenet==3.4.2) or pass model_path= pointing at a "
            "NudeNet .onnx file."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / MODEL_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"'{MODEL_PACKAGE}' is installed but its model file is missing: {path}")
    return path


def resolve_model_path(model_path: str | os.PathLike | None) -> Path:
    """``model_path`` as a file that exists, or nudenet's shipped model when None."""
    if model_path is None:
        return default_model_path()
    path = Path(os.fspath(model_path)).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"NudeNet model file not found: {path.resolve()}")
    return path


def model_path_problem(model_path: str | os.PathLike | None) -> str | None:
    """Why ``model_path`` (None: nudenet's own) cannot be loaded from local disk, or None; loads nothing."""
    try:
        resolve_model_path(model_path)
    except ModelNotFoundError as exc:
        return str(exc)
    return None


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the (1, 3, 320, 320) float32 input nudenet builds from the same pixels.

    nudenet's steps on an OpenCV (BGR) read: ``cvtColor(RGBA2BGR)`` (on three channels it swaps red and
    blue, giving RGB, which is what we hold), zero padding on the bottom and right to a square of the
    long side, ``blobFromImage(1/255, 320 x 320, swapRB=True)``: a bilinear resize, then blue-green-red
    planes scaled to 0-1.
    """
    import cv2

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    side = max(height, width)
    # Only the image and a strip of padding is resized: at least one padding row / column (the last
    # image pixels are blended with it), and enough rows that the output has one (a 10-pixel-high strip
    # of a 20000-pixel square is under one output row). Rows past the strip are zeros either way.
    least = math.ceil(2 * side / INPUT_SIZE) + 2
    rows, cols = min(side, max(height + 1, least)), min(side, max(width + 1, least))
    padded = cv2.copyMakeBorder(rgb, 0, rows - height, 0, cols - width, cv2.BORDER_CONSTANT, value=0)
    # fx = fy = 320 / side is the scale blobFromImage's resize uses for the whole square, so each output
    # pixel is computed from the same source pixels with the same weights.
    scale = INPUT_SIZE / side
    resized = cv2.resize(padded, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    square = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    square[: resized.shape[0], : resized.shape[1]] = resized[:INPUT_SIZE, :INPUT_SIZE]
    # Already 320 x 320: blobFromImage only converts, swaps channels and scales, as in nudenet.
    return cv2.dnn.blobFromImage(square, 1 / 255.0, (INPUT_SIZE, INPUT_SIZE), (0, 0, 0), swapRB=True, crop=False)


def postprocess(output: np.ndarray, width: int, height: int) -> list[dict]:
    """One image's model output (22, N) -> nudenet's detections: ``{"class", "score", "box": [x, y, w, h]}``
    in pixels of the (upright) image, best first, as ``NudeDetector.detect`` returns them."""
    import cv2

    rows = np.asarray(output, dtype=np.float32).T  # (N, 4 box values + 18 class scores)
    class_scores = rows[:, 4:]
    best = class_scores.max(axis=1)
    keep = np.flatnonzero(best >= np.float32(CANDIDATE_SCORE))
    if not len(keep):
        return []
    scores = best[keep]
    class_ids = class_scores[keep].argmax(axis=1)
    cx, cy, w, h = (rows[keep, k] for k in range(4))
    side = max(width, height)  # nudenet's (original + pad) on either axis
    # nudenet's float32 arithmetic, in its order: centre to corner, scale by side / 320, then clip.
    x = (cx - w / np.float32(2)) * np.float32(side) / np.float32(INPUT_SIZE)
    y = (cy - h / np.float32(2)) * np.float32(side) / np.float32(INPUT_SIZE)
    w = w * np.float32(side) / np.float32(INPUT_SIZE)
    h = h * np.float32(side) / np.float32(INPUT_SIZE)
    x = np.maximum(np.float32(0), np.minimum(x, np.float32(width)))
    y = np.maximum(np.float32(0), np.minimum(y, np.float32(height)))
    w = np.minimum(w, np.float32(width) - x)
    h = np.minimum(h, np.float32(height) - y)
    boxes = np.stack([x, y, w, h], axis=1).astype(np.float64)
    picked = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), NMS_SCORE, NMS_IOU)
    return [
        {
            "class": LABELS[int(class_ids[i])],
            "score": float(scores[i]),
            "box": [int(v) for v in boxes[i]],  # int() truncates, as nudenet's does
        }
        for i in np.asarray(picked, dtype=np.int64).reshape(-1)
    ]


class NudeNetModel:
    """The NudeNet ONNX model in an onnxruntime CPU session with ``num_threads`` intra-op threads."""

    def __init__(self, model_path: str | os.PathLike | None = None, num_threads: int = 1):
        import onnxruntime as ort

        self.path = resolve_model_path(model_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(num_threads))
        options.inter_op_num_threads = 1  # the graph is one chain of convolutions: nothing to run side by side
        # Idle threads sleep instead of spinning: next to worker processes or other jobs on the machine a
        # spinning thread takes a core from them (measured: 2 spinning threads slower than 1 under load).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # not an ONNX file, or a graph this onnxruntime cannot run
            raise ModelNotFoundError(f"cannot load NudeNet model {self.path}: {type(exc).__name__}: {exc}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = inputs[0].name
        classes = outputs[0].shape[1]
        if isinstance(classes, int) and classes != 4 + len(LABELS):
            raise ModelNotFoundError(
                f"{self.path} has {classes - 4} classes, not NudeNet's {len(LABELS)}: not a NudeNet detector"
            )

    def run(self, blobs: np.ndarray) -> np.ndarray:
        """(n, 3, 320, 320) model inputs -> (n, 22, N) raw outputs, in one session call."""
        return self.session.run(None, {self.input_name: blobs})[0]

    def detect(self, images: Sequence[np.ndarray], batch_size: int = 8) -> list[list[dict]]:
        """nudenet's detections for each (H, W, 3) uint8 RGB image, ``batch_size`` images per model call."""
        out: list[list[dict]] = []
        for start in range(0, len(images), max(1, batch_size)):
            chunk = images[start : start + max(1, batch_size)]
            raw = self.run(np.concatenate([preprocess(img) for img in chunk]))
            out.extend(postprocess(raw[k], img.shape[1], img.shape[0]) for k, img in enumerate(chunk))
        return out


_PROCESS_MODELS: dict[tuple, NudeNetModel] = {}


def cached_model(model_path: str | os.PathLike | None, num_threads: int) -> NudeNetModel:
    """One model per process and settings, kept for the life of the process (worker processes reuse it
    for every batch they are given). Keyed by process id too: a forked child never uses its parent's
    session, whose thread pool did not survive the fork."""
    key = (os.getpid(), None if model_path is None else os.fspath(model_path), int(num_threads))
    model = _PROCESS_MODELS.get(key)
    if model is None:
        model = _PROCESS_MODELS[key] = NudeNetModel(model_path, num_threads)
    return model
