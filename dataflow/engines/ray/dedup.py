"""Dedup operators (``execution = "dedup"``) on Ray Data: the operator's public phases, distributed.

The engine only distributes; every decision is the operator's own code (:mod:`dataflow.core.dedup`).
Three passes over the step's slices:

1. *keys* (``map_batches``, tasks or an actor pool when the operator ``loads_model``): per slice, the
   operator - rebuilt in the worker from its parameters, ``num_workers=1`` - gives each row its key or the
   reason it has none (``row_keys``) and each readable row its keep value (``keep_values``). A side file
   per slice keeps ok / err / detail and the keys (a column for ``"exact"`` and ``"hamming"`` searches,
   a ``.npy`` of ``stack_keys`` for ``"cosine"``).
2. *candidate pairs*, by the operator's ``search``: ``"exact"`` - a shuffle on a hash of the key text
   (``groupby(...).map_groups``) brings equal keys together, each group reporting the rows whose key
   occurs more than once; ``"hamming"`` - the block-key shuffle of ``_hamming`` verifies every pair of
   hashes within ``max_distance`` bits; ``"cosine"`` - a task per pair of vector shards runs the blockwise
   search at ``threshold``, with each row's true best similarity; or, when the operator's ``vector_search``
   is ``"approximate"`` (``"auto"`` over its size), the local engine's partitioned search distributed
   (:mod:`dataflow.algorithms.partitioned_search`): the driver fits the partitions on the same sample,
   tasks assign ranges of rows to partitions (in the local search's chunks, so with the same scores) and
   find the recall sample's exact pairs there, tasks search whole partitions (packed into tasks of about
   equal cost), the driver merges and records the recall in the manifest. Only the rows these touch (row id, key,
   keep value) and their pairs come back to the driver, which calls the operator's ``group`` on them alone
   (untouched rows are singletons, kept).
3. *write* (``map_batches``, CPU tasks): each slice gets the decisions for its rows (shipped with its
   descriptor), builds a :class:`~dataflow.core.dedup.Decisions` for its readable rows and writes what the
   operator's ``split`` returns, the rejected frames aligned to the columns of the local engine's single
   frame. The operator is rebuilt in each task and only ``split`` runs, so an operator that
   ``loads_model`` should load it on first use (in ``row_keys``), not in ``__init__``.

Results are identical to the local engine (``DedupFilter.deduplicate``): the same kept rows in the same
order, the same rejected rows with the same reasons, ``duplicate_of``, distances / similarities and groups.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dataflow.core.dedup import Decisions, Pairs
from dataflow.engines.ray import _hamming
from dataflow.engines.ray.io import ROW_ID, Slice, read_slice
from dataflow.engines.ray.rowwise import SliceJob, dumps, loads, write_outputs
from dataflow.storage.atomic import atomic_path
from dataflow.storage.formats import read_table, write_table
from dataflow.storage.provenance import PROVENANCE_COLUMNS, keep_user_columns, row_name, user_column_name

if TYPE_CHECKING:
    from dataflow.engines.ray.runner import StepRun

# ---------------------------------------------------------------------------------------------------
# side files of pass 1 (one per slice, in the step's work folder)


def _side_path(work_dir: str, offset: int, kind: str = "slim", ext: str = "parquet") -> Path:
    return Path(work_dir) / f"{kind}-{offset:012d}.{ext}"


def _write_side(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        write_table(df, tmp, "parquet")


def _read_side(path: Path) -> pd.DataFrame:
    return read_table(path, "parquet")[0]


def _slice_keys(op: Any, side: pd.DataFrame, work_dir: str, offset: int) -> Any:
    """The keys of a slice's readable rows, as ``op.stack_keys`` gave them in pass 1."""
    ok = side["ok"].to_numpy(dtype=bool)
    if op.search == "cosine":
        return np.load(_side_path(work_dir, offset, "vec", "npy")) if ok.any() else op.stack_keys([])
    return op.stack_keys(side["key"].to_numpy()[ok].tolist())


def _part_of(text: str, partitions: int) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass")) % partitions  # the same in every process


# ---------------------------------------------------------------------------------------------------
# pass 1 (workers)


