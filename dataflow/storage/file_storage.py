"""FileStorage: every step of a pipeline as a readable file, with a manifest and a rejected-rows sidecar."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import orjson
import pandas as pd

from dataflow.storage.atomic import atomic_path
from dataflow.storage.base import DataFlowStorage
from dataflow.storage.chunks import DEFAULT_CHUNK_ROWS, ChunkedSteps, check_chunk_rows
from dataflow.storage.formats import check_cache_type, read_columns, read_table, write_table
from dataflow.storage.image_paths import (
    MISSING,
    SAMPLE,
    TABLE_KINDS,
    ImageBase,
    fallback_files,
    image_base_of,
    missing_error,
    named_files,
)
from dataflow.storage.inputs import HF, WEBDATASET, input_kind, read_input
from dataflow.storage.journal import RowJournal, journal_paths
from dataflow.storage.lock import cache_folder_error
from dataflow.storage.manifest import (
    StorageError,
    check_accounting,
    fingerprint,
    path_fingerprint,
    read_manifest,
    step_manifest,
    write_manifest,
)
from dataflow.storage.provenance import PROVENANCE_COLUMNS, keep_user_columns
from dataflow.storage.score_cache import ScoreCache, cache_location, open_cache

__all__ = ["CallInfo", "FileStorage", "PendingStep", "StepOrderError", "StorageError", "UnsupportedDataError"]

EMPTY = "empty"  # the kind of ``first_entry_file_name=""``: no input, step 0 is an empty frame (DataFlow)
ERROR_COLUMN = "image_error"  # where evaluators put an unreadable image's reason (dataflow.core.images)


class StepOrderError(StorageError, ValueError):
    """``read()`` or ``write()`` before ``step()`` (a ``ValueError`` as in DataFlow, and a ``StorageError``)."""


class UnsupportedDataError(StorageError, ValueError):
    """``write()`` was handed something other than a DataFrame or a list of row dicts. DataFlow raises
    ``ValueError("Unsupported data type: <type>")``; this is one, with the same words first."""


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
    notes: dict = field(default_factory=dict)  # what the operator said about its run (``storage.note``)


@dataclass
class PendingStep:
    """A step checked and ready to be written (``FileStorage.prepare_write``), not on disk yet."""

    step: int
    frame: pd.DataFrame
    rejected: pd.DataFrame
    manifest: dict
    rows_in: int | None
    missing: int = 0  # rows whose image this call found missing (rejected, or written with that image_error)
    missing_before: int = 0  # rows that came in already marked missing by an earlier step
    image_key: str = "image"
    examples: list = field(default_factory=list)  # a few files the image column names, for the error message


class FileStorage(ChunkedSteps, DataFlowStorage):
    """Step-by-step storage of a DataFrame on disk, mirroring DataFlow's ``FileStorage``.

    Step 0 is ``first_entry_file_name`` (a jsonl/json/csv/parquet/xlsx file, a folder of images, or ``""``
    for no input: an empty frame, as DataFlow's generator pipelines start); step N is
    ``<cache_path>/<file_name_prefix>_step<N>.<cache_type>``. ``step()`` moves to the next step; ``read()``
    reads the current one and ``write()`` writes the next, atomically, with a manifest. A folder input
    lists its subfolders' images too unless ``recursive=False``.

    In a pipeline, each row-wise operator call runs over ``chunk_rows`` rows at a time, and each finished
    chunk is kept on disk, so a step killed half way resumes after its last chunk and memory stays that
    of a chunk (:mod:`dataflow.storage.chunks`); ``chunk_rows=None`` runs every call over the whole step.
    Evaluators keep what they computed per image in ``<cache_path>/scores.sqlite`` and a rerun serves those
    rows from it (:mod:`dataflow.storage.score_cache`); ``score_cache=False`` keeps none, a folder shares one.
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
        recursive: bool = True,
        chunk_rows: int | str | None = DEFAULT_CHUNK_ROWS,
        score_cache: bool | str | os.PathLike = True,
    ):
        self.first_entry_file_name = os.fspath(first_entry_file_name)
        self.chunk_rows = check_chunk_rows(chunk_rows)
        self.score_cache_setting = score_cache
        self.cache_path = os.fspath(cache_path)
        self.file_name_prefix = file_name_prefix
        self.cache_type = check_cache_type(cache_type)
        self.image_key = image_key
        self.skip_malformed_rows = skip_malformed_rows
        self.recursive = recursive
        self.operator_step = -1
        self._call: CallInfo | None = None
        self._rows_in: int | None = None
        self._columns_in: list[str] | None = None
        self._malformed: list[dict] = []
        self._read_frame: pd.DataFrame | None = None
        self._input_fingerprint: str | None = None
        self._read_dicts: list[dict] | None = None
        self._read_nothing = False  # the step read was the empty first entry: rows written are new ones
        self._missing_in = 0  # rows read already marked missing by an earlier step (ERROR_COLUMN)

    # ------------------------------------------------------------ positions and paths
    @property
    def input_kind(self) -> str:
        return EMPTY if self.first_entry_file_name == "" else input_kind(self.first_entry_file_name)

    @property
    def image_base(self) -> str:
        """Folder that relative image paths resolve against: the input file's folder or, when its relative
        paths are not there but under the working directory, that (DataFlow's convention, decided once per
        input; see :mod:`dataflow.storage.image_paths`). For an image folder the folder; for WebDataset
        shards the shard folder, the ``.tar``'s folder or a pattern's common folder."""
        return self.image_resolution().folder

    def image_resolution(self, image_key: str | None = None) -> ImageBase:
        """Which folder ``image_base`` is, and the folders tried, for column ``image_key`` (default: the
        running call's ``input_image_key``, else the storage's ``image_key``)."""
        key = image_key or self._call_image_key()
        return image_base_of(self.first_entry_file_name, key)

    def _call_image_key(self) -> str:
        key = (self._call.input_keys if self._call else {}).get("input_image_key")
        return key if isinstance(key, str) and key else self.image_key

    def step(self) -> FileStorage:
        """Advance to the next step and return a storage positioned there (DataFlow semantics)."""
        self.operator_step += 1
        return copy.copy(self)

    def reset(self) -> FileStorage:
        """Back to before the first step, so a pipeline's ``forward()`` starts from the input again.
        Returns the storage, as DataFlow's does (``FileStorage(...).reset()``)."""
        self.operator_step = -1
        return self

    def step_path(self, step: int) -> Path:
        return Path(self.cache_path) / f"{self.file_name_prefix}_step{step}.{self.cache_type}"

    def manifest_path(self, step: int) -> Path:
        return Path(self.cache_path) / f"{self.file_name_prefix}_step{step}.meta.json"

    def rejected_path(self, step: int) -> Path:
        return Path(self.cache_path) / f"{self.file_name_prefix}_step{step}.rejected.jsonl"

    def note(self, key: str, value) -> None:
        """Record a fact about this call in the step's manifest, under ``notes`` (JSON values)."""
        if self._call is None:
            self._call = CallInfo(operator="manual")
        self._call.notes[str(key)] = value

    def journal(self, name: str = "rows") -> RowJournal:
        """The row journal of the step being written (``<prefix>_step<N>.<name>.journal.jsonl``), for this
        call: an interrupted run of the same operator, parameters and input left the rows it finished there."""
        call_fp = self._call.fingerprint if self._call else "manual"
        step = self.operator_step + 1
        path = Path(self.cache_path) / f"{self.file_name_prefix}_step{step}.{name}.journal.jsonl"
        return RowJournal(path, fingerprint(call_fp, self.step_fingerprint(self.operator_step)))

    def manifest(self, step: int) -> dict | None:
        return read_manifest(self.manifest_path(step))

    def score_cache(self) -> ScoreCache | None:
        """This storage's score cache (None when it keeps none), opened once per process and location."""
        return open_cache(cache_location(self.score_cache_setting, self.cache_path))

    def step_fingerprint(self, step: int) -> str | None:
        """Fingerprint of the data at ``step``: the input's for step 0, the manifest's after."""
        if step == 0:
            entry = self.first_entry_file_name
            if entry == "":
                return fingerprint("empty first entry")
            fp = path_fingerprint(entry, self.image_key, recursive=self.recursive)
            found = self.image_resolution(self.image_key)
            if found.is_fallback:  # the images the input names are under the working directory: those count
                return fingerprint(fp, found.folder, fallback_files(entry, self.input_kind, self.image_key, found))
            return fp
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
            raise StepOrderError(
                "read() before step(): call storage.step() first (each operator reads the step "
                "it is handed and writes the next)"
            )
        if output_type not in ("dataframe", "dict"):
            raise ValueError(f"output_type must be 'dataframe' or 'dict', got {output_type!r}")
        df = self._read_step(self.operator_step)
        self._read_nothing = self.operator_step == 0 and self.first_entry_file_name == ""
        self._rows_in = len(df) + len(self._malformed)
        self._columns_in = list(df.columns)
        # Counted now: an operator may set the column in the very frame it was handed.
        self._missing_in = _count_missing_marks(df[ERROR_COLUMN].tolist()) if ERROR_COLUMN in df.columns else 0
        self._read_frame, self._read_dicts = None, None
        if output_type == "dataframe":
            self._read_frame = df
            return df
        self._read_dicts = df.to_dict("records")
        return self._read_dicts

    def _read_step(self, step: int) -> pd.DataFrame:
        if self.batch_size is not None or self._current_streaming_chunk is not None:
            return self._read_chunk(step)
        return self._read_whole(step)

    def _read_whole(self, step: int) -> pd.DataFrame:
        self._malformed = []
        # What the step is about to see, fingerprinted before it is read: an input that changes during
        # the step (rows appended) then no longer matches, and the next run redoes the step.
        self._input_fingerprint = self.step_fingerprint(step)
        if step == 0:
            if self.first_entry_file_name == "":
                return pd.DataFrame()
            kind = self.input_kind
            df, self._malformed = read_input(
                self.first_entry_file_name,
                kind,
                self.image_key,
                skip_malformed=self.skip_malformed_rows,
                recursive=self.recursive,
            )
            self._note_image_columns(df, kind)
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

    def _note_image_columns(self, df: pd.DataFrame, kind: str) -> None:
        """Decide the input's image folder from the rows just read (no second read of the input). Not for
        Parquet, whose embedded images the decision skips without loading them."""
        if kind in TABLE_KINDS and kind != "parquet":
            for key in {self.image_key, self._call_image_key()}:
                if key in df.columns:
                    image_base_of(self.first_entry_file_name, key, kind=kind, values=df[key].iloc[:SAMPLE].tolist())

    def read_columns(self, step: int | None = None) -> list[str]:
        """Column names of a step from its header only (used by ``compile()``)."""
        step = self.operator_step if step is None else step
        if step <= 0:
            kind = self.input_kind
            if kind == EMPTY:
                return []
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

    def get_keys_from_dataframe(self) -> list[str]:
        """The column names of the current step, as DataFlow's (which reads the step to list them): from the
        manifest or the file's header where they are exact, else from the step's rows."""
        step = self.operator_step
        if step < 0:
            raise StepOrderError("get_keys_from_dataframe() before step(): call storage.step() first")
        meta = self.manifest(step) if step > 0 else None
        if meta and "columns" in meta:
            return [str(c) for c in meta["columns"]]
        kind = self.input_kind if step == 0 else self.cache_type
        if kind in ("jsonl", "json", "xlsx"):  # a header of the first rows could miss a later row's key
            if step == 0:
                df = read_input(self.first_entry_file_name, kind, self.image_key, skip_malformed=True)[0]
            else:
                df = read_table(self.step_path(step), kind)[0]
            return [str(c) for c in df.columns]
        return [str(c) for c in self.read_columns(step)]

    # ------------------------------------------------------------ writing
    def write(self, data: pd.DataFrame | list[dict], rejected: pd.DataFrame | list[dict] | None = None) -> str:
        """Write the next step. ``rejected`` rows (with a ``reason`` column) go to the sidecar file.

        A row-keeping operator that writes a subset of what it read and passes no ``rejected`` (DataFlow's
        ``storage.write(df[mask])``) loses nothing: the rows that disappeared are recorded in the sidecar
        with reason ``filtered_by_<Operator>``. Raises ``StorageError`` if rows in != rows out + rows
        rejected otherwise, ``UnsupportedDataError`` (a ``ValueError``, as DataFlow's) for data that is not
        a DataFrame or a list of dicts, and ``ImagesNotFoundError`` when the call found none of its images.
        While a chunk of the step runs (``batch_size`` set), it adds that chunk; the last one writes the step.
        """
        if self.batch_size is not None:
            return self._write_chunk(data, rejected)
        return self.commit(self.prepare_write(data, rejected))

    def prepare_write(
        self,
        data: pd.DataFrame | list[dict],
        rejected: pd.DataFrame | list[dict] | None = None,
        *,
        check_images: bool = True,
    ) -> PendingStep:
        """Everything ``write()`` checks and records, without touching the disk: the step to ``commit()``."""
        if self.operator_step < 0:
            raise StepOrderError("write() before step(): call storage.step() first")
        call = self._call or CallInfo(operator="manual")
        df, rows = frame_of(data, "data")
        rej = pd.DataFrame() if rejected is None else frame_of(rejected, "rejected")[0]
        if len(rej) and "reason" not in rej.columns:
            raise StorageError("rejected rows need a 'reason' column saying why each row was dropped")
        if rejected is None and call.keeps_rows and self._rows_in is not None:
            rej = disappeared_rows(self._read_frame, self._read_dicts, df if rows is None else rows, call.operator)
        if self._malformed:
            rej = pd.concat([rej, pd.DataFrame(self._malformed)], ignore_index=True)
        if self._rows_in is not None and call.keeps_rows and not self._read_nothing:
            check_accounting(call.operator, self._rows_in, len(df), len(rej))

        out_step = self.operator_step + 1
        found = self.image_resolution()
        meta = step_manifest(
            call,
            step=out_step,
            rows_in=self._rows_in,
            rows_out=len(df),
            rows_rejected=len(rej),
            rejected_reasons=rej["reason"].value_counts().to_dict() if len(rej) else {},
            input_fingerprint=self._read_fingerprint() or "",
            columns=list(df.columns),
            columns_in=self._columns_in or [],
            file=self.step_path(out_step).name,
            rejected_file=self.rejected_path(out_step).name if len(rej) else None,
            cache_type=self.cache_type,
            first_entry_file_name=self.first_entry_file_name,
            image_base=found.folder,
        )
        if found.is_fallback:
            meta["paths_resolved_against"] = found.against
        pending = PendingStep(out_step, df, rej, meta, self._rows_in, image_key=self._call_image_key())
        self._count_missing(pending)
        if check_images:
            self.check_images_found(pending)
        return pending

    def _count_missing(self, pending: PendingStep) -> None:
        """How many rows this call found without an image (cheap unless that is every row)."""
        rej, df = pending.rejected, pending.frame
        missing = int((rej["reason"] == MISSING).sum()) if len(rej) and "reason" in rej.columns else 0
        if ERROR_COLUMN in df.columns:
            missing += _count_missing_marks(df[ERROR_COLUMN].tolist())
        pending.missing = missing
        if not pending.rows_in or missing < pending.rows_in:
            return
        pending.missing_before = self._missing_in
        if self._read_frame is not None:
            values = self._read_frame[pending.image_key].tolist() if pending.image_key in self._read_frame else []
        else:
            values = [r.get(pending.image_key) for r in self._read_dicts or []]
        pending.examples = named_files(values)[:3]

    def check_images_found(self, pending: PendingStep) -> None:
        """``ImagesNotFoundError`` when the call found none of its images though they name files (and not
        because an earlier step had marked them all missing): a wrong folder, not a few missing files. Rows
        that name no file at all (null, an empty dict) keep their per-row reason."""
        rows = pending.rows_in or 0
        if rows and pending.missing >= rows and pending.missing_before < rows and pending.examples:
            raise missing_error(
                step=pending.step,
                operator=pending.manifest.get("operator", "manual"),
                image_key=pending.image_key,
                rows=rows,
                examples=pending.examples,
                decision=self.image_resolution(pending.image_key),
            )

    def commit(
        self,
        pending: PendingStep,
        write_data: Callable[[str], None] | None = None,
        write_rejected: Callable[[str], None] | None = None,
    ) -> str:
        """Write ``pending`` to disk: its table, its rejected rows (if any) and its manifest, each atomically.
        ``write_data`` / ``write_rejected`` (given a temp path) replace writing the frames (batched steps)."""
        out_step = pending.step
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
                (write_data or (lambda path: write_table(pending.frame, path, self.cache_type)))(tmp)
            if pending.manifest.get("rejected_file"):
                with atomic_path(rej_target) as tmp:
                    (write_rejected or (lambda path: write_table(pending.rejected, path, "jsonl")))(tmp)
            else:
                rej_target.unlink(missing_ok=True)
            write_manifest(
                self.manifest_path(out_step), {**pending.manifest, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            )
            for journal in journal_paths(target):  # the step holds what they kept
                journal.unlink(missing_ok=True)
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
            f"{type(self).__name__}({self.first_entry_file_name!r}, cache_path={self.cache_path!r}, "
            f"file_name_prefix={self.file_name_prefix!r}, cache_type={self.cache_type!r}, "
            f"step={self.operator_step})"
        )


def _count_missing_marks(marks: list) -> int:
    return sum(1 for m in marks if isinstance(m, str) and m == MISSING)


def frame_of(data, what: str) -> tuple[pd.DataFrame, list[dict] | None]:
    """``data`` as a frame (and the row dicts it was built from), or DataFlow's error for anything else."""
    if isinstance(data, pd.DataFrame):
        return data, None
    if isinstance(data, (list, tuple)):
        rows = list(data)
        bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
        if bad is not None:
            raise UnsupportedDataError(
                f"Unsupported data type: {type(rows[bad])} (item {bad} of the list); write() takes a pandas "
                f"DataFrame or a list of dicts, one per row, as {what}"
            )
        return pd.DataFrame(rows), rows
    raise UnsupportedDataError(
        f"Unsupported data type: {type(data)}; write() takes a pandas DataFrame or a list of dicts, one per row, "
        f"as {what}"
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
