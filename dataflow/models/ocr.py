"""Text detection and recognition with RapidOCR (PP-OCRv6 det / rec and the PP-OCR direction classifier,
ONNX models shipped inside the ``rapidocr`` 3.x wheel, run by onnxruntime).

``detect_text(image, recognize)`` runs on an image dataflow already decoded (no second decode by the
library): every text region the detector finds, as 4-point polygons in the image's pixel coordinates, and
with ``recognize`` the recognised lines exactly as ``RapidOCR()(path)`` returns them. ``recognize=False``
runs the detector only (no crop, direction or recognition models): about 10% cheaper on photos, but the
detector alone also marks textures (fur, foliage) as text, which recognition then leaves out.

One engine per process, created on first use; the model paths are given to RapidOCR explicitly, so it
neither hashes nor downloads anything (its own default resolves each model through a download helper
that fetches a file whose checksum does not match). Its coloured log lines go to the ``dataflow.models.ocr``
logger at debug level. Resize policy: RapidOCR's defaults (longest side capped at 2000 px, the detector
scales the shortest side up to 736 px), unchanged; images more than 20:1 are not run (``detect_text``).
An onnxruntime session with its own thread pool does not survive a fork (the child hangs on its first
call): ``release_engines()`` before forking workers.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dataflow.log import get_logger

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

__all__ = ["MODEL_FILES", "OCRResult", "detect_text", "ocr_problem", "release_engines", "require_ocr"]

RAPIDOCR_VERSION = "3.10.0"  # what this wrapper was written and tested against
# The models rapidocr 3.10's default config (PP-OCRv6 small det / rec, PP-OCRv4 mobile cls) resolves to,
# all three shipped in its wheel's models/ folder.
MODEL_FILES = {
    "Det": "PP-OCRv6_det_small.onnx",
    "Cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
    "Rec": "PP-OCRv6_rec_small.onnx",
}

MAX_ASPECT = 20  # a longer side more than 20 times the shorter one is not run (see detect_text)

_LOG = get_logger("dataflow.models.ocr")
_ENGINES: dict[tuple[int, int], Any] = {}  # (pid, threads) -> RapidOCR: a forked worker builds its own
_LOCK = threading.Lock()  # an engine keeps per-call flags on itself: one call at a time per process


@dataclass(frozen=True)
class OCRResult:
    """What OCR found in one image (coordinates in the pixels of the image given).

    ``boxes`` (N, 4, 2) float32 and ``box_scores`` (N,): every text region the detector found, in reading
    order (top to bottom, then left to right). ``texts`` / ``text_scores`` / ``text_boxes``: the recognised
    lines, as ``RapidOCR()(image)`` returns them (regions whose text is empty or scores under
    RapidOCR's ``text_score`` 0.5 are left out); None when ``recognize=False``.
    """

    width: int
    height: int
    boxes: np.ndarray
    box_scores: np.ndarray
    texts: tuple[str, ...] | None = None
    text_scores: tuple[float, ...] | None = None
    text_boxes: np.ndarray | None = None

    @property
    def text(self) -> str:
        """The recognised lines joined by newlines ("" when none, or when nothing was recognised)."""
        return "\n".join(self.texts or ())


def _package_dir() -> Path | None:
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def model_paths() -> dict[str, Path]:
    """Where the three ONNX models are: the ``models/`` folder of the installed rapidocr package."""
    root = _package_dir()
    if root is None:
        return {}
    return {stage: root / "models" / name for stage, name in MODEL_FILES.items()}


def ocr_problem() -> str | None:
    """Why OCR cannot run here (one line), or None when it can; imports nothing heavy, loads no model."""
    from dataflow import install_hint

    for module in ("rapidocr", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({install_hint('ocr')})"
    missing = [str(p) for p in model_paths().values() if not p.is_file()]
    if missing:
        return (
            f"RapidOCR's ONNX models were not found (tried {', '.join(missing)}); they ship in the rapidocr "
            f"{RAPIDOCR_VERSION} wheel: reinstall it ({install_hint('ocr')})"
        )
    return None


def require_ocr() -> None:
    """Raise a one-line error when OCR cannot run (call it before mapping rows, so the error is not per row)."""
    problem = ocr_problem()
    if problem is None:
        return
    if "not installed" in problem:
        raise ImportError(problem)
    from dataflow.models.clip import ModelNotFoundError

    raise ModelNotFoundError(problem)


class _ToDebug(logging.Handler):
    """RapidOCR's records, re-emitted on our logger: info and warnings (a model path, "The text detection
    result is empty" for every image without text) at debug, errors as errors."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelno if record.levelno >= logging.ERROR else logging.DEBUG
        _LOG.log(level, "rapidocr: %s", record.getMessage())


def _quiet_rapidocr_logger() -> None:
    rapid = logging.getLogger("RapidOCR")  # rapidocr.utils.log: a colour StreamHandler, propagate=False
    for handler in list(rapid.handlers):
        if not isinstance(handler, _ToDebug):
            rapid.removeHandler(handler)
    if not any(isinstance(h, _ToDebug) for h in rapid.handlers):
        rapid.addHandler(_ToDebug())
    rapid.propagate = False


def _engine(threads: int | None):
    """This process's RapidOCR engine for ``threads`` onnxruntime threads (None: onnxruntime's default)."""
    key = (os.getpid(), int(threads or -1))
    engine = _ENGINES.get(key)
    if engine is not None:
        return engine
    require_ocr()
    from rapidocr import RapidOCR  # importing it creates the "RapidOCR" logger and its colour handler

    _quiet_rapidocr_logger()

    paths = model_paths()
    params = {f"{stage}.model_path": str(path) for stage, path in paths.items()}
    params["EngineConfig.onnxruntime.intra_op_num_threads"] = key[1]
    engine = RapidOCR(params=params)
    _ENGINES.clear()  # engines of a parent process (after fork) or other thread counts are not used again
    _ENGINES[key] = engine
    return engine


def release_engines() -> None:
    """Drop this process's engines (and their onnxruntime threads). Call it before forking workers: a
    child forked from a process whose onnxruntime session keeps a thread pool hangs on its first call."""
    import gc

    with _LOCK:
        _ENGINES.clear()
    gc.collect()  # the session's threads end with it, before any fork


def _bgr(image: Image.Image) -> np.ndarray:
    """The HWC uint8 BGR array RapidOCR expects for ndarray input (it uses a 3-channel ndarray as is),
    made as its own PIL path makes it (``cv2.cvtColor(np.array(img), COLOR_RGB2BGR)``)."""
    import cv2

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR)