def keys_slice(op: Any, item: dict, job: SliceJob) -> pd.DataFrame:
    """Phase 1 on one slice: keys and keep values; returns the slim rows pass 2 shuffles or searches."""
    sl = Slice.from_item(item)
    df = read_slice(sl)
    results = op.row_keys(df, job.ctx.image_base, job.keys)
    if len(results) != len(df):
        raise ValueError(f"{job.ctx.name}.row_keys returned {len(results)} results for {len(df)} rows")
    ok = np.array([r.error is None for r in results], dtype=bool)
    values = op.stack_keys([r.value for r in results if r.error is None])
    side = pd.DataFrame(
        {
            "ok": ok,
            "err": pd.Series([r.error for r in results], dtype=object),
            "detail": pd.Series([r.detail for r in results], dtype=object),
        }
    )
    if op.search == "cosine":
        if ok.any():
            np.save(_side_path(job.ctx.work_dir, sl.offset, "vec", "npy"), values)
    elif op.search == "hamming":
        column = np.zeros(len(df), dtype=np.uint64)
        column[ok] = values
        side["key"] = column
    else:
        column = np.full(len(df), None, dtype=object)
        for at, value in zip(np.flatnonzero(ok).tolist(), values):  # one by one: a key may be a sequence
            column[at] = value
        side["key"] = pd.Series(column, dtype=object)
    _write_side(side, _side_path(job.ctx.work_dir, sl.offset))
    pv = np.asarray(op.keep_values(df[ok], job.ctx.image_base, job.keys, num_workers=1), dtype=float)
    rid = np.arange(sl.offset, sl.offset + len(df), dtype=np.int64)[ok]
    if op.search == "exact":
        text = np.asarray(values, dtype=object).astype(str).tolist()  # equality as the local search sees it
        parts = np.array([_part_of(t, job.extra["partitions"]) for t in text], dtype=np.int64)
        return pd.DataFrame({ROW_ID: rid, "k": pd.Series(text, dtype=object), "part": parts, "pv": pv})
    if op.search == "hamming":
        return pd.DataFrame({ROW_ID: rid, "h": np.asarray(values, dtype=np.uint64), "pv": pv})
    dim = int(values.shape[1]) if len(values) else -1
    return pd.DataFrame({ROW_ID: rid, "pv": pv, "dim": np.full(len(rid), dim, dtype=np.int64)})


# ---------------------------------------------------------------------------------------------------
# pass 2 UDFs (workers)


def exact_group(group: pd.DataFrame) -> pd.DataFrame:
    """Rows of one key-hash partition whose key occurs more than once (only they can be duplicates)."""
    counts = group.groupby("k", sort=False)[ROW_ID].transform("size").to_numpy()
    return group.loc[counts > 1, [ROW_ID, "k", "pv"]]


def hash_emit(batch: dict, *, arrays: dict, k: int, top_masks: np.ndarray, top_start: np.ndarray) -> dict:
    parts, hashes = _hamming.emit_partitions(
        np.ascontiguousarray(batch["h"], dtype=np.uint64), arrays["shifts"], arrays["widths"], k, top_masks, top_start
    )
    return {"part": parts, "h": hashes}


def hash_verify(batch: dict, *, t: int, arrays: dict, k: int) -> dict:
    a, b, d = _hamming.verify_partition(int(batch["part"][0]), batch["h"], t, arrays, k)
    return {"a": a, "b": b, "d": d}


def touched_rows(batch: dict, *, column: str, values: np.ndarray) -> dict:
    """Rows of the slim table whose ``column`` value is in ``values`` (sorted)."""
    col = batch[column]
    pos = np.searchsorted(values, col)
    hit = (
        (pos < len(values)) & (values[np.minimum(pos, len(values) - 1)] == col)
        if len(values)
        else np.zeros(len(col), dtype=bool)
    )
    return {k: v[hit] for k, v in batch.items()}


def vector_pairs(batch: pd.DataFrame, *, work_dir: str, threshold: float) -> pd.DataFrame:
    """All pairs at ``threshold`` between two vector shards (or within one), and each row's best score.

    Rows ``a, b, s`` with ``b >= 0`` are pairs of row ids; rows with ``b == -1`` carry row ``a``'s highest
    similarity within the two shards (the driver keeps the maximum over every shard pair it is in).
    """
    from dataflow.algorithms.cosine_search import find_similar_pairs

    frames = []
    for item in batch.to_dict("records"):
        left, right = loads(item["payload"])
        vl, rl = _load_vectors(work_dir, left)
        if left == right:
            vectors, rows, n_left = vl, rl, len(rl)
        else:
            vr, rr = _load_vectors(work_dir, right)
            vectors, rows, n_left = np.concatenate([vl, vr]), np.concatenate([rl, rr]), len(rl)
        found = find_similar_pairs(np.ascontiguousarray(vectors, dtype=np.float32), threshold)
        i, j = found.pairs[:, 0], found.pairs[:, 1]
        keep = np.ones(len(i), dtype=bool) if left == right else (i < n_left) & (j >= n_left)
        frames.append(pd.DataFrame({"a": rows[i[keep]], "b": rows[j[keep]], "s": found.similarities[keep]}))
        frames.append(
            pd.DataFrame(
                {"a": rows, "b": np.full(len(rows), -1, dtype=np.int64), "s": found.max_similarity.astype(np.float32)}
            )
        )
    return pd.concat(frames, ignore_index=True)


def _load_vectors(work_dir: str, offsets: list[int]) -> tuple[np.ndarray, np.ndarray]:
    vecs, rids = [], []
    for off in offsets:
        side = _read_side(_side_path(work_dir, off))
        ok = np.flatnonzero(side["ok"].to_numpy())
        if len(ok):
            vecs.append(np.load(_side_path(work_dir, off, "vec", "npy")))
            rids.append(ok.astype(np.int64) + off)
    return np.concatenate(vecs), np.concatenate(rids)


