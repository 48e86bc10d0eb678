"""FileStorage: every step of a pipeline as a readable file, with a manifest and a rejected-rows sidecar."""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import orjson
import pandas as pd

from dataflow.storage.atomic import atomic_path
from dataflow.storage.formats import check_cache_type, read_columns, read_table, write_table
from dataflow.storage.inputs import HF, WEBDATASET, input_base, input_kind, read_input
from dataflow.storage.lock import cache_folder_error
from dataflow.storage.manifest import (
    StorageError,
    check_accounting,
    path_fingerprint,
    read_manifest,
    step_manifest,
    write_manifest,
)
from dataflow.storage.provenance import PROVENANCE_COLUMNS, keep_user_columns

__all__ = ["CallInfo", "FileStorage", "StorageError"]


@dataclass
class CallInfo:
    """What the running operator tells the storage, so the manifest can say who wrote a step."""

    operator: str
    params: dict = field(default_factory=dict)
    input_keys: dict = field(default_factory=dict)
    output_keys: dict = field(default_factory=dict)
    fingerprint: str = ""
    started: float = field(default_factory=time.perf_counter)
    keeps_rows: bool = True  # False for operators allowed to change the row count freely (generate)
    thresholds: list = field(default_factory=list)  # resolved ``Threshold`` declarations, for the report


