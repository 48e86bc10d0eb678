"""Run an operator's own ``run()`` on one pandas batch inside a Ray task or actor.

The operator code is not duplicated: each task hands it a :class:`BatchStorage` holding one slice of the
step in memory (``read()`` returns it, ``write(kept, rejected=...)`` captures the result), exactly the
calls it makes on a ``FileStorage``, including ``begin(call)`` and DataFlow's ``write(df[mask])`` idiom
(the rows missing from a subset of the frame read are rejected as ``filtered_by_<Operator>``, by the same
function ``FileStorage`` uses). Row accounting is checked per batch with the same check as ``FileStorage``,
then once more for the whole step on the driver. Operators declaring ``execution = "rowwise"`` run this
way on every slice; the others run it once on the driver over the whole step.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dataflow.engines.ray.io import Slice, read_slice, shard_name, write_rejected_part, write_shard
from dataflow.storage.file_storage import CallInfo, StorageError, disappeared_rows
from dataflow.storage.formats import to_arrow
from dataflow.storage.manifest import check_accounting


@dataclass(frozen=True)
class StepContext:
    """What every task of a step needs to know (picklable, small)."""

    name: str  # operator class name, for messages
    out_dir: str  # the step's temp folder (shards land here)
    work_dir: str  # scratch files of multi-pass operators
    image_base: str
    image_key: str = "image"
    call: CallInfo | None = None  # what each batch's storage is told by begin(), built once on the driver


class BatchStorage:
    """The storage an operator sees inside a task: one batch in memory, one write captured."""

    cache_type = "parquet"

    def __init__(self, df: pd.DataFrame, ctx: StepContext):
        self._df = df
        self._ctx = ctx
        self._call: CallInfo | None = None
        self._read_frame: pd.DataFrame | None = None
        self._read_dicts: list[dict] | None = None
        self.image_base = ctx.image_base
        self.image_key = ctx.image_key
        self.operator_step = 0
        self.kept: pd.DataFrame | None = None
        self.rejected: pd.DataFrame | None = None

    def begin(self, call: CallInfo) -> None:
        """The operator call this batch belongs to (its name and ``keeps_rows`` govern ``write``)."""
        self._call = call

    @property
    def keeps_rows(self) -> bool:
        return self._call.keeps_rows if self._call is not None else True

    def step(self) -> BatchStorage:
        return self

    def read(self, output_type: str = "dataframe"):
        self._read_frame, self._read_dicts = None, None
        if output_type == "dataframe":
            self._read_frame = self._df
            return self._df
        if output_type == "dict":
            self._read_dicts = self._df.to_dict("records")
            return self._read_dicts
        raise ValueError(f"output_type must be 'dataframe' or 'dict', got {output_type!r}")

    def write(self, data, rejected=None) -> str:
        rows = None if isinstance(data, pd.DataFrame) else list(data)
        df = data if rows is None else pd.DataFrame(rows)
        rej = rejected if isinstance(rejected, pd.DataFrame) else pd.DataFrame(list(rejected or []))
        if len(rej) and "reason" not in rej.columns:
            raise StorageError("rejected rows need a 'reason' column saying why each row was dropped")
        operator = self._call.operator if self._call is not None else self._ctx.name
        if rejected is None and self.keeps_rows:
            rej = disappeared_rows(self._read_frame, self._read_dicts, df if rows is None else rows, operator)
        if self.keeps_rows:
            check_accounting(operator, len(self._df), len(df), len(rej), where=" in one batch")
        self.kept, self.rejected = df, rej
        return "<ray batch>"


def worker_operator(cls: type, params: dict) -> Any:
    """The operator rebuilt from its ``__init__`` arguments in a worker, its own process pool off: Ray
    is the parallelism here (a model-backed operator loads its model once per actor)."""
    params = dict(params)
    if "num_workers" in params:
        params["num_workers"] = 1
    return cls(**params)


def run_operator(op: Any, df: pd.DataFrame, keys: dict, ctx: StepContext) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The operator's unwrapped ``run`` on one batch (the driver already announced the call, so no
    per-batch hook, log line or fingerprint): (kept rows, rejected rows)."""
    storage = BatchStorage(df, ctx)
    if ctx.call is not None:
        storage.begin(ctx.call)
    run = getattr(type(op).run, "__wrapped_run__", type(op).run)
    run(op, storage, **keys)
    if storage.kept is None:
        raise StorageError(f"{ctx.name}.run() returned without calling storage.write()")
    return storage.kept, storage.rejected


@dataclass
class SliceStats:
    """What a task reports about its slice (one row of the step's stats table)."""

    offset: int
    rows_in: int
    rows_out: int
    rows_rejected: int
    reasons: dict = field(default_factory=dict)
    shard: str = ""
    schema: bytes = b""
    rejected_parts: list = field(default_factory=list)

    def as_row(self) -> dict:
        return {
            "offset": self.offset,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_rejected": self.rows_rejected,
            "reasons": json.dumps(self.reasons),
            "shard": self.shard,
            "schema": self.schema,
            "rejected_parts": json.dumps(self.rejected_parts),
        }