def lookup_values(batch: pd.DataFrame, *, column: str | None) -> pd.DataFrame:
    """``column`` of the given row ids of a slice, as one payload per slice (any value type: bytes, dicts)."""
    blobs = []
    for item in batch.to_dict("records"):
        sl = Slice.from_item(item)
        wanted = np.asarray(loads(item["payload"]), dtype=np.int64)
        df = read_slice(sl, columns=[column])
        blobs.append(dumps((wanted, df[column].to_numpy()[wanted - sl.offset].tolist())))
    return pd.DataFrame({"blob": pd.Series(blobs, dtype=object)})


# ---------------------------------------------------------------------------------------------------
# pass 3: write (workers)


def _align(frame: pd.DataFrame, columns: list[str], promote: tuple[str, ...] = ()) -> pd.DataFrame:
    """Give a slice's rejected frame the columns and dtypes of the local engine's single
    ``concat(all unreadable rows, all duplicate rows)``: the union of columns (missing ones null), and
    the ``promote`` columns - those the other kind of row lacks - as concatenation with nulls turns them
    (integers to floats, booleans to objects), so the sidecar reads back the same."""
    frame = frame.reindex(columns=columns)
    for col in promote:
        if col in frame.columns and frame[col].dtype.kind in "iu":
            frame[col] = frame[col].astype("float64")
        elif col in frame.columns and frame[col].dtype.kind == "b":
            frame[col] = frame[col].astype(object)
    return frame


def _unreadable(df: pd.DataFrame, side: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """The readable-row mask and the unreadable rows with reason and detail (``rejected_unreadable``)."""
    ok = side["ok"].to_numpy(dtype=bool)
    rejected = keep_user_columns(df[~ok].copy(), PROVENANCE_COLUMNS)
    rejected["reason"] = side["err"].to_numpy()[~ok].tolist()
    rejected["detail"] = side["detail"].to_numpy()[~ok].tolist()
    return ok, rejected


def slice_decisions(good: pd.DataFrame, payload: dict | None, keys: Any, best: np.ndarray | None) -> Decisions:
    """Decisions for a slice's readable rows: the driver's for the rows it grouped (``payload``), kept
    singletons for the rest (group = own row id, size 1, no weight)."""
    rid = good.index.to_numpy(dtype=np.int64)
    n = len(rid)
    keep, group = np.ones(n, dtype=bool), rid.copy()
    size, weight = np.ones(n, dtype=np.int64), np.full(n, np.nan)
    dup_of, linked_by = np.full(n, None, dtype=object), np.full(n, None, dtype=object)
    if payload is not None and len(payload["rid"]):
        pos = np.searchsorted(rid, payload["rid"])
        keep[pos] = payload["keep"]
        group[pos] = payload["group"]
        size[pos] = payload["size"]
        weight[pos] = payload["weight"]
        dup_of[pos] = payload["dup_of"]
        linked_by[pos] = payload["linked_by"]
    return Decisions(keep, group, size, weight, dup_of, best, keys, linked_by)


def write_slice(op: Any, item: dict, job: SliceJob) -> pd.DataFrame:
    """Phase 3 on one slice: the operator's ``split`` of its readable rows, then shard + rejected parts."""
    sl = Slice.from_item(item)
    df = read_slice(sl)
    side = _read_side(_side_path(job.ctx.work_dir, sl.offset))
    ok, unreadable = _unreadable(df, side)
    good = df[ok]
    payload = loads(item["payload"]) if item.get("payload") else None
    best = None
    if op.search == "cosine":  # best scores by position in the slice; the readable rows' are kept
        best = (
            np.asarray(payload["best"], dtype=np.float64)[ok]
            if payload is not None and "best" in payload
            else np.full(len(good), np.nan)
        )
    decided = slice_decisions(good, payload, _slice_keys(op, side, job.ctx.work_dir, sl.offset), best)
    kept, dups = op.split(good, decided, job.keys)
    columns, promote = job.extra["rejected_columns"], tuple(job.extra["promote"])
    stats = write_outputs(
        sl.offset, len(df), kept, [("a", _align(unreadable, columns)), ("b", _align(dups, columns, promote))], job.ctx
    )
    return pd.DataFrame([stats.as_row()])


# ---------------------------------------------------------------------------------------------------
# orchestration (driver)


def run_dedup(run: StepRun) -> pd.DataFrame:
    """A dedup step: keys in tasks (or actors), the distributed search of ``op.search``, groups on the
    driver over the touched rows, then the write."""
    op = run.op
    search = getattr(op, "search", None)
    if search not in ("exact", "hamming", "cosine"):
        raise ValueError(f"{run.name}.search must be 'exact', 'hamming' or 'cosine', got {search!r}")
    dup_columns = _dry_run(run)
    clock = time.perf_counter()
    extra = {"partitions": run.partitions} if search == "exact" else {}
    slim = run.map_slices("dedup_keys", extra).materialize()
    readable = int(slim.count())
    run.log(f"{readable} readable keys of {run.rows} rows in {time.perf_counter() - clock:.1f}s")
    clock = time.perf_counter()
    best = None
    if search == "exact":
        rows, found = _exact_pairs(run, slim, readable)
    elif search == "hamming":
        rows, found = _hamming_pairs(run, slim, readable)
    else:
        rows, found, best = _cosine_pairs(run, slim, readable)
    run.log(f"{search} search: {len(rows)} rows with duplicates in {time.perf_counter() - clock:.1f}s")
    clock = time.perf_counter()
    groups = op.group(len(rows), found, rows["pv"].to_numpy(float))
    # Rows linked through a chain are measured against their kept row, from the touched rows' keys.
    groups = op.provenance(groups, _touched_keys(run, rows, search))
    run.log(f"grouped them on the driver in {time.perf_counter() - clock:.1f}s")
    return _write_groups(run, rows, groups, readable=readable, best=best, dup_columns=dup_columns)


def _touched_keys(run: StepRun, rows: pd.DataFrame, search: str) -> Any:
    """The keys of the touched rows, by position in ``rows``: hashes and key texts came back with them,
    vectors are read from the pass-1 side files when asked for (only the few rows a chain links)."""
    if search == "hamming":
        return rows["h"].to_numpy(np.uint64)
    if search == "exact":
        return rows["k"].to_numpy(dtype=object)
    return _RowVectors(run.ctx.work_dir, rows[ROW_ID].to_numpy(np.int64), run.slices)


class _RowVectors:
    """Vectors of some rows (``rid``, by position), read from the slices' side files when indexed."""

    def __init__(self, work_dir: str, rid: np.ndarray, slices: list[Slice]):
        self.work_dir, self.rid, self.slices = work_dir, rid, slices

    def __getitem__(self, positions) -> np.ndarray:
        wanted = self.rid[np.asarray(positions, dtype=np.int64)]
        out = np.zeros((len(wanted), 0), dtype=np.float32)
        for sl in self.slices:
            hit = np.flatnonzero((wanted >= sl.offset) & (wanted < sl.offset + sl.rows))
            if not len(hit):
                continue
            ok = _read_side(_side_path(self.work_dir, sl.offset))["ok"].to_numpy(dtype=bool)
            vectors = np.load(_side_path(self.work_dir, sl.offset, "vec", "npy"))
            if out.shape[1] != vectors.shape[1]:
                out = np.zeros((len(wanted), vectors.shape[1]), dtype=np.float32)
            out[hit] = vectors[(np.cumsum(ok) - 1)[wanted[hit] - sl.offset]]  # readable rows' order in the file
        return out


def _dry_run(run: StepRun) -> list[str]:
    """The operator's phase 3 on zero rows, on the driver: fails early on a bad ``keep`` (with the
    operator's own message) and tells which columns ``split`` gives duplicate rows."""
    op = run.op
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in run.input_columns})
    op.keep_values(empty, run.ctx.image_base, run.keys, num_workers=1)
    none = np.zeros(0)
    decided = Decisions(
        np.zeros(0, dtype=bool),
        np.zeros(0, dtype=np.int64),
        np.zeros(0, dtype=np.int64),
        none,
        np.empty(0, dtype=object),
        none if op.search == "cosine" else None,
        op.stack_keys([]),
    )
    _, dups = op.split(empty, decided, run.keys)
    return [str(c) for c in dups.columns if c not in set(run.input_columns)]