class FileStorage:
    """Step-by-step storage of a DataFrame on disk, mirroring DataFlow's ``FileStorage``.

    Step 0 is ``first_entry_file_name`` (a jsonl/json/csv/parquet file or a folder of images); step N is
    ``<cache_path>/<file_name_prefix>_step<N>.<cache_type>``. ``step()`` moves to the next step; ``read()``
    reads the current one and ``write()`` writes the next, atomically, with a manifest.
    """

    def __init__(
        self,
        first_entry_file_name: str | os.PathLike,
        cache_path: str | os.PathLike = "./cache",
        file_name_prefix: str = "dataflow_cache_step",
        cache_type: str = "jsonl",
        *,
        image_key: str = "image",
        skip_malformed_rows: bool = False,
    ):
        self.first_entry_file_name = os.fspath(first_entry_file_name)
        self.cache_path = os.fspath(cache_path)
        self.file_name_prefix = file_name_prefix
        self.cache_type = check_cache_type(cache_type)
        self.image_key = image_key
        self.skip_malformed_rows = skip_malformed_rows
        self.operator_step = -1
        self._call: CallInfo | None = None
        self._rows_in: int | None = None
        self._columns_in: list[str] | None = None
        self._malformed: list[dict] = []
        self._read_frame: pd.DataFrame | None = None
        self._input_fingerprint: str | None = None
        self._read_dicts: list[dict] | None = None

    # ------------------------------------------------------------ positions and paths
    @property
    def input_kind(self) -> str:
        return input_kind(self.first_entry_file_name)

    @property
    def image_base(self) -> str:
        """Folder that relative image paths resolve against: the input file's folder (or the image folder;
        for WebDataset shards the shard folder, the ``.tar``'s folder or a pattern's common folder)."""
        return input_base(self.first_entry_file_name)

    def step(self) -> FileStorage:
        """Advance to the next step and return a storage positioned there (DataFlow semantics)."""
        self.operator_step += 1
        return copy.copy(self)

    def reset(self) -> None:
        """Back to before the first step, so a pipeline's ``forward()`` starts from the input again."""
        self.operator_step = -1

    def step_path(self, step: int) -> Path:
        return Path(self.cache_path) / f"{self.file_name_prefix}_step{step}.{self.cache_type}"

    def manifest_path(self, step: int) -> Path:
        return Path(self.cache_path) / f"{self.file_name_prefix}_step{step}.meta.json"

    def rejected_path(self, step: int) -> Path:
        return Path(self.cache_path) / f"{self.file_name_prefix}_step{step}.rejected.jsonl"

    def manifest(self, step: int) -> dict | None:
        return read_manifest(self.manifest_path(step))

    def step_fingerprint(self, step: int) -> str | None:
        """Fingerprint of the data at ``step``: the input's for step 0, the manifest's after."""
        if step == 0:
            return path_fingerprint(self.first_entry_file_name, self.image_key)
        meta = self.manifest(step)
        return meta.get("fingerprint") if meta else None

    def step_is_complete(self, step: int, expected_fingerprint: str) -> bool:
        meta = self.manifest(step)
        if not meta or meta.get("fingerprint") != expected_fingerprint or not self.step_path(step).exists():
            return False
        # A step whose rejected rows were deleted is not complete: rerunning it writes them again.
        return not meta.get("rejected_file") or self.rejected_path(step).exists()

    def begin(self, call: CallInfo) -> None:
        """An operator call opens the step it is about to write: its manifest names ``call``."""
        self._call = call

    # ------------------------------------------------------------ reading
    def read(self, output_type: Literal["dataframe", "dict"] = "dataframe") -> pd.DataFrame | list[dict]:
        """Read the current step as a DataFrame or a list of dicts."""
        if self.operator_step < 0:
            raise StorageError(
                "read() before step(): call storage.step() first (each operator reads the step "
                "it is handed and writes the next)"
            )
        df = self._read_step(self.operator_step)
        self._rows_in = len(df) + len(self._malformed)
        self._columns_in = list(df.columns)
        self._read_frame, self._read_dicts = None, None
        if output_type == "dataframe":
            self._read_frame = df
            return df
        if output_type == "dict":
            self._read_dicts = df.to_dict("records")
            return self._read_dicts
        raise ValueError(f"output_type must be 'dataframe' or 'dict', got {output_type!r}")

    def _read_step(self, step: int) -> pd.DataFrame:
        self._malformed = []
        # What the step is about to see, fingerprinted before it is read: an input that changes during
        # the step (rows appended) then no longer matches, and the next run redoes the step.
        self._input_fingerprint = self.step_fingerprint(step)
        if step == 0:
            df, self._malformed = read_input(
                self.first_entry_file_name, self.input_kind, self.image_key, skip_malformed=self.skip_malformed_rows
            )
            return df
        path = self.step_path(step)
        if not path.exists():
            raise StorageError(
                f"step {step} has not been written: {path} does not exist (did the operator of step {step} run?)"
            )
        df = read_table(path, self.cache_type)[0]
        if not len(df):  # JSON and CSV files of zero rows lose their columns; the manifest has them
            columns = (self.manifest(step) or {}).get("columns") or []
            df = df.reindex(columns=[*df.columns, *(c for c in columns if c not in df.columns)])
        return df

    def read_columns(self, step: int | None = None) -> list[str]:
        """Column names of a step from its header only (used by ``compile()``)."""
        step = self.operator_step if step is None else step
        if step <= 0:
            kind = self.input_kind
            if kind == "folder":
                return [self.image_key]
            if kind == WEBDATASET:
                from dataflow.storage.webdataset import shard_columns

                return shard_columns(self.first_entry_file_name, self.image_key)
            if kind == HF:
                from dataflow.storage.hf_input import hf_columns

                return hf_columns(self.first_entry_file_name)
            return read_columns(self.first_entry_file_name, kind)
        meta = self.manifest(step)
        if meta and "columns" in meta:
            return list(meta["columns"])
        return read_columns(self.step_path(step), self.cache_type)

    # ------------------------------------------------------------ writing
    def write(self, data: pd.DataFrame | list[dict], rejected: pd.DataFrame | list[dict] | None = None) -> str:
        """Write the next step. ``rejected`` rows (with a ``reason`` column) go to the sidecar file.

        A row-keeping operator that writes a subset of what it read and passes no ``rejected`` (DataFlow's
        ``storage.write(df[mask])``) loses nothing: the rows that disappeared are recorded in the sidecar
        with reason ``filtered_by_<Operator>``. Raises ``StorageError`` if rows in != rows out + rows
        rejected otherwise.
        """
        if self.operator_step < 0:
            raise StorageError("write() before step(): call storage.step() first")
        call = self._call or CallInfo(operator="manual")
        rows = None if isinstance(data, pd.DataFrame) else list(data)
        df = data if rows is None else pd.DataFrame(rows)
        rej = _as_frame(rejected)
        if len(rej) and "reason" not in rej.columns:
            raise StorageError("rejected rows need a 'reason' column saying why each row was dropped")
        if rejected is None and call.keeps_rows and self._rows_in is not None:
            rej = disappeared_rows(self._read_frame, self._read_dicts, df if rows is None else rows, call.operator)
        if self._malformed:
            rej = pd.concat([rej, pd.DataFrame(self._malformed)], ignore_index=True)
        if self._rows_in is not None and call.keeps_rows:
            check_accounting(call.operator, self._rows_in, len(df), len(rej))

        out_step = self.operator_step + 1
        target, rej_target = self.step_path(out_step), self.rejected_path(out_step)
        entry = Path(self.first_entry_file_name)
        if entry.is_file() and any(p.exists() and p.samefile(entry) for p in (target, rej_target)):
            raise StorageError(
                f"writing step {out_step} to {target} would overwrite the input "
                f"{self.first_entry_file_name}; move the input out of the cache folder or "
                "choose another file_name_prefix"
            )
        try:
            Path(self.cache_path).mkdir(parents=True, exist_ok=True)
            # The old manifest goes first: from here until the new one lands, the step counts as unfinished.
            self.manifest_path(out_step).unlink(missing_ok=True)
            with atomic_path(target) as tmp:
                write_table(df, tmp, self.cache_type)
            if len(rej):
                with atomic_path(rej_target) as tmp:
                    write_table(rej, tmp, "jsonl")
            else:
                rej_target.unlink(missing_ok=True)
            write_manifest(
                self.manifest_path(out_step),
                step_manifest(
                    call,
                    step=out_step,
                    rows_in=self._rows_in,
                    rows_out=len(df),
                    rows_rejected=len(rej),
                    rejected_reasons=rej["reason"].value_counts().to_dict() if len(rej) else {},
                    input_fingerprint=self._read_fingerprint() or "",
                    columns=list(df.columns),
                    columns_in=self._columns_in or [],
                    file=target.name,
                    rejected_file=rej_target.name if len(rej) else None,
                    cache_type=self.cache_type,
                    first_entry_file_name=self.first_entry_file_name,
                    image_base=self.image_base,
                ),
            )
        except OSError as exc:
            raise cache_folder_error(Path(self.cache_path), exc) from exc
        return str(target)

    def _read_fingerprint(self) -> str | None:
        """The fingerprint of the current step as ``read()`` saw it (now, when it was not read)."""
        read = self._input_fingerprint if self._rows_in is not None else None
        return read or self.step_fingerprint(self.operator_step)

    def read_rejected(self, step: int) -> pd.DataFrame:
        """The rows dropped when ``step`` was written (empty if none)."""
        path = self.rejected_path(step)
        return read_table(path, "jsonl")[0] if path.exists() else pd.DataFrame(columns=["reason"])

    def __repr__(self) -> str:
        return (
            f"FileStorage({self.first_entry_file_name!r}, cache_path={self.cache_path!r}, "
            f"file_name_prefix={self.file_name_prefix!r}, cache_type={self.cache_type!r}, "
            f"step={self.operator_step})"
        )


