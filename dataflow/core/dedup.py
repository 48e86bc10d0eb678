"""DedupFilter: duplicate removal as three public phases that every engine runs.

1. **keys** (row-local, so an engine may run it per slice): :meth:`DedupFilter.row_keys` gives each row
   its key - a content hash, a perceptual hash, a vector - or the reason it has none; and
   :meth:`DedupFilter.keep_values` the value the keep policy ranks it by.
2. **candidate pairs** (needs every key): the rows whose keys match under the operator's ``search`` -
   ``"exact"`` (equal keys), ``"hamming"`` (uint64 hashes within ``max_distance`` bits) or ``"cosine"``
   (unit vectors at ``threshold`` or above, with each row's true best similarity). :func:`find_pairs` is
   the one-machine search; a distributed engine runs its own search of the same kind.
3. **groups and rows**: :meth:`DedupFilter.group` turns pairs into groups and survivors;
   :meth:`DedupFilter.split` writes the kept rows (group columns, score) and the rejected ones (reason,
   ``duplicate_of``, distance or similarity, group) from per-row :class:`Decisions`.

A subclass writes phase 1 and declares ``search`` and its parameters; the base runs the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from dataflow.algorithms.grouping import DuplicateGroups, group_duplicates, keep_priority
from dataflow.core.images import concat_rejected, rejected_unreadable
from dataflow.core.operator import OperatorABC
from dataflow.core.parallel import ItemResult, map_items
from dataflow.media import image_info
from dataflow.storage.provenance import PROVENANCE_COLUMNS, keep_user_columns, row_name

SEARCHES = ("exact", "hamming", "cosine")
KEEP_HELP = "keep='first' (row order), 'largest' (most pixels) or a column name (highest value wins)"


def check_keep(keep: str) -> str:
    if not isinstance(keep, str) or not keep:
        raise ValueError(f"keep must be a string: {KEEP_HELP}")
    return keep


@dataclass
class Pairs:
    """Phase 2's answer over ``n`` readable rows: linked pairs, their weights, each row's best score.

    ``pairs`` index rows, or items of ``inverse`` when given (rows with the same item are identical);
    ``best`` (cosine only) is every row's highest similarity to any other row, NaN when alone.
    """

    pairs: np.ndarray
    weights: np.ndarray | None = None
    inverse: np.ndarray | None = None
    best: np.ndarray | None = None


@dataclass
class Decisions:
    """Per readable row of a frame: what phase 3 decided (arrays aligned with the frame's rows)."""

    keep: np.ndarray  # bool
    group: np.ndarray  # the group's id: the kept row's label (index / step row id)
    size: np.ndarray  # int64 rows in the group
    weight: np.ndarray  # float: distance / similarity to the kept row; NaN for kept rows
    duplicate_of: np.ndarray  # object: the kept row's image (or label) for dropped rows
    best: np.ndarray | None = None  # float: true best similarity (cosine searches)
    keys: Any = None  # phase 1 keys of these rows (exact search: content hashes)

    @classmethod
    def from_groups(
        cls,
        groups: DuplicateGroups,
        labels: np.ndarray,
        images: np.ndarray,
        *,
        best: np.ndarray | None = None,
        keys: Any = None,
    ) -> Decisions:
        keeper = groups.group_id
        dup_of = np.full(len(labels), None, dtype=object)
        dropped = ~groups.keep
        wanted = keeper[dropped]
        # Only the rows that duplicates point at are named (a handful of a million), by path, never bytes.
        dup_of[dropped] = [row_name(v, label) for v, label in zip(images[wanted], labels[wanted])]
        return cls(
            groups.keep, labels[keeper] if len(labels) else labels, groups.group_size, groups.weight, dup_of, best, keys
        )


def find_pairs(search: str, keys: Any, *, max_distance: int = 0, threshold: float = 1.0) -> Pairs:
    """Phase 2 on one machine: every candidate pair among ``keys`` (the readable rows' keys)."""
    if search == "exact":
        _, inverse = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
        return Pairs(np.empty((0, 2), dtype=np.int64), inverse=inverse.ravel())
    if search == "hamming":
        from dataflow.algorithms.hamming_search import find_near_duplicate_unique

        found = find_near_duplicate_unique(np.asarray(keys, dtype=np.uint64), max_distance)
        return Pairs(found.pairs, inverse=found.inverse)
    if search == "cosine":
        from dataflow.algorithms.cosine_search import find_similar_pairs

        found = find_similar_pairs(np.ascontiguousarray(keys, dtype=np.float32), threshold)
        return Pairs(found.pairs, found.similarities, best=found.max_similarity)
    raise ValueError(f"unknown search {search!r}; expected one of {SEARCHES}")


def unit_vectors(values: list) -> np.ndarray:
    """Rows of float32 scaled to unit length (zero vectors stay zero)."""
    if not values:
        return np.zeros((0, 1), dtype=np.float32)
    vectors = np.stack(values).astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1)).astype(np.float32)


def _pixels(source, base_dir: str) -> int:
    info = image_info(source, base_dir)
    return info["width"] * info["height"]


