"""ImageNSFWEvaluator: NudeNet's body-part detections per image, and the best explicit one as ``nsfw_score``."""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.evaluator import ImageEvaluator
from dataflow.core.images import image_column
from dataflow.core.parallel import MIN_ITEMS_FOR_POOL, ItemResult, _Guarded, resolve_workers, worker_pool
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.log import progress
from dataflow.media import DEFAULT_MAX_PIXELS, load_image

# NudeNet's classes that show nudity: exposed genitals, female breasts, buttocks and anus. Its other
# "exposed" classes (male breast, belly, armpits, feet) are ordinary in swimwear and sports photos, and
# faces and covered parts are not nudity at all; they are still listed in nsfw_classes.
EXPLICIT_CLASSES = (
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)
# NudeNet keeps no detection under this score (its NMS score threshold).
NUDENET_MIN_SCORE = 0.25


def check_classes(classes: Iterable[str] | None) -> tuple[str, ...]:
    """The class set a score is taken over (None: ``EXPLICIT_CLASSES``), each one of NudeNet's labels."""
    from dataflow.models.nudenet import LABELS

    if classes is None:
        return EXPLICIT_CLASSES
    if isinstance(classes, str):
        classes = [classes]
    chosen = tuple(dict.fromkeys(classes))
    unknown = [c for c in chosen if c not in LABELS]
    if unknown or not chosen:
        raise ValueError(f"unsafe_classes must be NudeNet labels, got {unknown or 'none'}; labels: {', '.join(LABELS)}")
    return chosen