def disappeared_rows(
    read_frame: pd.DataFrame | None, read_dicts: list[dict] | None, written: pd.DataFrame | list[dict], operator: str
) -> pd.DataFrame:
    """The rows read but not written (DataFlow's ``storage.write(df[mask])``), with reason
    ``filtered_by_<operator>``, when the written rows can be matched to them: by index for a frame (the
    ``read_frame`` handed out), by identity for the dicts ``read("dict")`` handed out (``read_dicts``).
    Empty when they cannot. Every storage that implements the idiom calls this."""
    reason = f"filtered_by_{operator}"
    if isinstance(written, pd.DataFrame) and read_frame is not None:
        source = read_frame
        if len(written) >= len(source) or not written.index.is_unique or not source.index.is_unique:
            return pd.DataFrame()
        if not written.index.isin(source.index).all():
            return pd.DataFrame()
        gone = source[~source.index.isin(written.index)].copy()
    elif isinstance(written, list) and read_dicts is not None:
        kept = {id(row) for row in written}
        if len(kept) >= len(read_dicts) or not kept <= {id(row) for row in read_dicts}:
            return pd.DataFrame()
        gone = pd.DataFrame([row for row in read_dicts if id(row) not in kept])
    else:
        return pd.DataFrame()
    gone = keep_user_columns(gone, PROVENANCE_COLUMNS)
    gone["reason"] = reason
    gone["detail"] = f"not in the rows {operator} wrote"
    return gone.reset_index(drop=True)


def _as_frame(rows: pd.DataFrame | list[dict] | None) -> pd.DataFrame:
    if rows is None:
        return pd.DataFrame()
    return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))


def dumps_row(row: dict) -> str:
    """One row as JSON text for terminal display; image bytes as a short placeholder, not base64."""
    shown = {k: _shown(v) for k, v in row.items()}
    return orjson.dumps(shown, option=orjson.OPT_SERIALIZE_NUMPY, default=str).decode()


def _shown(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        from dataflow.media.loader import _magic_format

        data = bytes(value[:16])
        size = len(value)
        unit = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} KB" if size >= 1e3 else f"{size} B"
        return f"<{(_magic_format(data) or 'bytes').lower()}, {unit}>"
    if isinstance(value, dict):
        return {k: _shown(v) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.dtype == object:  # a Parquet list of strings or structs
        return [_shown(v) for v in value.tolist()]
    return value