def _exact_pairs(run: StepRun, slim, readable: int) -> tuple[pd.DataFrame, Pairs]:
    """Rows with equal keys, brought together by a shuffle; as the local search, one item per key."""
    if readable:
        groups = _groupby(slim, "part", run.shuffle_partitions(readable)).map_groups(exact_group, batch_format="pandas")
        rows = groups.to_pandas()
    else:
        rows = pd.DataFrame()
    if not len(rows):
        rows = pd.DataFrame({ROW_ID: np.empty(0, np.int64), "k": pd.Series([], dtype=object), "pv": np.empty(0, float)})
    rows = rows.sort_values(ROW_ID, kind="stable").reset_index(drop=True)
    _, inverse = np.unique(rows["k"].to_numpy(dtype=object).astype(str), return_inverse=True)
    run.log(f"{len(rows)} rows share their key with another row")
    return rows, Pairs(np.empty((0, 2), dtype=np.int64), inverse=inverse.ravel().astype(np.int64))


def _hamming_pairs(run: StepRun, slim, readable: int) -> tuple[pd.DataFrame, Pairs]:
    """Pairs of distinct hashes within ``max_distance`` by the block-key shuffle, over the touched values."""
    t = int(run.op.max_distance)
    layout = _hamming.choose_key_layout(t, max(readable, 1))
    arrays = layout.arrays()
    k = _hamming.top_bits(layout, run.hash_partitions(readable))
    top_masks, top_start = _hamming.partition_masks(layout, k)
    if readable:
        emitted = slim.map_batches(
            hash_emit,
            batch_format="numpy",
            fn_kwargs={"arrays": arrays, "k": k, "top_masks": top_masks, "top_start": top_start},
        )
        shuffled_rows = readable * int(top_start[-1])
        edges = _groupby(emitted, "part", run.shuffle_partitions(shuffled_rows)).map_groups(
            hash_verify, batch_format="numpy", fn_kwargs={"t": t, "arrays": arrays, "k": k}
        )
        found = edges.to_pandas()
    else:
        shuffled_rows, found = 0, pd.DataFrame()
    a = found["a"].to_numpy(np.uint64) if len(found) else np.empty(0, np.uint64)
    b = found["b"].to_numpy(np.uint64) if len(found) else np.empty(0, np.uint64)
    d = found["d"].to_numpy(np.int64) if len(found) else np.empty(0, np.int64)
    items = np.unique(np.concatenate([a, b]))
    run.log(
        f"blocks {layout.widths} radii {layout.radii}, {shuffled_rows} rows shuffled into "
        f"{len(layout.widths) << k} partitions: {int((a != b).sum())} pairs within {t}, "
        f"{len(items)} hash values with duplicates"
    )
    rows = _touched(slim, "h", items, ["h", "pv"])
    pairs = a != b
    inverse = np.searchsorted(items, rows["h"].to_numpy(np.uint64))
    edge_array = np.column_stack([np.searchsorted(items, a[pairs]), np.searchsorted(items, b[pairs]), d[pairs]])
    return rows, Pairs(edge_array.reshape(-1, 3), inverse=inverse.astype(np.int64))