class DedupFilter(OperatorABC):
    """Base of duplicate filters. Subclasses set ``search`` and write :meth:`row_keys`.

    Instances carry ``keep`` and ``transitive`` (and ``max_distance`` for hamming, ``threshold`` for
    cosine searches). Class attributes: ``reason`` of dropped rows, ``weight_name`` (the rejected column
    holding the distance or similarity; None for none), ``score_key`` (the run key naming the column that
    gets each kept row's best similarity; cosine searches), ``group_key`` (the run key naming the group
    id column; None for no group columns).
    """

    execution = "dedup"
    category = "filter"
    search: ClassVar[str] = "exact"
    reason: ClassVar[str] = "near_duplicate"
    weight_name: ClassVar[str | None] = None
    score_key: ClassVar[str | None] = None
    group_key: ClassVar[str | None] = "output_group_key"
    keep: str = "first"
    transitive: bool = True

    # ------------------------------------------------------------------ phase 1
    def row_keys(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        """Per row, its key (``ItemResult.value``) or why it has none (``error``, ``detail``)."""
        raise NotImplementedError

    def stack_keys(self, values: list) -> Any:
        """The readable rows' keys as one array for phase 2 (uint64, object or unit float32 rows)."""
        if self.search == "cosine":
            return unit_vectors(values)
        if self.search == "hamming":
            return np.asarray(values, dtype=np.uint64)
        return np.asarray(values, dtype=object)

    def image_key(self, keys: dict, columns) -> str | None:
        """The column ``duplicate_of`` names the kept row by (None: by its label)."""
        key = keys.get("input_image_key")
        return key if key in columns else None

    def keep_values(self, good: pd.DataFrame, base_dir: str, keys: dict, num_workers: int | None = 1) -> np.ndarray:
        """Per readable row, what ``keep`` ranks by (highest first; unused for ``"first"``)."""
        if self.keep == "first":
            return np.zeros(len(good))
        if self.keep == "largest":
            if {"width", "height"} <= set(good.columns):
                sizes = pd.to_numeric(good["width"], errors="coerce") * pd.to_numeric(good["height"], errors="coerce")
                return np.asarray(sizes, dtype=float)
            image_key = keys.get("input_image_key") or "image"
            results = map_items(
                _pixels, good[image_key].tolist(), num_workers=num_workers, desc="sizes", base_dir=base_dir
            )
            return np.array([r.value if r.error is None else np.nan for r in results], dtype=float)
        if self.keep not in good.columns:
            raise KeyError(
                f"keep={self.keep!r} is not a column (columns: {', '.join(map(str, good.columns))}); {KEEP_HELP}"
            )
        return pd.to_numeric(good[self.keep], errors="coerce").to_numpy(float)

    # ------------------------------------------------------------------ phase 2 (one machine)
    def find_pairs(self, keys: Any) -> Pairs:
        return find_pairs(
            self.search,
            keys,
            max_distance=int(getattr(self, "max_distance", 0)),
            threshold=float(getattr(self, "threshold", 1.0)),
        )

    # ------------------------------------------------------------------ phase 3
    def group(self, n: int, found: Pairs, values: np.ndarray) -> DuplicateGroups:
        """Groups and survivors of ``n`` rows from their pairs and keep values."""
        priority = keep_priority(self.keep, n, sizes=values, columns={self.keep: values})
        return group_duplicates(
            n,
            found.pairs,
            found.weights,
            priority=priority,
            transitive=self.transitive,
            closer="larger" if self.search == "cosine" else "smaller",
            inverse=found.inverse,
        )

    def split(self, good: pd.DataFrame, decided: Decisions, keys: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Kept rows (group columns, best score) and dropped rows (reason, duplicate_of, weight, group)."""
        keep = np.asarray(decided.keep, dtype=bool)
        kept, dups = good[keep].copy(), keep_user_columns(good[~keep].copy(), PROVENANCE_COLUMNS)
        group_key = keys.get(self.group_key) if self.group_key else None
        if group_key:
            kept[group_key] = decided.group[keep]
            kept[f"{group_key}_size"] = decided.size[keep]
        score_key = keys.get(self.score_key) if self.score_key else None
        if score_key:
            best = decided.best if decided.best is not None else np.full(len(good), np.nan)
            kept[score_key] = np.asarray(best, dtype=np.float64)[keep]
        dups["reason"] = self.reason
        dups["duplicate_of"] = pd.Series(decided.duplicate_of[~keep].tolist(), index=dups.index, dtype=object)
        if self.weight_name:
            weight = decided.weight[~keep]
            dups[self.weight_name] = weight.astype(np.int64) if self.search == "hamming" else weight
        if self.group_key:
            dups["group"] = decided.group[~keep]
        return kept, dups

    # ------------------------------------------------------------------ the local engine
    def deduplicate(self, storage, **keys) -> list[str]:
        """All three phases over the whole step, then one write of kept and rejected rows."""
        df = storage.read("dataframe")
        results = self.row_keys(df, storage.image_base, keys)
        readable, unreadable = rejected_unreadable(df, results)
        good = df[readable.to_numpy()]
        values = self.stack_keys([r.value for r in results if r.error is None])
        found = self.find_pairs(values)
        groups = self.group(
            len(good), found, self.keep_values(good, storage.image_base, keys, getattr(self, "num_workers", None))
        )
        image_key = self.image_key(keys, df.columns)
        labels = good.index.to_numpy()
        images = good[image_key].to_numpy(dtype=object) if image_key else labels.astype(object)
        decided = Decisions.from_groups(groups, labels, images, best=found.best, keys=values)
        kept, dups = self.split(good, decided, keys)
        storage.write(kept, rejected=concat_rejected(unreadable, dups))
        return self.output_columns(keys)

    def required_columns(self, keys: dict) -> dict[str, str]:
        need = super().required_columns(keys)
        if self.keep not in ("first", "largest"):
            need["keep"] = self.keep
        return need

    def output_columns(self, keys: dict) -> list[str]:
        cols = [keys[self.score_key]] if self.score_key and keys.get(self.score_key) else []
        group = keys.get(self.group_key) if self.group_key else None
        return cols + ([group, f"{group}_size"] if group else [])
