"""What every near-duplicate filter shares: the keep policy, grouping, and kept / rejected rows.

The filters differ only in how they find pairs (Hamming search over hashes, cosine search over
vectors); from the pairs on, the grouping, the keep policy and the provenance written to the
rejected rows are the same code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.algorithms.cosine_search import find_similar_pairs
from dataflow.algorithms.grouping import DuplicateGroups, group_duplicates, keep_priority
from dataflow.core.parallel import ItemResult, map_items
from dataflow.media import image_info

KEEP_HELP = "keep='first' (row order), 'largest' (most pixels) or a column name (highest value wins)"


def check_keep(keep: str) -> str:
    if not isinstance(keep, str) or not keep:
        raise ValueError(f"keep must be a string: {KEEP_HELP}")
    return keep


def keep_ranks(df: pd.DataFrame, keep: str, image_key: str, base_dir: str, num_workers: int | None) -> np.ndarray:
    """Rank per row, 0 kept first, for ``keep``; 'largest' uses width x height columns or image headers."""
    if keep == "first":
        return keep_priority("first", len(df))
    if keep == "largest":
        if {"width", "height"} <= set(df.columns):
            sizes = pd.to_numeric(df["width"], errors="coerce") * pd.to_numeric(df["height"], errors="coerce")
        else:
            results = map_items(_pixels, df[image_key].tolist(), num_workers=num_workers, desc="sizes",
                                base_dir=base_dir)
            sizes = [r.value if r.error is None else np.nan for r in results]
        return keep_priority("largest", len(df), sizes=np.asarray(sizes, dtype=float))
    if keep not in df.columns:
        raise KeyError(f"keep={keep!r} is not a column (columns: {', '.join(map(str, df.columns))}); {KEEP_HELP}")
    return keep_priority(keep, len(df), columns={keep: pd.to_numeric(df[keep], errors="coerce").to_numpy(float)})


def _pixels(source, base_dir: str) -> int:
    info = image_info(source, base_dir)
    return info["width"] * info["height"]


def vector_groups(vectors: np.ndarray, threshold: float, *, transitive: bool, priority: np.ndarray
                  ) -> tuple[DuplicateGroups, np.ndarray]:
    """Groups of rows whose cosine similarity reaches ``threshold``, and each row's true max similarity."""
    found = find_similar_pairs(np.ascontiguousarray(vectors, dtype=np.float32), threshold)
    groups = group_duplicates(len(vectors), found.pairs, found.similarities, priority=priority,
                              transitive=transitive, closer="larger")
    return groups, found.max_similarity


def split_groups(df: pd.DataFrame, groups: DuplicateGroups, *, image_key: str, weight_name: str,
                 group_key: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Kept rows (with group id and size) and dropped rows (reason, duplicate_of, weight, group id)."""
    keep = groups.keep
    ids = df.index.to_numpy()[groups.group_id] if len(df) else np.empty(0, dtype=np.int64)
    kept = df[keep].copy()
    dups = df[~keep].copy()
    if group_key:
        kept[group_key] = ids[keep]
        kept[f"{group_key}_size"] = groups.group_size[keep]
    keeper_images = df[image_key].to_numpy()[groups.duplicate_of[~keep]] if image_key in df.columns else \
        df.index.to_numpy()[groups.duplicate_of[~keep]]
    dups["reason"] = "near_duplicate"
    dups["duplicate_of"] = keeper_images
    dups[weight_name] = groups.weight[~keep]
    dups["group"] = ids[~keep]
    return kept, dups


def concat_rejected(*frames: pd.DataFrame | None) -> pd.DataFrame | None:
    frames = [f for f in frames if f is not None and len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


def vectors_from_column(df: pd.DataFrame, key: str, operator: str) -> tuple[list, list[ItemResult]]:
    """Per-row vectors from a list/array column; rows without one carry their ``image_error`` reason."""
    if key not in df.columns:
        raise KeyError(f"{operator}: {key!r} is not a column (columns: {', '.join(map(str, df.columns))})")
    errors = df["image_error"].tolist() if "image_error" in df.columns else [None] * len(df)
    results = []
    for value, error in zip(df[key].tolist(), errors):
        if isinstance(value, (list, tuple, np.ndarray)) and len(value):
            results.append(ItemResult(np.asarray(value, dtype=np.float32)))
        else:
            reason = error if isinstance(error, str) and error else "missing_embedding"
            results.append(ItemResult(None, reason, f"no {key} value"))
    dims = {r.value.shape for r in results if r.error is None}
    if len(dims) > 1:
        raise ValueError(f"{operator}: {key!r} holds vectors of different lengths {sorted(d[0] for d in dims)}")
    return [r.value for r in results], results


def write_vector_dedup(storage, df: pd.DataFrame, results: list[ItemResult], *, threshold: float, transitive: bool,
                       keep: str, image_key: str | None, score_key: str, group_key: str | None,
                       num_workers: int | None = None) -> None:
    """The shared body of the vector dedup filters: search, group, keep, and write kept + rejected rows.

    Every kept row's ``score_key`` is its true highest cosine to any other readable row (NaN when alone),
    not 0 below the threshold; rows without a vector are rejected with their reason, never dropped.
    """
    from dataflow.operators.core_vision._images import rejected_unreadable

    readable, unreadable = rejected_unreadable(df, results)
    mask = readable.to_numpy()
    good = df[mask]
    image_key = image_key or ("image" if "image" in df.columns else None)
    vectors = np.stack([r.value for r in results if r.error is None]) if len(good) else np.zeros((0, 1), np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = (vectors / np.where(norms > 0, norms, 1)).astype(np.float32)
    priority = keep_ranks(good, keep, image_key or "", storage.image_base, num_workers)
    groups, max_sim = vector_groups(vectors, threshold, transitive=transitive, priority=priority)
    kept, dups = split_groups(good, groups, image_key=image_key or "", weight_name="similarity",
                              group_key=group_key)
    kept[score_key] = max_sim[groups.keep].astype(np.float64)
    storage.write(kept, rejected=concat_rejected(unreadable, dups))