def _cosine_pairs(run: StepRun, slim, readable: int) -> tuple[pd.DataFrame, Pairs, np.ndarray]:
    """Pairs at ``threshold`` and each row's best similarity: every pair (blockwise, per pair of vector
    shards), or inside partitions when the operator's ``search`` says approximate (as the local engine)."""
    from dataflow.core.dedup import approximate

    threshold = float(run.op.threshold)
    dims = slim.unique("dim") if readable else []
    if len(dims) > 1:
        raise ValueError(f"{run.name}: vectors of different lengths {sorted(dims)}")
    if approximate(getattr(run.op, "vector_search", "exact"), readable):
        return _partitioned_pairs(run, slim, readable, threshold)
    shards = _vector_shards(run, run.vector_shard_rows(int(dims[0]) if len(dims) else 1))
    items = [{"payload": dumps((shards[i], shards[j]))} for i in range(len(shards)) for j in range(i, len(shards))]
    best = np.full(run.rows, np.nan, dtype=np.float64)
    a_parts, b_parts, s_parts = [], [], []
    if items:
        found = run.map_items(
            items, vector_pairs, {"work_dir": run.ctx.work_dir, "threshold": threshold}, num_cpus=run.options.num_cpus
        )
        for batch in found.iter_batches(batch_format="numpy", batch_size=1 << 20):
            is_best = batch["b"] < 0
            np.fmax.at(best, batch["a"][is_best], batch["s"][is_best].astype(np.float64))
            a_parts.append(batch["a"][~is_best])
            b_parts.append(batch["b"][~is_best])
            s_parts.append(batch["s"][~is_best])
    a = np.concatenate(a_parts) if a_parts else np.empty(0, np.int64)
    b = np.concatenate(b_parts) if b_parts else np.empty(0, np.int64)
    s = np.concatenate(s_parts) if s_parts else np.empty(0, np.float32)
    run.log(f"{readable} readable vectors in {len(shards)} shard(s), {len(a)} pairs >= {threshold}")
    return _pairs_of_rows(slim, a, b, s) + (best,)


def _pairs_of_rows(slim, a: np.ndarray, b: np.ndarray, s: np.ndarray) -> tuple[pd.DataFrame, Pairs]:
    """The touched slim rows (row ids ``a``, ``b`` of the pairs) and the pairs by position in them."""
    rows = _touched(slim, ROW_ID, np.unique(np.concatenate([a, b])), ["pv"])
    rid = rows[ROW_ID].to_numpy(np.int64)
    pairs = np.column_stack([np.searchsorted(rid, a), np.searchsorted(rid, b)])
    return rows, Pairs(pairs.reshape(-1, 2), np.asarray(s, dtype=np.float64))


# ---------------------------------------------------------------------------------------------------
# approximate cosine search: partitions are the unit of distribution


class _VectorLayout:
    """Where the readable rows' vectors are. The search numbers readable rows in row-id order (their
    *positions*, the row numbers the local engine's search sees); ``starts[k]`` is the first position in
    the ``k``-th slice with readable rows, whose vectors are the ``vec`` side file at ``offsets[k]``."""

    def __init__(self, work_dir: str, slices: list[Slice]):
        offsets, counts, rids = [], [], []
        for sl in slices:
            ok = np.flatnonzero(_read_side(_side_path(work_dir, sl.offset))["ok"].to_numpy(dtype=bool))
            if ok.size:
                offsets.append(sl.offset)
                counts.append(ok.size)
                rids.append(ok.astype(np.int64) + sl.offset)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.rid = np.concatenate(rids) if rids else np.empty(0, np.int64)  # row id of each position

    def arrays(self) -> dict:
        return {"offsets": self.offsets, "starts": self.starts}


