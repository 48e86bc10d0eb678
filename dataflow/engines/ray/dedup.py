"""Whole-dataset dedup operators on Ray Data, distributed rather than collected onto one node.

Every dedup runs in three passes over the step's slices:

1. *prepare* (``map_batches``, tasks or an actor pool): per row, the operator's own hashing / vector code
   (content hash, perceptual hash, embedding or histogram); unreadable rows are recorded with their
   reason; a small per-slice side file keeps what pass 3 needs.
2. *find duplicates*: a shuffle (``groupby(...).map_groups``) groups rows that can be duplicates -
   equal content hashes; perceptual hashes sharing a block key (see ``_hamming``); for vectors, a task
   per pair of vector shards runs the blockwise cosine search. Only the duplicate edges, and the few
   columns of the rows they touch, come back to the driver, which applies
   :func:`dataflow.algorithms.grouping.group_duplicates` and the keep policy to those rows alone.
3. *write* (``map_batches``): each slice is written with its kept rows, its rejected rows and their
   reasons, using the decisions for the rows in its range (shipped with the slice's descriptor).

Results are identical to the local engine: the same kept rows in the same order, the same rejected
rows with the same reasons, ``duplicate_of``, distances / similarities and group ids.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dataflow.engines.ray import _hamming
from dataflow.engines.ray.io import ROW_ID, Slice, read_slice
from dataflow.engines.ray.rowwise import SliceJob, dumps, loads, write_outputs
from dataflow.storage.atomic import atomic_path
from dataflow.storage.formats import read_table, write_table

if TYPE_CHECKING:
    from dataflow.engines.ray.runner import StepRun

# ---------------------------------------------------------------------------------------------------
# pass 1 helpers (run in workers)


def _side_path(job: SliceJob, offset: int, kind: str = "slim", ext: str = "parquet") -> Path:
    return Path(job.ctx.work_dir) / f"{kind}-{offset:012d}.{ext}"


def _write_side(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        write_table(df, tmp, "parquet")


def _read_side(path: Path) -> pd.DataFrame:
    return read_table(path, "parquet")[0]


def _results_side(results: list) -> pd.DataFrame:
    return pd.DataFrame({"ok": np.array([r.error is None for r in results], dtype=bool),
                         "err": pd.Series([r.error for r in results], dtype=object),
                         "detail": pd.Series([r.detail for r in results], dtype=object)})


def keep_values(good: pd.DataFrame, keep: str, image_key: str, base_dir: str) -> np.ndarray:
    """Per readable row, the value the keep policy ranks by (what ``_dedup.keep_ranks`` reads)."""
    from dataflow.core.parallel import map_items
    from dataflow.operators.core_vision._dedup import KEEP_HELP, _pixels

    if keep == "first":
        return np.zeros(len(good))
    if keep == "largest":
        if {"width", "height"} <= set(good.columns):
            sizes = pd.to_numeric(good["width"], errors="coerce") * pd.to_numeric(good["height"], errors="coerce")
        else:
            results = map_items(_pixels, good[image_key].tolist(), num_workers=1, desc="", base_dir=base_dir)
            sizes = [r.value if r.error is None else np.nan for r in results]
        return np.asarray(sizes, dtype=float)
    if keep not in good.columns:
        raise KeyError(f"keep={keep!r} is not a column (columns: {', '.join(map(str, good.columns))}); {KEEP_HELP}")
    return pd.to_numeric(good[keep], errors="coerce").to_numpy(float)


def _slim(offset: int, n: int, ok: np.ndarray, **columns) -> pd.DataFrame:
    rid = np.arange(offset, offset + n, dtype=np.int64)[ok]
    return pd.DataFrame({ROW_ID: rid, **columns})


def exact_prepare(op: Any, item: dict, job: SliceJob) -> pd.DataFrame:
    """Content hash per row (the operator's ``content_hash``), partitioned by hash prefix."""
    from dataflow.core.parallel import map_items
    from dataflow.core.images import image_column
    from dataflow.operators.core_vision.filter.image_exact_deduplicate_filter import content_hash

    sl = Slice.from_item(item)
    df = read_slice(sl)
    sources = image_column(df, job.keys["input_image_key"], job.ctx.name)
    results = map_items(content_hash, sources, num_workers=1, desc="", base_dir=job.ctx.image_base, on=op.on,
                        max_pixels=op.max_pixels)
    side = _results_side(results)
    side["hash"] = pd.Series([r.value if r.error is None else None for r in results], dtype=object)
    _write_side(side, _side_path(job, sl.offset))
    ok = side["ok"].to_numpy()
    hashes = [r.value for r in results if r.error is None]
    parts = np.array([int(h[:8], 16) % job.extra["partitions"] for h in hashes], dtype=np.int64)
    return _slim(sl.offset, len(df), ok, hash=pd.Series(hashes, dtype=object), part=parts)


def hash_prepare(op: Any, item: dict, job: SliceJob) -> pd.DataFrame:
    """Perceptual hash per row (the operator's own code: from a hash column or from the images)."""
    from dataflow.operators.core_vision._hashing import compute_hashes
    from dataflow.core.images import image_column

    sl = Slice.from_item(item)
    df = read_slice(sl)
    keys = job.keys
    if keys.get("input_hash_key"):
        hashes, results = op._hashes_from_column(df, keys["input_hash_key"])
    else:
        sources = image_column(df, keys["input_image_key"], job.ctx.name)
        hashes, results = compute_hashes(sources, job.ctx.image_base, method=op.method, hash_size=op.hash_size,
                                          draft=op.draft, num_workers=1, max_pixels=op.max_pixels)
    side = _results_side(results)
    _write_side(side, _side_path(job, sl.offset))
    ok = side["ok"].to_numpy()
    pv = keep_values(df[ok], op.keep, keys["input_image_key"], job.ctx.image_base)
    return _slim(sl.offset, len(df), ok, h=np.asarray(hashes, dtype=np.uint64)[ok], pv=pv)


def _vector_image_key(job: SliceJob, df: pd.DataFrame) -> str | None:
    key = job.keys.get("input_image_key")
    if job.ctx.name == "ImageEmbeddingDeduplicateFilter":
        return key or ("image" if "image" in df.columns else None)
    return key


def vector_prepare(op: Any, item: dict, job: SliceJob) -> pd.DataFrame:
    """Unit vector per row (embedding column, colour histogram or CLIP embedding) into a side file."""
    from dataflow.core.parallel import map_items
    from dataflow.operators.core_vision._dedup import vectors_from_column
    from dataflow.core.images import image_column

    sl = Slice.from_item(item)
    df = read_slice(sl)
    keys, name = job.keys, job.ctx.name
    if name == "ImageEmbeddingDeduplicateFilter":
        _, results = vectors_from_column(df, keys["input_embedding_key"], name)
    elif name == "ImageHistogramDeduplicateFilter" and keys.get("input_histogram_key"):
        _, results = vectors_from_column(df, keys["input_histogram_key"], name)
    elif name == "ImageHistogramDeduplicateFilter":
        from dataflow.operators.core_vision.eval.image_histogram_evaluator import histogram_of

        sources = image_column(df, keys["input_image_key"], name)
        results = map_items(histogram_of, sources, num_workers=1, desc="", base_dir=job.ctx.image_base,
                            bins=op.bins, max_pixels=op.max_pixels)
    elif keys.get("input_embedding_key"):  # ImageDeduplicateFilter reusing a column
        _, results = vectors_from_column(df, keys["input_embedding_key"], name)
    else:  # ImageDeduplicateFilter: the model, loaded once per actor
        from dataflow.operators.core_vision._embedding import embed_images

        sources = image_column(df, keys["input_image_key"], name)
        results = embed_images(op._models.get(), sources, job.ctx.image_base, batch_size=op.batch_size,
                               num_workers=1)
    side = _results_side(results)
    ok = side["ok"].to_numpy()
    good = [r.value for r in results if r.error is None]
    if good:
        vectors = np.stack(good)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = (vectors / np.where(norms > 0, norms, 1)).astype(np.float32)
        np.save(_side_path(job, sl.offset, "vec", "npy"), vectors)
    dim = int(good[0].shape[0]) if good else -1
    _write_side(side, _side_path(job, sl.offset))
    image_key = _vector_image_key(job, df)
    pv = keep_values(df[ok], op.keep, image_key or "", job.ctx.image_base)
    return _slim(sl.offset, len(df), ok, pv=pv, dim=np.full(int(ok.sum()), dim, dtype=np.int64))


# ---------------------------------------------------------------------------------------------------
# pass 2 UDFs (run in workers)


def exact_group(group: pd.DataFrame) -> pd.DataFrame:
    """Rows of one hash partition: every row whose hash was seen at a smaller row id, with that row."""
    group = group.sort_values(["hash", ROW_ID], kind="stable")
    first = group.groupby("hash", sort=False)[ROW_ID].transform("first").to_numpy()
    rid = group[ROW_ID].to_numpy()
    dup = rid != first
    return pd.DataFrame({ROW_ID: rid[dup], "keeper": first[dup]})


def hash_emit(batch: dict, *, arrays: dict, k: int, top_masks: np.ndarray, top_start: np.ndarray) -> dict:
    parts, hashes = _hamming.emit_partitions(np.ascontiguousarray(batch["h"], dtype=np.uint64), arrays["shifts"],
                                             arrays["widths"], k, top_masks, top_start)
    return {"part": parts, "h": hashes}


def hash_verify(batch: dict, *, t: int, arrays: dict, k: int) -> dict:
    a, b, d = _hamming.verify_partition(int(batch["part"][0]), batch["h"], t, arrays, k)
    return {"a": a, "b": b, "d": d}


def touched_rows(batch: dict, *, column: str, values: np.ndarray) -> dict:
    """Rows of the slim table whose ``column`` value is in ``values`` (sorted)."""
    col = batch[column]
    pos = np.searchsorted(values, col)
    hit = (pos < len(values)) & (values[np.minimum(pos, len(values) - 1)] == col) if len(values) else \
        np.zeros(len(col), dtype=bool)
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
        frames.append(pd.DataFrame({"a": rows, "b": np.full(len(rows), -1, dtype=np.int64),
                                    "s": found.max_similarity.astype(np.float32)}))
    return pd.concat(frames, ignore_index=True)


def _load_vectors(work_dir: str, offsets: list[int]) -> tuple[np.ndarray, np.ndarray]:
    vecs, rids = [], []
    for off in offsets:
        side = _read_side(Path(work_dir) / f"slim-{off:012d}.parquet")
        ok = np.flatnonzero(side["ok"].to_numpy())
        if len(ok):
            vecs.append(np.load(Path(work_dir) / f"vec-{off:012d}.npy"))
            rids.append(ok.astype(np.int64) + off)
    return np.concatenate(vecs), np.concatenate(rids)


def lookup_values(batch: pd.DataFrame, *, column: str | None) -> pd.DataFrame:
    """``column`` of the given row ids of a slice, pickled per slice (any value type: bytes, dicts)."""
    blobs = []
    for item in batch.to_dict("records"):
        sl = Slice.from_item(item)
        wanted = np.asarray(loads(item["payload"]), dtype=np.int64)
        df = read_slice(sl, columns=[column])
        blobs.append(dumps((wanted, df[column].to_numpy()[wanted - sl.offset].tolist())))
    return pd.DataFrame({"blob": pd.Series(blobs, dtype=object)})


# ---------------------------------------------------------------------------------------------------
# pass 3: write (run in workers)


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
    ok = side["ok"].to_numpy(dtype=bool)
    rejected = df[~ok].copy()
    rejected["reason"] = side["err"].to_numpy()[~ok].tolist()
    rejected["detail"] = side["detail"].to_numpy()[~ok].tolist()
    return ok, rejected


def write_task(batch: pd.DataFrame, job: SliceJob) -> pd.DataFrame:
    fn = {"exact_write": _exact_write, "groups_write": _groups_write}[job.kind]
    rows = [fn(item, job).as_row() for item in batch.to_dict("records")]
    return pd.DataFrame(rows)


def _exact_write(item: dict, job: SliceJob):
    sl = Slice.from_item(item)
    df = read_slice(sl)
    side = _read_side(_side_path(job, sl.offset))
    ok, unreadable = _unreadable(df, side)
    good = df[ok]
    pay = loads(item["payload"]) if item["payload"] else {"rid": np.empty(0, np.int64), "dup_of": []}
    is_dup = np.isin(good.index.to_numpy(), pay["rid"])
    dups = good[is_dup].copy()
    dups["reason"] = "exact_duplicate"
    dup_of = dict(zip(pay["rid"].tolist(), pay["dup_of"]))
    dups["duplicate_of"] = pd.Series([dup_of[r] for r in dups.index.tolist()], index=dups.index)
    out = good[~is_dup].copy()
    if job.keys.get("output_hash_key"):
        out[job.keys["output_hash_key"]] = side["hash"].to_numpy()[ok][~is_dup]
    columns, promote = job.extra["rejected_columns"], tuple(job.extra["promote"])
    return write_outputs(sl.offset, len(df), out,
                         [("a", _align(unreadable, columns)), ("b", _align(dups, columns, promote))], job.ctx)


def _groups_write(item: dict, job: SliceJob):
    """Hash and vector dedup: kept rows with group id and size (and the vector score), dropped rows with
    reason ``near_duplicate``, ``duplicate_of``, the weight and the group."""
    sl = Slice.from_item(item)
    df = read_slice(sl)
    side = _read_side(_side_path(job, sl.offset))
    ok, unreadable = _unreadable(df, side)
    good = df[ok]
    n = len(good)
    rid = good.index.to_numpy(dtype=np.int64)
    keep = np.ones(n, dtype=bool)
    group = rid.copy()
    size = np.ones(n, dtype=np.int64)
    weight = np.full(n, np.nan)
    dup_of = np.empty(n, dtype=object)
    pay = loads(item["payload"]) if item["payload"] else None
    if pay is not None and "keep" in pay and len(pay["rid"]):
        pos = np.searchsorted(rid, pay["rid"])
        keep[pos] = pay["keep"]
        group[pos] = pay["group"]
        size[pos] = pay["size"]
        weight[pos] = pay["weight"]
        dup_of[pos] = pay["dup_of"]
    extra = job.extra
    group_key = job.keys.get("output_group_key")
    kept = good[keep].copy()
    if group_key:
        kept[group_key] = group[keep]
        kept[f"{group_key}_size"] = size[keep]
    if extra.get("score_key"):
        best = np.asarray(pay["best"], dtype=np.float64)[ok] if pay is not None else np.full(n, np.nan)
        kept[extra["score_key"]] = best[keep]
    dups = good[~keep].copy()
    dups["reason"] = "near_duplicate"
    dups["duplicate_of"] = pd.Series(dup_of[~keep].tolist(), index=dups.index, dtype=None)
    dups[extra["weight_name"]] = weight[~keep]
    if extra["weight_name"] == "distance" and len(dups):
        dups["distance"] = dups["distance"].astype("int64")
    dups["group"] = group[~keep]
    columns, promote = extra["rejected_columns"], tuple(extra["promote"])
    return write_outputs(sl.offset, len(df), kept,
                         [("a", _align(unreadable, columns)), ("b", _align(dups, columns, promote))], job.ctx)


# ---------------------------------------------------------------------------------------------------
# orchestration (driver)


def _rejected_columns(input_columns: list[str], any_unreadable: bool, any_dups: bool, dup_columns: list[str]
                      ) -> tuple[list[str], list[str]]:
    """The columns of the local engine's ``concat(unreadable, dups)`` (empty frames left out), and the
    duplicate columns that concatenation fills with nulls for unreadable rows (so promotes)."""
    cols = list(input_columns) + ["reason"]
    if any_unreadable:
        cols.append("detail")
    if any_dups:
        cols += [c for c in dup_columns if c not in cols]
    return cols, (list(dup_columns) if any_unreadable and any_dups else [])


def _payloads_by_slice(slices: list[Slice], rid: np.ndarray, make) -> list[bytes]:
    """Per slice, ``dumps(make(lo, hi))`` of the decisions whose row ids fall in it (rid sorted)."""
    out = []
    for sl in slices:
        lo, hi = np.searchsorted(rid, [sl.offset, sl.offset + sl.rows])
        out.append(dumps(make(int(lo), int(hi))) if hi > lo else b"")
    return out


def _lookup(run: "StepRun", slices: list[Slice], rids: np.ndarray, column: str | None) -> dict[int, Any]:
    """``{row id: value of column}`` for a few rows (the kept rows that duplicates point at)."""
    rids = np.unique(np.asarray(rids, dtype=np.int64))
    if not len(rids):
        return {}
    if column is None:  # no image column: duplicates point at the kept row's position
        return {int(r): int(r) for r in rids}
    items = []
    for sl in slices:
        lo, hi = np.searchsorted(rids, [sl.offset, sl.offset + sl.rows])
        if hi > lo:
            items.append({**sl.as_item(), "payload": dumps(rids[lo:hi])})
    out: dict[int, Any] = {}
    for blob in run.map_items(items, lookup_values, {"column": column}).to_pandas()["blob"].tolist():
        wanted, values = loads(blob)
        out.update(zip(wanted.tolist(), values))
    return out


def _count(ds) -> int:
    return int(ds.count())


def run_exact(run: "StepRun") -> pd.DataFrame:
    """ImageExactDeduplicateFilter: hash rows in tasks, group equal hashes by a shuffle, keep the first."""
    op, keys = run.op, run.keys
    slim = run.map_slices("exact_prepare", {"partitions": run.partitions}).materialize()
    readable = _count(slim)
    groups = _groupby(slim, "part", run.shuffle_partitions(readable)).map_groups(exact_group, batch_format="pandas")
    dups = groups.to_pandas()
    dups = dups.sort_values(ROW_ID) if len(dups) else pd.DataFrame({ROW_ID: np.empty(0, np.int64),
                                                                    "keeper": np.empty(0, np.int64)})
    run.log(f"{readable} readable rows, {len(dups)} exact duplicates")
    images = _lookup(run, run.slices, dups["keeper"].to_numpy(), keys["input_image_key"])
    rid = dups[ROW_ID].to_numpy(np.int64)
    dup_of = [images[int(k)] for k in dups["keeper"].tolist()]
    payloads = _payloads_by_slice(run.slices, rid, lambda lo, hi: {"rid": rid[lo:hi], "dup_of": dup_of[lo:hi]})
    columns, promote = _rejected_columns(run.input_columns, readable < run.rows, len(dups) > 0, ["duplicate_of"])
    return run.write_slices("exact_write", payloads, {"rejected_columns": columns, "promote": promote})


def run_hash(run: "StepRun") -> pd.DataFrame:
    """ImageHashDeduplicateFilter: hash rows in tasks; shuffle block keys; verify groups; group on the driver."""
    from dataflow.algorithms.grouping import group_duplicates, keep_priority

    op, keys = run.op, run.keys
    _check_keep_column(run, op.keep)
    clock = time.perf_counter()
    slim = run.map_slices("hash_prepare", {}).materialize()
    readable = _count(slim)
    run.log(f"{readable} readable hashes of {run.rows} rows in {time.perf_counter() - clock:.1f}s")
    clock = time.perf_counter()
    layout = _hamming.choose_key_layout(op.max_distance, max(readable, 1))
    arrays = layout.arrays()
    k = _hamming.top_bits(layout, run.hash_partitions(readable))
    top_masks, top_start = _hamming.partition_masks(layout, k)
    emitted = slim.map_batches(hash_emit, batch_format="numpy", fn_kwargs={
        "arrays": arrays, "k": k, "top_masks": top_masks, "top_start": top_start})
    shuffled_rows = readable * int(top_start[-1])
    edges = _groupby(emitted, "part", run.shuffle_partitions(shuffled_rows)).map_groups(
        hash_verify, batch_format="numpy", fn_kwargs={"t": op.max_distance, "arrays": arrays, "k": k})
    found = edges.to_pandas()
    a = found["a"].to_numpy(np.uint64) if len(found) else np.empty(0, np.uint64)
    b = found["b"].to_numpy(np.uint64) if len(found) else np.empty(0, np.uint64)
    d = found["d"].to_numpy(np.int64) if len(found) else np.empty(0, np.int64)
    touched = np.unique(np.concatenate([a, b]))
    run.log(f"blocks {layout.widths} radii {layout.radii}, {shuffled_rows} rows shuffled into "
            f"{len(layout.widths) << k} partitions: {int((a != b).sum())} pairs within {op.max_distance}, "
            f"{len(touched)} hash values with duplicates, in {time.perf_counter() - clock:.1f}s")
    clock = time.perf_counter()
    rows = _touched(slim, "h", touched, ["h", "pv"])
    pairs = a != b
    items = touched
    inverse = np.searchsorted(items, rows["h"].to_numpy(np.uint64))
    edge_array = np.column_stack([np.searchsorted(items, a[pairs]), np.searchsorted(items, b[pairs]), d[pairs]])
    n = len(rows)
    pv = rows["pv"].to_numpy(float)
    priority = keep_priority(op.keep, n, sizes=pv, columns={op.keep: pv})
    groups = group_duplicates(n, edge_array.reshape(-1, 3), priority=priority, transitive=op.transitive,
                              closer="smaller", inverse=inverse)
    run.log(f"grouped {n} rows with duplicates on the driver in {time.perf_counter() - clock:.1f}s")
    return _write_groups(run, rows, groups, weight_name="distance", image_key=keys["input_image_key"],
                         readable=readable)


def run_vectors(run: "StepRun") -> pd.DataFrame:
    """Vector dedup filters: vectors per row, blockwise cosine search per pair of vector shards (exact,
    every pair found), groups on the driver."""
    from dataflow.algorithms.grouping import group_duplicates, keep_priority

    op, keys = run.op, run.keys
    _check_keep_column(run, op.keep)
    slim = run.map_slices("vector_prepare", {}, actors=run.actors).materialize()
    readable = _count(slim)
    dims = slim.unique("dim") if readable else []
    if len(dims) > 1:
        raise ValueError(f"{run.name}: vectors of different lengths {sorted(dims)}")
    shards = _vector_shards(run, run.vector_shard_rows(int(dims[0]) if len(dims) else 1))
    items = [{"payload": dumps((shards[i], shards[j]))} for i in range(len(shards)) for j in range(i, len(shards))]
    best = np.full(run.rows, np.nan, dtype=np.float64)
    a_parts, b_parts, s_parts = [], [], []
    if items:
        found = run.map_items(items, vector_pairs, {"work_dir": run.ctx.work_dir, "threshold": float(op.threshold)},
                              num_cpus=run.options.num_cpus)
        for batch in found.iter_batches(batch_format="numpy", batch_size=1 << 20):
            is_best = batch["b"] < 0
            np.fmax.at(best, batch["a"][is_best], batch["s"][is_best].astype(np.float64))
            a_parts.append(batch["a"][~is_best])
            b_parts.append(batch["b"][~is_best])
            s_parts.append(batch["s"][~is_best])
    a = np.concatenate(a_parts) if a_parts else np.empty(0, np.int64)
    b = np.concatenate(b_parts) if b_parts else np.empty(0, np.int64)
    s = np.concatenate(s_parts) if s_parts else np.empty(0, np.float32)
    touched = np.unique(np.concatenate([a, b]))
    run.log(f"{readable} readable vectors in {len(shards)} shard(s), {len(a)} pairs >= {op.threshold}")
    rows = _touched(slim, ROW_ID, touched, ["pv"])
    rid = rows[ROW_ID].to_numpy(np.int64)
    n = len(rows)
    pv = rows["pv"].to_numpy(float)
    priority = keep_priority(op.keep, n, sizes=pv, columns={op.keep: pv})
    pairs = np.column_stack([np.searchsorted(rid, a), np.searchsorted(rid, b)])
    groups = group_duplicates(n, pairs.reshape(-1, 2), s.astype(np.float64), priority=priority,
                              transitive=op.transitive, closer="larger")
    image_key = keys.get("input_image_key")
    if run.name == "ImageEmbeddingDeduplicateFilter":
        image_key = image_key or ("image" if "image" in run.input_columns else None)
    if image_key not in run.input_columns:
        image_key = None
    return _write_groups(run, rows, groups, weight_name="similarity", image_key=image_key, readable=readable,
                         best=best, score_key=keys.get("output_score_key"))


def _groupby(ds, key: str, partitions: int):
    """``ds.groupby(key)`` into ``partitions`` output partitions (Ray Data versions without the argument
    choose their own)."""
    try:
        return ds.groupby(key, num_partitions=partitions)
    except TypeError:
        return ds.groupby(key)


def _check_keep_column(run: "StepRun", keep: str) -> None:
    if keep not in ("first", "largest") and keep not in run.input_columns:
        from dataflow.operators.core_vision._dedup import KEEP_HELP

        raise KeyError(f"keep={keep!r} is not a column (columns: {', '.join(run.input_columns)}); {KEEP_HELP}")


def _touched(slim, column: str, values: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """The slim rows whose ``column`` is in ``values``, sorted by row id (only they reach the driver)."""
    wanted = [ROW_ID] + [c for c in columns if c != ROW_ID]
    if not len(values):
        return pd.DataFrame({c: np.empty(0, np.uint64 if c == "h" else np.int64 if c == ROW_ID else float)
                             for c in wanted})
    hits = slim.map_batches(touched_rows, batch_format="numpy", fn_kwargs={"column": column, "values": values})
    rows = hits.select_columns(wanted).to_pandas()
    return rows.sort_values(ROW_ID, kind="stable").reset_index(drop=True)


def _write_groups(run: "StepRun", rows: pd.DataFrame, groups, *, weight_name: str, image_key: str | None,
                  readable: int, best: np.ndarray | None = None, score_key: str | None = None) -> pd.DataFrame:
    rid = rows[ROW_ID].to_numpy(np.int64)
    keeper = rid[groups.group_id] if len(rid) else np.empty(0, np.int64)
    dropped = ~groups.keep
    clock = time.perf_counter()
    images = _lookup(run, run.slices, keeper[dropped], image_key)
    run.log(f"looked up {len(images)} kept rows' {image_key} in {time.perf_counter() - clock:.1f}s")
    dup_of = np.empty(len(rid), dtype=object)
    dup_of[dropped] = [images[int(x)] for x in keeper[dropped]]
    def make(lo: int, hi: int) -> dict:
        return {"rid": rid[lo:hi], "keep": groups.keep[lo:hi], "group": keeper[lo:hi],
                "size": groups.group_size[lo:hi], "weight": groups.weight[lo:hi], "dup_of": dup_of[lo:hi]}

    clock = time.perf_counter()
    payloads = _payloads_by_slice(run.slices, rid, make)
    if best is not None:  # every slice needs its rows' best scores, duplicates or not
        payloads = [_with_best(p, sl, best, run) for p, sl in zip(payloads, run.slices)]
    n_dups = int(dropped.sum())
    run.log(f"{n_dups} near duplicates in {int((groups.keep & (groups.group_size > 1)).sum())} groups")
    dup_columns = ["duplicate_of", weight_name, "group"]
    columns, promote = _rejected_columns(run.input_columns, readable < run.rows, n_dups > 0, dup_columns)
    extra = {"rejected_columns": columns, "promote": promote, "weight_name": weight_name,
             "score_key": score_key if best is not None else None}
    stats = run.write_slices("groups_write", payloads, extra)
    run.log(f"wrote {len(run.slices)} slice(s) in {time.perf_counter() - clock:.1f}s")
    return stats


def _with_best(payload: bytes, sl: Slice, best: np.ndarray, run: "StepRun") -> bytes:
    data = loads(payload) if payload else {"rid": np.empty(0, np.int64)}
    data["best"] = best[sl.offset:sl.offset + sl.rows]  # by position in the slice; the writer picks readable rows
    return dumps(data)


def _vector_shards(run: "StepRun", shard_rows: int) -> list[list[int]]:
    """Consecutive slices grouped into vector shards of about ``shard_rows`` readable rows."""
    shards, current, size = [], [], 0
    for sl in run.slices:
        side = _read_side(Path(run.ctx.work_dir) / f"slim-{sl.offset:012d}.parquet")
        n = int(side["ok"].sum())
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


__all__ = ["run_exact", "run_hash", "run_vectors", "shard_rows_for"]