def detect_text(image: Image.Image, recognize: bool = True, threads: int | None = None) -> OCRResult:
    """Text regions (and with ``recognize`` the recognised lines) of a decoded image.

    An image whose longer side is more than ``MAX_ASPECT`` (20) times its shorter side is not run and
    holds no text: RapidOCR's detector scales the short side up to 736 px, so a 1:200 strip would make a
    147,000 px-long input (and a 20000 x 10 one fails RapidOCR's own resize).

    ``threads``: onnxruntime intra-op threads for this process's engine (None: onnxruntime's default, one
    per core; worker processes should ask for ``cores // workers``).
    """
    from rapidocr.utils.process_img import map_boxes_to_original

    width, height = image.size
    if max(width, height) > MAX_ASPECT * max(1, min(width, height)):
        _LOG.debug("OCR skipped: %d x %d is more than %d:1", width, height, MAX_ASPECT)
        empty = np.zeros((0, 4, 2), dtype=np.float32)
        if not recognize:
            return OCRResult(width, height, empty, np.zeros(0, dtype=np.float32))
        return OCRResult(width, height, empty, np.zeros(0, dtype=np.float32), (), (), empty)
    bgr = _bgr(image)
    with _LOCK:
        engine = _engine(threads)
        # Flags are set on every call: RapidOCR keeps the last call's use_cls / use_rec on the engine.
        engine.update_params(use_det=True, use_cls=recognize, use_rec=recognize)
        # RapidOCR.__call__, step by step, so every detected region is kept (its output drops the regions
        # whose text it cannot read) while its own code builds the recognised lines.
        img, op_record = engine.preprocess_img(bgr)
        det, cls, rec, crops = engine.run_ocr_steps(img, op_record)
        raw = None if det.boxes is None else np.array(det.boxes, copy=True)
        scores = np.asarray(det.scores if det.scores is not None else [], dtype=np.float32)
        lines = engine.build_final_output(bgr, det, cls, rec, crops, op_record) if recognize else None
    if raw is None or len(raw) == 0:
        boxes = np.zeros((0, 4, 2), dtype=np.float32)
        scores = np.zeros(0, dtype=np.float32)
    else:
        boxes = map_boxes_to_original(raw, op_record, height, width).astype(np.float32)
    if not recognize:
        return OCRResult(width, height, boxes, scores)
    texts = tuple(lines.txts) if getattr(lines, "txts", None) is not None else ()
    text_scores = tuple(float(s) for s in lines.scores) if getattr(lines, "scores", None) is not None else ()
    text_boxes = (
        np.asarray(lines.boxes, dtype=np.float32).reshape(-1, 4, 2)
        if getattr(lines, "boxes", None) is not None and len(texts)
        else np.zeros((0, 4, 2), dtype=np.float32)
    )
    return OCRResult(width, height, boxes, scores, texts, text_scores, text_boxes)
