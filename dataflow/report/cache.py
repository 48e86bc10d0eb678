"""A cache folder read once for the report: manifests, rejected sidecars and the step file(s) with scores."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dataflow.log import get_logger
from dataflow.media.errors import REASONS as IMAGE_ERROR_REASONS
from dataflow.storage import cache_folder
from dataflow.storage.cache_folder import CacheFolderReadError, load_manifests
from dataflow.storage.formats import read_table

logger = get_logger("dataflow.report")

# Reasons that mean the row's image (or the row itself) could not be read: shown without a thumbnail.
UNREADABLE_REASONS = frozenset(IMAGE_ERROR_REASONS) | {"malformed_row"}
DUPLICATE_REASONS = ("exact_duplicate", "near_duplicate")

# Numeric columns that are identifiers, not scores.
_NOT_SCORES = {"id", "index", "idx", "row", "row_id", "group", "dup_group", "step", "label"}


class ReportError(ValueError):
    """The cache folder cannot be reported on (missing, empty, several pipelines and no prefix)."""


class ReportWriteError(ReportError):
    """The report file cannot be written where it was asked (or, by default, in a read-only cache folder)."""


@dataclass
class Table:
    """One file read from the cache: a step's rows or a step's rejected rows."""

    step: int
    kind: str  # "step" | "rejected"
    df: pd.DataFrame
    image_base: str | None
    _display: np.ndarray | None = field(default=None, repr=False)
    _arrays: dict = field(default_factory=dict, repr=False)

    def values(self, column: str) -> np.ndarray | None:
        """A column as a numpy object array, converted once (row access without pandas overhead)."""
        if column not in self._arrays:
            self._arrays[column] = self.df[column].to_numpy(dtype=object) if column in self.df.columns else None
        return self._arrays[column]

    def display_images(self, image_key: str) -> np.ndarray:
        """The image column as display strings (paths; dicts by their path)."""
        if self._display is None:
            if image_key not in self.df.columns:
                self._display = np.array([f"<row {i}>" for i in range(len(self.df))], dtype=object)
            else:
                col = self.df[image_key]
                if col.dtype == object and not all(isinstance(v, str) for v in col.head(64)):
                    self._display = np.array([display_image(v) for v in col.tolist()], dtype=object)
                else:
                    self._display = col.astype(str).to_numpy(dtype=object)
        return self._display


@dataclass
class Threshold:
    column: str
    step: int
    operator: str
    param: str
    side: str  # min | max | dup
    value: float

    @property
    def label(self) -> str:
        return f"{self.param} {fmt_number(self.value)}"


@dataclass
class CacheView:
    """Everything the report needs from one pipeline's cache folder."""

    path: Path
    prefix: str
    manifests: dict[int, dict]
    image_key: str
    text_key: str | None
    steps: dict[int, Table]
    rejected: dict[int, Table]
    last_step: int

    @classmethod
    def open(
        cls,
        cache_path: str | os.PathLike,
        prefix: str | None = None,
        *,
        read_steps: bool = True,
        columns_of_rejected: list[str] | None = None,
    ) -> CacheView:
        cache = Path(cache_path)
        if not cache.is_dir():
            raise ReportError(f"no such cache folder: {cache}")
        prefix = prefix or only_prefix(cache)
        manifests = load_manifests(cache, prefix)
        if not manifests:
            raise ReportError(f"{cache} holds no step manifests for prefix {prefix!r} ({prefix}_step<N>.meta.json)")
        written = [s for s, m in manifests.items() if m.get("file") and (cache / m["file"]).exists()]
        last = max(written) if written else max(manifests)
        image_key = _first_key(manifests, ("input_image_key",)) or "image"
        text_key = _first_key(manifests, ("input_text_key", "input_caption_key"))
        view = cls(cache, prefix, manifests, image_key, text_key, {}, {}, last)
        for step, meta in manifests.items():  # every sidecar, once
            name = meta.get("rejected_file")
            if name and (cache / name).exists():
                df = _read_or_skip(cache / name, f"step {step}'s rejected rows", _read_jsonl)
                if df is not None:
                    view.rejected[step] = Table(step, "rejected", df, meta.get("image_base"))
        if read_steps and written:
            view._read_step_files(written)
        if view.text_key is None:
            cols = set(view.columns_of(last))
            view.text_key = next((c for c in ("caption", "text", "prompt") if c in cols), None)
        return view

    # ------------------------------------------------------------ reading
    def columns_of(self, step: int) -> list[str]:
        meta = self.manifests.get(step) or {}
        if step in self.steps:
            return [str(c) for c in self.steps[step].df.columns]
        return [str(c) for c in meta.get("columns") or []]

    def _read_step_files(self, written: list[int]) -> None:
        """Read the last step, and an earlier step only for columns the later steps no longer hold."""
        seen: dict[str, int] = {}
        for step in sorted(written, reverse=True):
            for col in self.manifests[step].get("columns") or []:
                seen.setdefault(str(col), step)
        wanted: dict[int, list[str]] = {self.last_step: []}
        for col, step in seen.items():
            wanted.setdefault(step, []).append(col)
        for step, cols in sorted(wanted.items()):
            meta = self.manifests[step]
            base = {self.image_key, "image_error"} | ({self.text_key} if self.text_key else set())
            read = functools.partial(
                _read_scalar_columns,
                kind=meta.get("cache_type") or "jsonl",
                cols=set(cols),
                base=base,
                everything=step == self.last_step,
            )
            df = _read_or_skip(self.path / meta["file"], f"step {step}'s rows", read)
            if df is not None:
                self.steps[step] = Table(step, "step", df, meta.get("image_base"))

    def image_base(self, step: int) -> str | None:
        meta = self.manifests.get(step) or {}
        base = meta.get("image_base")
        if base:
            return base
        entry = meta.get("first_entry_file_name")
        return str(Path(entry).parent) if entry else str(self.path)

    def operator(self, step: int) -> str:
        return str((self.manifests.get(step) or {}).get("operator", "?"))

    # ------------------------------------------------------------ derived facts
    def group_keys(self) -> set[str]:
        keys = {"dup_group"}
        for meta in self.manifests.values():
            for k, v in (meta.get("output_keys") or {}).items():
                if "group" in k and isinstance(v, str):
                    keys.add(v)
        return keys

    def thresholds(self) -> dict[str, list[Threshold]]:
        """Threshold parameters of the filters, by the score column they act on.

        Each manifest records the thresholds its operator declares (``Operator.thresholds``), resolved
        for that call, so user operators are drawn like built-ins and nothing here knows an operator.
        """
        out: dict[str, list[Threshold]] = {}
        for step, meta in self.manifests.items():
            op = str(meta.get("operator", ""))
            for t in meta.get("thresholds") or []:
                if isinstance(t, dict) and isinstance(t.get("column"), str) and _is_number(t.get("value")):
                    out.setdefault(t["column"], []).append(
                        Threshold(
                            t["column"], step, op, str(t.get("param", "")), str(t.get("side", "min")), float(t["value"])
                        )
                    )
        return out

    def pair_views(self) -> dict[int, dict]:
        """Per step, the rejected-row columns its operator declared for showing a verified pair
        (``Operator.pair_view``, recorded under the manifest's ``notes``): ``{"box": column, "facts": [...]}``.
        Only steps whose rejected rows hold that box column."""
        out = {}
        for step, meta in self.manifests.items():
            view = (meta.get("notes") or {}).get("pair_view") if isinstance(meta.get("notes"), dict) else None
            tab = self.rejected.get(step)
            if not isinstance(view, dict) or not isinstance(view.get("box"), str) or tab is None:
                continue
            if view["box"] in tab.df.columns and "duplicate_of" in tab.df.columns:
                facts = [str(f) for f in view.get("facts") or [] if isinstance(f, str)]
                out[step] = {"box": view["box"], "facts": facts}
        return out


