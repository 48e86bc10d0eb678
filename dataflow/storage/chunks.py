"""Steps written a chunk of rows at a time: each finished chunk is on disk, so a killed step resumes after it.

A row-wise operator call (``execution = "rowwise"``: each row decided on its own) in a pipeline runs once per
chunk of ``chunk_rows`` rows of its input (``"auto"``, the default: a hundredth of the step, 1,000 to 100,000
rows) (DataFlow's ``BatchedPipelineABC`` calls them batches and sets the
size with ``forward(batch_size=N)``): ``read()`` returns rows ``[batch_step * size, (batch_step + 1) * size)``
and ``write()`` puts that chunk's output in ``<prefix>_step<N>.batches/`` atomically, with one line in its
``batches.jsonl``. When the last chunk is in, the chunks are put together as the step file (JSON lines and
Parquet streamed, part after part; CSV and JSON in memory) with a manifest of the totals, and the folder goes.

After a kill, the same call (same input, operator, parameters and chunk size) finds the chunks already
written and runs only the others; the chunk boundaries do not depend on the run, so the step file is the one
an uninterrupted run writes. Memory is that of a chunk for JSON lines and Parquet (the input, or the steps);
other inputs are read whole once per step and sliced. A step of one chunk is written directly, as an
operator outside a pipeline writes it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import orjson
import pandas as pd

from dataflow.storage.atomic import atomic_path, atomic_write_bytes
from dataflow.storage.batches import (
    Cursor,
    ParquetCursor,
    concat_bytes,
    concat_parquet,
    concat_tables,
    count_jsonl_rows,
    parquet_rows,
    parquet_rows_total,
    read_jsonl_rows,
)
from dataflow.storage.formats import write_table
from dataflow.storage.inputs import read_input
from dataflow.storage.lock import cache_folder_error
from dataflow.storage.manifest import StorageError, fingerprint

SYNC_SECONDS = 2.0  # finished chunks are forced to disk at most this often
EMPTY = "empty"  # the kind of ``first_entry_file_name=""`` (see file_storage)
DEFAULT_CHUNK_ROWS = "auto"
# "auto": a hundredth of the step, within these bounds. A kill loses at most ~1 % of a long step, a chunk of
# images is seconds of work (its fixed cost, a few file writes and a pool start, is lost in it), and a chunk
# of 100k metadata rows is ~100 MB: the memory of a step of any size.
AUTO_CHUNKS = 100
AUTO_MIN_ROWS, AUTO_MAX_ROWS = 1_000, 100_000


def check_chunk_rows(value: int | str | None) -> int | str | None:
    if value == "auto" or value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"chunk_rows must be a positive integer, 'auto' or None (no chunks), got {value!r}")
    return value


def auto_chunk_rows(rows: int) -> int:
    """The chunk size of ``chunk_rows="auto"`` for a step of ``rows`` rows (the same for every run of it)."""
    return min(AUTO_MAX_ROWS, max(AUTO_MIN_ROWS, -(-rows // AUTO_CHUNKS)))


class ChunkedSteps:
    """What :class:`~dataflow.storage.file_storage.FileStorage` needs to read and write a step in chunks.

    ``batch_size`` (None: the whole step at once) and ``batch_step`` say which chunk the running call sees;
    a pipeline sets them (``chunk_rows`` for its row-wise calls), and a script may too, calling the operator
    once per chunk as DataFlow's ``BatchedPipelineABC`` does.
    """

    chunkable: bool = True  # False: a storage whose steps do not go to disk as they are written (lazy)
    batch_size: int | None = None
    batch_step: int = 0
    record_count: int | None = None
    _cursor: Cursor | None = None
    _parquet_cursor: ParquetCursor | None = None
    _whole: tuple[tuple, pd.DataFrame, list] | None = None  # (step, file state), frame, malformed
    _counted: tuple[tuple, int] | None = None
    _step_fp: tuple[int, str | None] | None = None
    _kind: str | None = None
    _input_by_groups: tuple[tuple, bool] | None = None  # (input file state, read by row groups)
    _current_streaming_chunk: pd.DataFrame | None = None  # DataFlow's StreamBatchedPipelineABC hands it in

    def chunk_size(self) -> int | None:
        """The rows per chunk of the current step's row-wise calls in a pipeline (None: the whole step)."""
        rows = getattr(self, "chunk_rows", None)
        return auto_chunk_rows(self.get_record_count()) if rows == "auto" else rows

    def batches_path(self, step: int) -> Path:
        """The folder the chunks of ``step`` wait in until its last one is written."""
        return Path(self.cache_path) / f"{self.file_name_prefix}_step{step}.batches"

    def batch_count(self) -> int:
        """How many chunks of ``batch_size`` rows the current step has (1 for an empty step)."""
        return max(1, -(-self.get_record_count() // self._batch_size()))

    def get_record_count(self) -> int:
        """The rows of the current step, counted without parsing them where the format allows."""
        step = self.operator_step
        if step < 0:
            from dataflow.storage.file_storage import StepOrderError

            raise StepOrderError("get_record_count() before step(): call storage.step() first")
        if step > 0:
            meta = self.manifest(step)
            if meta and isinstance(meta.get("rows_out"), int) and self.step_path(step).is_file():
                return meta["rows_out"]
        kind, path = self._source(step)
        if kind == EMPTY:
            return 0
        state = (step, _file_state(path))
        if self._counted is not None and self._counted[0] == state:
            return self._counted[1]
        if kind == "jsonl":
            rows = count_jsonl_rows(path)
        elif self._parquet_by_groups(step, kind, path):
            rows = parquet_rows_total(path)
        else:
            rows = len(self._whole_step(step)[0])
        self._counted = (state, rows)
        return rows

    def _source(self, step: int) -> tuple[str, str]:
        if step == 0:
            if self._kind is None:  # judged once: for a folder it walks the folder
                self._kind = self.input_kind
            return self._kind, self.first_entry_file_name
        return self.cache_type, str(self.step_path(step))

    def _parquet_by_groups(self, step: int, kind: str, path: str) -> bool:
        """Whether a chunk of this Parquet table is read by its row groups: a step always, the input when
        its image column holds paths (embedded images become references, made over the whole shard)."""
        if kind != "parquet" or not Path(path).is_file():
            return False
        if step > 0:
            return True
        state = _file_state(path)
        if self._input_by_groups is None or self._input_by_groups[0] != state:  # one schema read per input
            import pyarrow.parquet as pq

            from dataflow.storage.embedded import embeds_images

            schema = pq.read_schema(path)
            plain = self.image_key not in schema.names or not embeds_images(schema.field(self.image_key))
            self._input_by_groups = (state, plain)
        return self._input_by_groups[1]

    def _batch_size(self) -> int:
        size = self.batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {size!r}")
        return size

    # ------------------------------------------------------------ reading a chunk
    def _read_chunk(self, step: int) -> pd.DataFrame:
        if self._step_fp is None or self._step_fp[0] != step or self.batch_step == 0:
            self._step_fp = (step, self.step_fingerprint(step))  # once per step: it stats every image
        self._input_fingerprint = self._step_fp[1]
        chunk = self._current_streaming_chunk
        if chunk is not None:
            self._malformed = []
            return chunk.reset_index(drop=True)
        size = self._batch_size()
        self.record_count = self.get_record_count()
        df, self._malformed = self._rows(step, self.batch_step * size, size)
        return df

    def _rows(self, step: int, start: int, count: int) -> tuple[pd.DataFrame, list[dict]]:
        kind, path = self._source(step)
        if kind == EMPTY:
            return pd.DataFrame(), []
        if kind == "jsonl" and Path(path).is_file():
            df, bad, self._cursor = read_jsonl_rows(
                path, start, count, self._cursor, skip_malformed=self.skip_malformed_rows and step == 0
            )
        elif self._parquet_by_groups(step, kind, path):
            df, self._parquet_cursor = parquet_rows(path, start, count, self._parquet_cursor)
            bad = []
        else:
            whole, malformed = self._whole_step(step)
            df = whole.iloc[start : start + count].reset_index(drop=True)
            bad = malformed if start == 0 else []
        if not len(df.columns) and step > 0:  # a chunk of no rows: the columns are in the manifest
            df = df.reindex(columns=(self.manifest(step) or {}).get("columns") or [])
        return df, bad

    def _whole_step(self, step: int) -> tuple[pd.DataFrame, list]:
        kind, path = self._source(step)
        state = (step, _file_state(path))
        if self._whole is None or self._whole[0] != state:
            if step == 0:
                df, malformed = read_input(path, kind, self.image_key, skip_malformed=self.skip_malformed_rows)
                self._note_image_columns(df, kind)
            else:
                df, malformed = self._read_whole(step), []
            self._whole = (state, df, malformed)
        return self._whole[1], self._whole[2]

    def iter_chunks(self):
        """The current step's chunks as frames, one after the other (DataFlow's streaming call)."""
        size = self._batch_size()
        total = self.get_record_count()
        for start in range(0, max(total, 1), size):
            yield self._rows(self.operator_step, start, size)[0]

    # ------------------------------------------------------------ writing a chunk
    def _write_chunk(self, data, rejected) -> str:
        return self._add_batch(self.prepare_write(data, rejected, check_images=False))

    def _read_state(self, step: int) -> dict | None:
        """The chunk folder's header (``state.json``) and the records of its finished chunks (``batches.jsonl``,
        a line each, in order; a line torn by a kill is not a finished chunk)."""
        folder = self.batches_path(step)
        try:
            state = orjson.loads((folder / "state.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        if not isinstance(state, dict):
            return None
        records = []
        try:
            lines = (folder / "batches.jsonl").read_bytes().splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                break
        state["batches"] = records
        return state

    def resume_batch(self, operator_fingerprint: str) -> int:
        """The first chunk of the current step's call still to run: the chunks an interrupted run of the same
        call (same input, operator, parameters and chunk size) wrote are kept; 0 when there are none. When every
        chunk is there but the step is not (the run stopped while putting them together), the last chunk runs
        again and finishes the step."""
        step = self.operator_step
        state = self._read_state(step + 1)
        if not state:
            return 0
        expected = fingerprint(self.step_fingerprint(step) or "", operator_fingerprint)
        if (
            state.get("fingerprint") != expected
            or state.get("batch_size") != self.batch_size
            or state.get("record_count") != self.get_record_count()
        ):
            return 0
        folder = self.batches_path(step + 1)
        done = 0
        for i, record in enumerate(state["batches"]):  # the chunks whose files are whole (a power cut, see above)
            sizes = [_size(folder / _part(i, self.cache_type)), _size(folder / _part(i, "rejected.jsonl"))]
            if sizes != record.get("bytes", sizes):
                break
            done = i + 1
        return min(done, self.batch_count() - 1)

    def _add_batch(self, pending) -> str:
        step, index, size = pending.step, self.batch_step, self._batch_size()
        total = self.record_count if self.record_count is not None else self.get_record_count()
        count = max(1, -(-total // size))
        if not 0 <= index < count:
            raise StorageError(
                f"batch_step={index}: step {step - 1} has {total} rows, {count} batch(es) of {size} "
                f"(batch_step 0 to {count - 1})"
            )
        if count == 1:  # nothing to resume inside one chunk: written as a whole step is
            self.check_images_found(pending)
            pending.manifest.update(batch_size=size, batches=1)
            return self.commit(pending)
        folder = self.batches_path(step)
        meta = pending.manifest
        state = None if index == 0 else self._read_state(step)
        if index == 0:
            shutil.rmtree(folder, ignore_errors=True)
            state = {"fingerprint": meta["fingerprint"], "batch_size": size, "record_count": total, "batches": []}
        elif not state or len(state["batches"]) < index or state.get("fingerprint") != meta["fingerprint"]:
            raise StorageError(
                f"batch {index} of step {step}: {folder} does not hold batches 0 to {index - 1} of this call "
                "(another operator, parameters or input, or a batch skipped); rerun the step from batch_step=0"
            )
        records = state.pop("batches")
        rewrite = index == 0 or len(records) != index  # a chunk written again replaces itself and those after it
        part, rejected = folder / _part(index, self.cache_type), folder / _part(index, "rejected.jsonl")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(part, sync=False) as tmp:
                write_table(pending.frame, tmp, self.cache_type)
            if len(pending.rejected):
                with atomic_path(rejected, sync=False) as tmp:
                    write_table(pending.rejected, tmp, "jsonl")
            elif index:
                rejected.unlink(missing_ok=True)
            record = _batch_record(pending, self._columns_in or [])
            record["bytes"] = [part.stat().st_size, rejected.stat().st_size if len(pending.rejected) else 0]
            records = [*records[:index], record]
            if index == 0:
                atomic_write_bytes(folder / "state.json", orjson.dumps(state, option=orjson.OPT_INDENT_2))
            self._unsynced = [*getattr(self, "_unsynced", []), part, rejected]
            if _save_records(folder, records, rewrite, self._unsynced, getattr(self, "_synced", 0.0)):
                self._synced, self._unsynced = time.monotonic(), []
        except OSError as exc:
            raise cache_folder_error(Path(self.cache_path), exc) from exc
        if index + 1 < count:
            return str(self.step_path(step))
        return self._finish(pending, {**state, "batches": records}, folder)

    def _finish(self, last, state: dict, folder: Path) -> str:
        """Put the chunks together as the step: table, rejected rows and a manifest of the totals."""
        records = state["batches"]
        rows_in = None if any(r["rows_in"] is None for r in records) else sum(r["rows_in"] for r in records)
        reasons: dict[str, int] = {}
        columns: list[str] = []
        columns_in: set[str] = set()
        for r in records:
            for reason, n in r["rejected_reasons"].items():
                reasons[reason] = reasons.get(reason, 0) + n
            columns += [c for c in r["columns"] if c not in columns]
            columns_in.update(r["columns_in"])
        rows_rejected = sum(r["rows_rejected"] for r in records)
        notes = dict(last.manifest.get("notes") or {})
        notes.update(_summed_notes(records))
        meta = {
            **last.manifest,
            "rows_in": rows_in,
            "rows_out": sum(r["rows_out"] for r in records),
            "rows_rejected": rows_rejected,
            "rejected_reasons": reasons,
            "seconds": round(sum(r["seconds"] for r in records), 4),
            "columns": columns,
            "new_columns": [c for c in columns if c not in columns_in],
            "rejected_file": self.rejected_path(last.step).name if rows_rejected else None,
            "batch_size": state["batch_size"],
            "batches": len(records),
        }
        if notes:
            meta["notes"] = notes
        whole = dataclasses.replace(
            last,
            frame=pd.DataFrame(),
            rejected=pd.DataFrame(),
            manifest=meta,
            rows_in=rows_in,
            missing=sum(r["missing"] for r in records),
            missing_before=sum(r["missing_before"] for r in records),
            examples=next((r["examples"] for r in records if r["examples"]), []),
        )
        self.check_images_found(whole)
        parts = [folder / _part(i, self.cache_type) for i in range(len(records))]
        rejected = [p for p in (folder / _part(i, "rejected.jsonl") for i in range(len(records))) if p.is_file()]

        def write_data(tmp: str) -> None:
            if self.cache_type == "jsonl":
                concat_bytes(parts, tmp)
            elif self.cache_type == "parquet":
                concat_parquet(parts, tmp, columns)
            else:
                concat_tables(parts, self.cache_type, tmp, columns)

        path = self.commit(whole, write_data, lambda tmp: concat_bytes(rejected, tmp))
        shutil.rmtree(folder, ignore_errors=True)
        return path


def _save_records(folder: Path, records: list[dict], rewrite: bool, unsynced: list[Path], synced: float) -> bool:
    """Append the last chunk's record to ``batches.jsonl`` (or rewrite them all). The chunks' files written
    since the last sync and the records are forced to disk at most every ``SYNC_SECONDS`` (a sync per chunk
    would cost more than a chunk of metadata rows): a power cut loses at most that much, and a chunk whose
    files did not survive it has the wrong sizes and runs again. Returns whether it synced."""
    path = folder / "batches.jsonl"
    if rewrite:
        atomic_write_bytes(path, b"".join(orjson.dumps(r) + b"\n" for r in records))
        return False
    with open(path, "ab") as fh:
        fh.write(orjson.dumps(records[-1]) + b"\n")
        if time.monotonic() - synced < SYNC_SECONDS:
            return False
        for file in unsynced:
            _fsync(file)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _fsync(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    except FileNotFoundError:  # a chunk without rejected rows
        pass


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0 if path.name.endswith(".rejected.jsonl") else None


def _part(index: int, ext: str) -> str:
    return f"batch{index:06d}.{ext}"


# Counters an operator notes per chunk (``storage.note``) that add up over the step.
SUMMED_NOTES = ("score_cache",)


def _summed_notes(records: list[dict]) -> dict:
    out: dict = {}
    for r in records:
        for name, counts in (r.get("notes") or {}).items():
            if name in SUMMED_NOTES and isinstance(counts, dict):
                total = out.setdefault(name, {})
                for key, value in counts.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        total[key] = total.get(key, 0) + value
    return out


def _batch_record(pending, columns_in: list) -> dict:
    """What the manifest of the whole step needs from one chunk."""
    meta = pending.manifest
    notes = meta.get("notes") or {}
    return {
        "rows_in": pending.rows_in,
        "rows_out": meta["rows_out"],
        "rows_rejected": meta["rows_rejected"],
        "rejected_reasons": meta["rejected_reasons"],
        "seconds": meta["seconds"],
        "columns": [str(c) for c in meta["columns"]],
        "columns_in": [str(c) for c in columns_in],
        "missing": pending.missing,
        "missing_before": pending.missing_before,
        "examples": [v for v in pending.examples if isinstance(v, str)],
        "notes": {k: v for k, v in notes.items() if k in SUMMED_NOTES},
    }


def _file_state(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return ("absent",)
    return (st.st_size, st.st_mtime_ns, st.st_ino)