def check_score(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def nsfw_score(detections: Sequence[dict], classes: Iterable[str] = EXPLICIT_CLASSES) -> float:
    """The highest score among ``detections`` of ``classes``; 0.0 when there is none."""
    wanted = set(classes)
    return max((float(d["score"]) for d in detections if d["class"] in wanted), default=0.0)


def decode_for_nudenet(source, base_dir: str | None, max_pixels: int | None) -> tuple[np.ndarray, int, int]:
    """The model input of one image and the image's width and height. The image is decoded upright at full
    size: nudenet reads the whole file too, and a JPEG draft decode would change the pixels it resizes."""
    from dataflow.models.nudenet import preprocess

    rgb = np.asarray(load_image(source, base_dir, max_pixels=max_pixels))
    return preprocess(rgb), rgb.shape[1], rgb.shape[0]


def detect_batch(
    sources: Sequence,
    *,
    base_dir: str | None,
    model_path: str | None,
    num_threads: int,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> list[ItemResult]:
    """NudeNet's detections for each source (``ItemResult.value``: a list of detection dicts), or the
    reason its image could not be read; the readable ones go through the model in one call.
    Module-level so worker processes can run it; each process keeps its own model."""
    from dataflow.models.nudenet import cached_model, postprocess

    decoded = [_Guarded(decode_for_nudenet, {"base_dir": base_dir, "max_pixels": max_pixels})(s) for s in sources]
    good = [r.value for r in decoded if r.error is None]
    if not good:
        return decoded
    raw = cached_model(model_path, num_threads).run(np.concatenate([blob for blob, _, _ in good]))
    found = iter(postprocess(raw[k], width, height) for k, (_, width, height) in enumerate(good))
    return [ItemResult(next(found)) if r.error is None else r for r in decoded]


def detect_rows(
    sources: Sequence,
    base_dir: str | None,
    *,
    model_path: str | None,
    batch_size: int,
    num_workers: int | None,
    num_threads: int | None,
    desc: str,
) -> list[ItemResult]:
    """:func:`detect_batch` over every source, in batches of ``batch_size``, in worker processes (each
    decoding, preprocessing and running its own single-threaded model) when there are enough images."""
    from dataflow.models.nudenet import resolve_model_path

    if not len(sources):
        return []
    path = os.fspath(resolve_model_path(model_path))  # a missing model is one clear error, before any worker
    size = max(1, int(batch_size))
    batches = [sources[i : i + size] for i in range(0, len(sources), size)]
    workers = min(resolve_workers(num_workers), max(1, len(batches)))
    pooled = workers > 1 and len(sources) >= MIN_ITEMS_FOR_POOL
    # One process: its model may use every core. Several: one thread each, the processes share the cores.
    threads = int(num_threads) if num_threads else (1 if pooled else resolve_workers(None))
    run = functools.partial(detect_batch, base_dir=base_dir, model_path=path, num_threads=threads)
    out: list[ItemResult] = []
    bar = progress(total=len(sources), desc=desc)
    try:
        if not pooled:
            for batch in batches:
                out.extend(run(batch))
                bar.update(len(batch))
        else:
            # Imported once here, so forked workers inherit them instead of each importing its own.
            for module in ("onnxruntime", "cv2"):
                importlib.import_module(module)
            with worker_pool(workers) as pool:
                for results in pool.map(run, batches, chunksize=1):
                    out.extend(results)
                    bar.update(len(results))
    finally:
        bar.close()
    return out


@OPERATOR_REGISTRY.register()
class ImageNSFWEvaluator(ImageEvaluator):
    """Adds ``nsfw_score`` (0-1) and ``nsfw_classes`` from NudeNet's body-part detector (the ONNX model
    shipped in the `nudenet` package).

    ``nsfw_classes`` is the list of NudeNet's detections of the image, best first, each
    ``{"class": NudeNet label, "score": 0-1, "box": [x, y, width, height]}`` in pixels of the upright
    image: exactly what ``nudenet.NudeDetector().detect(path)`` returns (a list of flat records, so it
    reads back the same from JSONL and from Parquet). It lists every class NudeNet detects, faces and
    covered parts too; ``[]`` when nothing is detected. ``nsfw_score`` is the highest score among the
    detections of ``unsafe_classes``, by default NudeNet's explicit ones: ``FEMALE_GENITALIA_EXPOSED``,
    ``MALE_GENITALIA_EXPOSED``, ``FEMALE_BREAST_EXPOSED``, ``BUTTOCKS_EXPOSED`` and ``ANUS_EXPOSED``
    (its other exposed classes, male breast, belly, armpits and feet, are ordinary in swimwear and
    sport photos); 0.0 when none is detected. Filter on it with ``ImageNSFWFilter``. Rows with an
    unreadable image get null columns and an ``image_error`` reason.

    NudeNet is a small detector with false positives: on the 363 COCO photos under ../shared/data
    (a general collection) 11 get a nonzero score and 2 a score above 0.5, the highest 0.73 for a bowl
    of green apples.

    Differences from nudenet's `NudeDetector().detect(path)`:

    - the image is decoded once, by dataflow's loader (paths, bytes, `{bytes, path}` dicts, tar
      members), upright by its EXIF orientation as OpenCV's `imread` does; the preprocessing and
      postprocessing are nudenet's, so the detections are equal to nudenet's (checked on 519 test
      files nudenet can read: COCO photos, camera JPEGs and TIFFs with EXIF orientations, PNG, WebP,
      BMP, PBM/PGM/PPM); transparent pixels count as white (OpenCV reads the colour under them), OpenCV
      and Pillow may decode rare formats (CMYK JPEG, 16-bit) differently, and HEIC, GIF and other
      files OpenCV cannot read are scored too (nudenet fails on them);
    - only the image and one row and column of the square padding are resized, with the same scale,
      giving the same model input without the padded square in memory (a 20000 x 10 strip would be a
      1.2 GB array);
    - images run `batch_size` at a time per model call, in `num_workers` processes that each decode and
      run a single-threaded model (nudenet: one image per call, one process, onnxruntime's threads);
    - `min_detection_score` can drop weak detections from both columns (nudenet's floor is 0.25).

    Parameters:
        unsafe_classes: NudeNet labels whose detections make up `nsfw_score`; None = the five
            explicit classes above
        min_detection_score: detections scoring below this are left out of both columns; NudeNet keeps
            none under 0.25, so values up to 0.25 change nothing
        model_path: a NudeNet `.onnx` file; None = `320n.onnx` shipped in the installed `nudenet` package
        batch_size: images per model call
        num_workers: worker processes that decode and detect; None = one per CPU core (inputs under 48
            images run in-process)
        num_threads: onnxruntime intra-op threads per model; None = 1 in each worker process, every
            core when the work runs in one process
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        output_score_key: column the score is written to
        output_classes_key: column the list of detections is written to
    """

    description = "NudeNet body-part detections (ONNX, shipped in the nudenet wheel) -> nsfw_score and nsfw_classes."
    description_zh = (
        "用 NudeNet 人体部位检测模型（nudenet 包自带的 ONNX）写出 nsfw_score 分数与检测到的类别列表 nsfw_classes。"
    )
    loads_model = True
    model_params = {"model_path": "nudenet"}
    columns = ("nsfw_score", "nsfw_classes")
    object_columns = frozenset({"nsfw_classes"})
    renames = {"nsfw_score": "output_score_key", "nsfw_classes": "output_classes_key"}

    example = Example.on_example_data(
        "ImageNSFWEvaluator",
        """
        op = ImageNSFWEvaluator()
        op.run(storage.step(), input_image_key="image", output_score_key="nsfw_score")
        """,
        show=["image", "nsfw_score", "nsfw_classes", "image_error"],
        rows=["images/scene_00.jpg", "images/scene_01.jpg", "images/missing.jpg"],
        digits=3,
        note="The example photos hold no people: NudeNet detects nothing and every readable row scores 0.",
    )

    def __init__(
        self,
        unsafe_classes: list[str] | None = None,
        min_detection_score: float = NUDENET_MIN_SCORE,
        model_path: str | None = None,
        batch_size: int = 8,
        num_workers: int | None = None,
        num_threads: int | None = None,
    ):
        self.unsafe_classes = check_classes(unsafe_classes)
        self.min_detection_score = check_score("min_detection_score", min_detection_score)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model_path = model_path
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.num_threads = num_threads

    def detections(self, df: pd.DataFrame, base_dir: str, image_key: str) -> list[ItemResult]:
        """Per row, the detections kept (``min_detection_score``), or why the image was unreadable."""
        sources = image_column(df, image_key, type(self).__name__)
        results = detect_rows(
            sources,
            base_dir,
            model_path=self.model_path,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            num_threads=self.num_threads,
            desc=type(self).__name__,
        )
        low = self.min_detection_score
        return [r if r.error is not None else ItemResult([d for d in r.value if d["score"] >= low]) for r in results]

    def score_rows(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        return [
            r
            if r.error is not None
            else ItemResult({"nsfw_score": nsfw_score(r.value, self.unsafe_classes), "nsfw_classes": r.value})
            for r in self.detections(df, base_dir, keys["input_image_key"])
        ]

    def run(
        self,
        storage,
        input_image_key: str = "image",
        output_score_key: str = "nsfw_score",
        output_classes_key: str = "nsfw_classes",
    ) -> list[str]:
        return self.evaluate(
            storage,
            input_image_key=input_image_key,
            output_score_key=output_score_key,
            output_classes_key=output_classes_key,
        )