def serialize_schema(schema: pa.Schema) -> bytes:
    return schema.serialize().to_pybytes()


def deserialize_schema(blob: bytes) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(blob))


def write_outputs(
    sl_offset: int, rows_in: int, kept: pd.DataFrame, rejected: list[tuple[str, pd.DataFrame]], ctx: StepContext
) -> SliceStats:
    """Write a slice's kept rows as a shard and each rejected frame as a part; report them."""
    stats = SliceStats(offset=sl_offset, rows_in=rows_in, rows_out=len(kept), rows_rejected=0)
    if len(kept):
        stats.shard = shard_name(sl_offset)
        stats.schema = serialize_schema(write_shard(kept, ctx.out_dir, stats.shard))
    else:  # no shard, but the columns still count when the whole step ends up empty
        stats.schema = serialize_schema(to_arrow(kept).schema)
    reasons: Counter = Counter()
    for phase, rej in rejected:
        if rej is None or not len(rej):
            continue
        name = f"rej-{phase}-{sl_offset:012d}.jsonl"
        write_rejected_part(rej, Path(ctx.out_dir) / "_rejected", name)
        stats.rejected_parts.append(name)
        stats.rows_rejected += len(rej)
        reasons.update(str(r) for r in rej["reason"].tolist())
    stats.reasons = dict(reasons)
    return stats


def rowwise_slice(op: Any, item: dict, job: SliceJob) -> pd.DataFrame:
    sl = Slice.from_item(item)
    df = read_slice(sl)
    kept, rej = run_operator(op, df, job.keys, job.ctx)
    return pd.DataFrame([write_outputs(sl.offset, len(df), kept, [("a", rej)], job.ctx).as_row()])


@dataclass
class SliceJob:
    """One pass over the slices of a step: ``kind`` names the function, the rest is its input."""

    kind: str
    cls: type
    params: dict
    keys: dict
    ctx: StepContext
    extra: dict = field(default_factory=dict)

    def build(self) -> Any:
        return worker_operator(self.cls, self.params)

    def run(self, op: Any, batch: pd.DataFrame) -> pd.DataFrame:
        from dataflow.engines.ray import dedup

        fn = {"rowwise": rowwise_slice, "dedup_keys": dedup.keys_slice, "dedup_write": dedup.write_slice}[self.kind]
        frames = [fn(op, item, self) for item in batch.to_dict("records")]
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def slice_task(batch: pd.DataFrame, job: SliceJob) -> pd.DataFrame:
    """A Ray task over descriptors: the operator is rebuilt per call (cheap for operators that load no
    model, or load it on first use)."""
    return job.run(job.build(), batch)


class SliceActor:
    """A Ray actor over descriptors: the operator (and its model) is built once per actor."""

    def __init__(self, job: SliceJob):
        self.job = job
        self.op = job.build()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return self.job.run(self.op, batch)


def dumps(obj: Any) -> bytes:
    """A payload between this run's Ray tasks as tagged JSON: arrays keep their dtype and shape as raw
    bytes, tuples stay tuples, and nothing is pickled, so reading one back can never run code."""
    return json.dumps(_tagged(obj), separators=(",", ":")).encode()


def loads(blob: bytes) -> Any:
    return _untagged(json.loads(blob))


def _tagged(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            items = value.tolist()
            if {type(v) for v in items} <= _JSON_NATIVE:  # the common case (paths, ids, None): as it is
                return {"__objects__": items}
            return {"__objects__": [_tagged(v) for v in items]}
        data = np.ascontiguousarray(value)
        return {"__array__": [data.dtype.str, list(data.shape), base64.b64encode(data.tobytes()).decode()]}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [_tagged(v) for v in value]}
    if isinstance(value, list):
        return value if {type(v) for v in value} <= _JSON_NATIVE else [_tagged(v) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[_tagged(k), _tagged(v)] for k, v in value.items()]}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot hand a {type(value).__name__} between Ray tasks: {value!r:.80}")


_JSON_NATIVE = {str, int, float, bool, type(None)}


def _untagged(value: Any) -> Any:
    if isinstance(value, list):
        return [_untagged(v) for v in value] if any(isinstance(v, (list, dict)) for v in value) else value
    if not isinstance(value, dict):
        return value
    ((tag, body),) = value.items()
    if tag == "__array__":
        dtype, shape, data = body
        return np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype)).reshape(shape).copy()
    if tag == "__objects__":
        out = np.empty(len(body), dtype=object)
        for i, v in enumerate(_untagged(body)):  # one by one: a list cell must stay one cell
            out[i] = v
        return out
    if tag == "__tuple__":
        return tuple(_untagged(v) for v in body)
    if tag == "__dict__":
        return {_untagged(k): _untagged(v) for k, v in body}
    if tag == "__bytes__":
        return base64.b64decode(body)
    raise ValueError(f"not a payload of this run: tag {tag!r}")