def _gather(work_dir: str, layout: dict, positions: np.ndarray, files: dict) -> np.ndarray:
    """The vectors of the sorted ``positions``, read from the side files as the local search reads a
    memory-mapped input (``RowReader``: ``pread``, no page faults); ``files`` caches the task's readers."""
    from dataflow.algorithms.partitioned_search import RowReader

    starts, offsets = layout["starts"], layout["offsets"]
    which = np.searchsorted(starts, positions, side="right") - 1
    parts = []
    for k, lo, hi in zip(*_runs(which)):
        if k not in files:
            files[k] = RowReader(np.load(_side_path(work_dir, int(offsets[k]), "vec", "npy"), mmap_mode="r"))
        parts.append(files[k].take(positions[lo:hi] - starts[k]))
    return np.concatenate(parts) if parts else np.empty((0, 0), dtype=np.float32)


def _runs(values: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """(value, start, stop) of each run of equal values in a sorted array."""
    if not values.size:
        return [], [], []
    cut = np.flatnonzero(np.diff(values)) + 1
    lo = np.concatenate([[0], cut])
    hi = np.concatenate([cut, [values.size]])
    return values[lo].tolist(), lo.tolist(), hi.tolist()


def partition_assign(
    batch: pd.DataFrame,
    *,
    work_dir: str,
    layout: dict,
    centroids: np.ndarray,
    border: float,
    max_cells: int,
    chunk: int,
    queries: np.ndarray,
    query_rows: np.ndarray,
    threshold: float,
) -> pd.DataFrame:
    """Positions ``[lo, hi)``: each row's partitions (``kind`` 0: ``a`` position, ``b`` partition), and
    the exact pairs of the recall sample's rows with them (``kind`` 1: ``a < b`` positions). The range
    starts on a multiple of ``chunk``, and is assigned in the local search's chunks (same scores)."""
    from dataflow.algorithms import partitioned_search as ps

    frames, files = [], {}
    for item in batch.to_dict("records"):
        lo, hi = loads(item["payload"])
        vectors = _gather(work_dir, layout, np.arange(lo, hi, dtype=np.int64), files)
        rows, cells = ps.assign_partitions(vectors, centroids, border, max_cells, chunk)
        exact = ps.exact_pairs_with(queries, query_rows, vectors, lo, threshold)
        frames.append(pd.DataFrame({"kind": np.zeros(rows.size, np.int8), "a": rows + lo, "b": cells.astype(np.int64)}))
        frames.append(pd.DataFrame({"kind": np.ones(len(exact), np.int8), "a": exact[:, 0], "b": exact[:, 1]}))
    return pd.concat(frames, ignore_index=True)


def partition_search(batch: pd.DataFrame, *, work_dir: str, layout: dict, threshold: float) -> pd.DataFrame:
    """The exact search inside each partition of the task (positions): pairs ``a < b`` with their exact
    score ``s``, and rows ``b == -1`` carrying member ``a``'s best score in that partition."""
    from dataflow.algorithms.partitioned_search import search_partition

    frames, files = [], {}
    for item in batch.to_dict("records"):
        members, bounds = loads(item["payload"])
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            rows = members[lo:hi]
            pairs, sims, _, partner_sim = search_partition(_gather(work_dir, layout, rows, files), rows, threshold)
            frames.append(pd.DataFrame({"a": pairs[:, 0], "b": pairs[:, 1], "s": sims.astype(np.float32)}))
            frames.append(pd.DataFrame({"a": rows, "b": np.full(rows.size, -1, np.int64), "s": partner_sim}))
    if not frames:
        return pd.DataFrame({"a": np.empty(0, np.int64), "b": np.empty(0, np.int64), "s": np.empty(0, np.float32)})
    return pd.concat(frames, ignore_index=True)


def _partitioned_pairs(run: StepRun, slim, n: int, threshold: float) -> tuple[pd.DataFrame, Pairs, np.ndarray]:
    """The local engine's approximate search, distributed: the driver fits the partitions on the same
    sample, tasks assign ranges of rows (and find the recall sample's exact pairs there), tasks search
    whole partitions, the driver merges. Same pairs, best scores and manifest note as the local engine."""
    from dataflow.algorithms import partitioned_search as ps
    from dataflow.core.dedup import RECALL_SAMPLE

    layout = _VectorLayout(run.ctx.work_dir, run.slices)
    kwargs = {"work_dir": run.ctx.work_dir, "layout": layout.arrays()}
    best = np.full(run.rows, np.nan, dtype=np.float64)
    if n < 2:  # as the local search: nothing to pair, one partition
        run.ctx.call.notes["pair_search"] = ps.search_note(
            ps.PartitionStats(1, float(n), n, 0), n, None, 0, RECALL_SAMPLE
        )
        empty = np.empty(0, np.int64)
        return _pairs_of_rows(slim, empty, empty, np.empty(0)) + (best,)
    n_partitions = ps.default_partitions(n)
    sample = _gather(run.ctx.work_dir, kwargs["layout"], ps.sample_rows(n, n_partitions), {})
    centroids = ps.fit_partitions(sample, n_partitions)
    query_rows = ps.recall_rows(n, RECALL_SAMPLE)
    queries = _gather(run.ctx.work_dir, kwargs["layout"], query_rows, {})
    chunk, shard_rows = ps.rows_per_chunk(len(centroids)), run.vector_shard_rows(sample.shape[1])
    step = max(1, shard_rows // chunk) * chunk  # whole chunks of the local search
    items = [{"payload": dumps((lo, min(lo + step, n)))} for lo in range(0, n, step)]
    assigned = run.map_items(
        items,
        partition_assign,
        {
            **kwargs,
            "centroids": centroids,
            "border": ps.BORDER,
            "max_cells": ps.MAX_CELLS,
            "chunk": chunk,
            "queries": queries,
            "query_rows": query_rows,
            "threshold": threshold,
        },
        num_cpus=run.options.num_cpus,
    ).to_pandas()
    member = assigned["kind"].to_numpy() == 0
    rows, cells = assigned["a"].to_numpy(np.int64)[member], assigned["b"].to_numpy(np.int64)[member]
    exact = assigned[["a", "b"]].to_numpy(np.int64)[~member]
    _, partitions = ps.partition_members(rows, cells)
    sizes = np.array([p.size for p in partitions], dtype=np.int64)
    searched = [p for p in partitions if p.size > 1]
    found = _search_partitions(run, searched, {**kwargs, "threshold": threshold}, shard_rows)
    is_best = found["b"].to_numpy() < 0
    a, b, s = (found[c].to_numpy() for c in ("a", "b", "s"))
    np.fmax.at(best, layout.rid[a[is_best]], s[is_best].astype(np.float64))
    pairs, sims = ps.unique_pairs([np.column_stack([a[~is_best], b[~is_best]])], [s[~is_best]], n)
    stats = ps.PartitionStats(
        n_partitions=len(centroids),
        cells_per_row=rows.size / n,
        largest_partition=int(sizes.max()) if sizes.size else 0,
        compared_pairs=int((sizes * (sizes - 1) // 2).sum()),
    )
    recall, exact_pairs = ps.recall_of(exact, pairs, n)
    note = ps.search_note(stats, n, recall, exact_pairs, RECALL_SAMPLE)
    run.ctx.call.notes["pair_search"] = note
    run.log(
        f"approximate search: {note['partitions']} partitions, {note['partitions_per_row']} per row, "
        f"{len(searched)} searched in tasks; {len(pairs)} pairs >= {threshold}; recall on "
        f"{note['recall_sample_rows']} sampled rows' {exact_pairs} exact pairs: {note['recall_estimate']}"
    )
    return _pairs_of_rows(slim, layout.rid[pairs[:, 0]], layout.rid[pairs[:, 1]], sims) + (best,)


def _search_partitions(run: StepRun, partitions: list[np.ndarray], kwargs: dict, shard_rows: int) -> pd.DataFrame:
    """``partition_search`` over whole partitions, packed into tasks of about equal cost (pairs scored):
    a task per partition would spend more on scheduling than on the search (thousands of ~10 ms ones)."""
    if not partitions:
        return partition_search(pd.DataFrame({"payload": []}), **kwargs)
    cost = np.cumsum([p.size * p.size for p in partitions], dtype=np.float64)
    members = sum(p.size for p in partitions)
    tasks = int(min(len(partitions), max(4 * run.engine.cpus, -(-members // shard_rows))))
    cuts = np.searchsorted(cost, cost[-1] * np.arange(1, tasks) / tasks, side="right")
    items = []
    for group in np.split(np.arange(len(partitions)), np.unique(cuts)):
        if group.size:
            chosen = [partitions[i] for i in group.tolist()]
            bounds = np.concatenate([[0], np.cumsum([p.size for p in chosen])]).astype(np.int64)
            items.append({"payload": dumps((np.concatenate(chosen), bounds))})
    return run.map_items(items, partition_search, kwargs, num_cpus=run.options.num_cpus).to_pandas()


def _groupby(ds, key: str, partitions: int):
    """``ds.groupby(key)`` into ``partitions`` output partitions (Ray Data versions without the argument
    choose their own)."""
    try:
        return ds.groupby(key, num_partitions=partitions)
    except TypeError:
        return ds.groupby(key)


def _touched(slim, column: str, values: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """The slim rows whose ``column`` is in ``values``, sorted by row id (only they reach the driver)."""
    wanted = [ROW_ID] + [c for c in columns if c != ROW_ID]
    if not len(values):
        return pd.DataFrame(
            {c: np.empty(0, np.uint64 if c == "h" else np.int64 if c == ROW_ID else float) for c in wanted}
        )
    hits = slim.map_batches(touched_rows, batch_format="numpy", fn_kwargs={"column": column, "values": values})
    rows = hits.select_columns(wanted).to_pandas()
    return rows.sort_values(ROW_ID, kind="stable").reset_index(drop=True)


def _rejected_columns(
    input_columns: list[str], any_unreadable: bool, any_dups: bool, dup_columns: list[str]
) -> tuple[list[str], list[str]]:
    """The columns of the local engine's ``concat(unreadable, dups)`` (empty frames left out), and the
    duplicate columns that concatenation fills with nulls for unreadable rows (so promotes)."""
    cols = [user_column_name(c, input_columns) for c in input_columns] + ["reason"]
    if any_unreadable:
        cols.append("detail")
    extra = [c for c in dup_columns if c not in cols]
    if any_dups:
        cols += extra
    return cols, (extra if any_unreadable and any_dups else [])


def _payloads_by_slice(slices: list[Slice], rid: np.ndarray, make) -> list[bytes]:
    """Per slice, ``dumps(make(lo, hi))`` of the decisions whose row ids fall in it (rid sorted)."""
    out = []
    for sl in slices:
        lo, hi = np.searchsorted(rid, [sl.offset, sl.offset + sl.rows])
        out.append(dumps(make(int(lo), int(hi))) if hi > lo else b"")
    return out


def _lookup(run: StepRun, rids: np.ndarray, column: str | None) -> dict[int, Any]:
    """``{row id: value of column}`` for a few rows (the kept rows that duplicates point at)."""
    rids = np.unique(np.asarray(rids, dtype=np.int64))
    if not len(rids):
        return {}
    if column is None:  # no image column: duplicates point at the kept row's label, its row id
        return {int(r): int(r) for r in rids}
    items = []
    for sl in run.slices:
        lo, hi = np.searchsorted(rids, [sl.offset, sl.offset + sl.rows])
        if hi > lo:
            items.append({**sl.as_item(), "payload": dumps(rids[lo:hi])})
    out: dict[int, Any] = {}
    for blob in run.map_items(items, lookup_values, {"column": column}, num_gpus=0).to_pandas()["blob"].tolist():
        wanted, values = loads(blob)
        out.update((r, row_name(v, r)) for r, v in zip(wanted.tolist(), values))
    return out


def _write_groups(
    run: StepRun, rows: pd.DataFrame, groups, *, readable: int, best: np.ndarray | None, dup_columns: list[str]
) -> pd.DataFrame:
    """Pass 3: each slice's decisions (touched rows only, plus every row's best score for cosine)."""
    rid = rows[ROW_ID].to_numpy(np.int64)
    keeper = rid[groups.group_id] if len(rid) else np.empty(0, np.int64)
    dropped = ~groups.keep
    clock = time.perf_counter()
    image_key = run.op.image_key(run.keys, run.input_columns)
    linked = groups.linked if groups.linked is not None else np.full(len(rid), -1, dtype=np.int64)
    via = np.flatnonzero(linked >= 0)
    images = _lookup(run, np.concatenate([keeper[dropped], rid[linked[via]]]), image_key)
    run.log(f"looked up {len(images)} kept rows' {image_key or 'row ids'} in {time.perf_counter() - clock:.1f}s")
    dup_of = np.full(len(rid), None, dtype=object)
    dup_of[dropped] = [images[int(x)] for x in keeper[dropped]]
    linked_by = np.full(len(rid), None, dtype=object)
    linked_by[via] = [images[int(x)] for x in rid[linked[via]]]

    def make(lo: int, hi: int) -> dict:
        return {
            "rid": rid[lo:hi],
            "keep": groups.keep[lo:hi],
            "group": keeper[lo:hi],
            "size": groups.group_size[lo:hi],
            "weight": groups.weight[lo:hi],
            "dup_of": dup_of[lo:hi],
            "linked_by": linked_by[lo:hi],
        }

    clock = time.perf_counter()
    payloads = _payloads_by_slice(run.slices, rid, make)
    if best is not None:  # every slice needs its rows' best scores, duplicates or not
        payloads = [_with_best(p, sl, best) for p, sl in zip(payloads, run.slices)]
    n_dups = int(dropped.sum())
    run.log(f"{n_dups} duplicates in {int((groups.keep & (groups.group_size > 1)).sum())} groups")
    columns, promote = _rejected_columns(run.input_columns, readable < run.rows, n_dups > 0, dup_columns)
    stats = run.map_slices(
        "dedup_write", {"rejected_columns": columns, "promote": promote}, payloads=payloads, actors=False, num_gpus=0
    ).to_pandas()
    run.log(f"wrote {len(run.slices)} slice(s) in {time.perf_counter() - clock:.1f}s")
    return stats


def _with_best(payload: bytes, sl: Slice, best: np.ndarray) -> bytes:
    data = loads(payload) if payload else {"rid": np.empty(0, np.int64)}
    data["best"] = best[sl.offset : sl.offset + sl.rows]  # by position in the slice; the writer picks readable rows
    return dumps(data)


def _vector_shards(run: StepRun, shard_rows: int) -> list[list[int]]:
    """Consecutive slices grouped into vector shards of about ``shard_rows`` readable rows."""
    shards, current, size = [], [], 0
    for sl in run.slices:
        n = int(_read_side(_side_path(run.ctx.work_dir, sl.offset))["ok"].sum())
        if not n:
            continue
        if current and size + n > shard_rows:
            shards.append(current)
            current, size = [], 0
        current.append(sl.offset)
        size += n
    if current:
        shards.append(current)
    return shards


def shard_rows_for(dim: int, budget_bytes: int = 128 << 20) -> int:
    """Rows per vector shard: a pair of shards of float32 vectors takes about ``budget_bytes``."""
    return max(1024, int(budget_bytes / (2 * 4 * max(1, dim))))


__all__ = ["run_dedup", "shard_rows_for"]