def display_image(value: Any) -> str:
    """How an image cell is shown: its path; a dict by its path; bytes as a marker."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        path = value.get("path")
        return str(path) if isinstance(path, str) and path else "<embedded bytes>"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "<embedded bytes>"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "<none>"
    return str(value)


def numeric_values(s: pd.Series) -> np.ndarray | None:
    """The column as float64 with NaN for missing values, or None when it is not a numeric score column."""
    dtype = s.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return None
    if pd.api.types.is_numeric_dtype(dtype):
        return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    if dtype is np.dtype(object):
        head = [v for v in s.head(2000).tolist() if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if head and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            for v in head[:200]
        ):
            return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return None


def is_score_name(name: str, group_keys: set[str]) -> bool:
    low = name.lower()
    return not (low in _NOT_SCORES or low.endswith("_id") or name in group_keys)


def fmt_number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    value = float(value)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if abs(value) >= 1e4 and abs(value) < 1e15:
        return f"{value:,.0f}"
    if value == int(value):
        return str(int(value))
    return f"{value:.4g}"


def only_prefix(cache: Path) -> str:
    """The one pipeline prefix in ``cache``; none, or several, is a ``ReportError``."""
    try:
        return cache_folder.only_prefix(cache)
    except CacheFolderReadError as exc:
        raise ReportError(str(exc)) from None


def _first_key(manifests: dict[int, dict], names: tuple[str, ...]) -> str | None:
    for meta in manifests.values():
        keys = meta.get("input_keys") or {}
        for name in names:
            if isinstance(keys.get(name), str) and keys[name]:
                return keys[name]
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _read_scalar_columns(path: Path, kind: str, cols: set[str], base: set[str], *, everything: bool) -> pd.DataFrame:
    """Read a step file: the image, caption and error columns plus the numeric ones among ``cols`` (all numeric
    columns with ``everything``). Parquet reads only those columns, never embeddings or other lists."""
    if kind != "parquet":
        df = _read_jsonl(path) if kind == "jsonl" else read_table(path, kind)[0]
        return df if everything else df[[c for c in df.columns if c in cols or c in base]]
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    schema = pads.dataset(path, format="parquet").schema  # a file, or a Ray step's folder of shards
    cols = []
    for f in schema:
        numeric = pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
        if f.name in base or (numeric and (everything or f.name in cols)):
            cols.append(f.name)
    table = pq.read_table(path, columns=cols)
    return table.to_pandas(integer_object_nulls=False)


def _read_jsonl(path: Path) -> pd.DataFrame:
    """A JSON lines file of the cache, its malformed lines left out with one warning (a report still shows the
    rest)."""
    df, bad = read_table(path, "jsonl", skip_malformed=True)
    if bad:
        logger.warning(
            "the report leaves out %d malformed line(s) of %s (first: line %s)", len(bad), path, bad[0].get("line", "?")
        )
    return df


def _read_or_skip(path: Path, what: str, read) -> pd.DataFrame | None:
    """``read(path)``, or None with a one-line warning when the file cannot be read (the report goes on)."""
    try:
        return read(path)
    except (OSError, ValueError) as exc:  # StorageFormatError, pandas' and pyarrow's errors are ValueErrors
        logger.warning("the report leaves out %s: %s: %s", what, path, getattr(exc, "strerror", None) or exc)
        return None
