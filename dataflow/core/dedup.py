"""DedupFilter: duplicate removal as three public phases that every engine runs.

1. **keys** (row-local, so an engine may run it per slice): :meth:`DedupFilter.row_keys` gives each row
   its key - a content hash, a perceptual hash, a vector - or the reason it has none; and
   :meth:`DedupFilter.keep_values` the value the keep policy ranks it by.
2. **candidate pairs** (needs every key): the rows whose keys match under the operator's ``search`` -
   ``"exact"`` (equal keys), ``"hamming"`` (uint64 hashes within ``max_distance`` bits) or ``"cosine"``
   (unit vectors at ``threshold`` or above, with each row's true best similarity). :func:`find_pairs` is
   the one-machine search; a distributed engine runs its own search of the same kind.
3. **groups and rows**: :meth:`DedupFilter.group` turns pairs into groups and survivors;
   :meth:`DedupFilter.provenance` measures each dropped row against the row it is reported a duplicate
   of (a chain a ~ b ~ c links c to a through b: c's distance is to a, and ``linked_by`` names b);
   :meth:`DedupFilter.split` writes the kept rows (group columns, score) and the rejected ones (reason,
   ``duplicate_of``, distance or similarity, ``linked_by``, group) from per-row :class:`Decisions`.

A subclass writes phase 1 and declares ``search`` and its parameters; the base runs the rest. An operator
that backs ``dataflow dedup`` declares ``cli_command = "dedup"``, the ``--method`` names it answers to
(``cli_methods``) and :meth:`DedupFilter.from_cli`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from dataflow.algorithms.grouping import DuplicateGroups, group_duplicates, keep_priority
from dataflow.core.images import concat_rejected, rejected_unreadable
from dataflow.core.operator import OperatorABC
from dataflow.core.parallel import ItemResult, map_items
from dataflow.core.score_cache import cached_rows
from dataflow.log import get_logger
from dataflow.media import DEFAULT_MAX_PIXELS, image_info
from dataflow.storage.provenance import PROVENANCE_COLUMNS, keep_user_columns, row_name

logger = get_logger("dataflow.dedup")

SEARCHES = ("exact", "hamming", "cosine")
# How a cosine search runs: every pair ("exact"), inside k-means partitions ("approximate": exact scores,
# recall measured on a sample each run), or exact below AUTO_APPROXIMATE_ROWS rows ("auto").
VECTOR_SEARCHES = ("exact", "approximate", "auto")
AUTO_APPROXIMATE_ROWS = 200_000  # the exact search takes seconds below this on two cores
RECALL_SAMPLE = 512  # rows whose exact neighbours check an approximate run
KEEP_POLICIES = ("best", "first", "largest")
# keep= columns read from the image header when the rows lack them (no decode).
HEADER_KEEP_COLUMNS = ("pixels", "width", "height", "file_bytes")
SHARPNESS = "sharpness"  # "best" breaks ties by it where the rows have it
KEEP_HELP = (
    "keep='best' (most pixels, then the larger file, then the higher sharpness column where there is one), "
    "'first' (row order), 'largest' (most pixels) or a column name (highest value wins; when the rows lack "
    f"it, {', '.join(HEADER_KEEP_COLUMNS)} are read from the image header and a column that a model-free "
    "per-image evaluator writes is computed by that evaluator)"
)


def check_keep(keep: str) -> str:
    if not isinstance(keep, str) or not keep:
        raise ValueError(f"keep must be a string: {KEEP_HELP}")
    return keep


def best_copy_values(pixels, file_bytes, sharpness=None) -> np.ndarray:
    """One float per row that ranks rows as ``(pixels, file_bytes, sharpness)`` do, highest first.

    One number, so that every engine carries and compares it as any other keep value. The pixel count
    is the integer part; the fraction (< 1) holds the file size as ``log2(1 + bytes)`` in steps of
    1/1024 (sizes within 0.07 % of each other count as equal) and, below that, the sharpness as
    ``log1p(sharpness) / 32``. Float64 keeps both exact up to 2^27 pixels (134 megapixels); past that
    the sharpness loses resolution first. A missing pixel count ranks last (NaN); a missing file size or
    sharpness ranks as the lowest.
    """
    px = np.asarray(pixels, dtype=np.float64)
    size = np.nan_to_num(np.asarray(file_bytes, dtype=np.float64), nan=0.0)
    size_step = np.floor(np.log2(1.0 + np.maximum(size, 0.0)) * 1024.0)  # < 2^16 for any file under 2^64 bytes
    sharp = np.zeros_like(px) if sharpness is None else np.asarray(sharpness, dtype=np.float64)
    sharp = np.clip(np.log1p(np.maximum(np.nan_to_num(sharp, nan=0.0), 0.0)) / 32.0, 0.0, 1.0 - 2.0**-20)
    return px + (size_step + sharp) / 65536.0


def header_facts(source, base_dir: str, max_pixels: int | None) -> tuple[int, int, int, int]:
    """``(pixels, width, height, file_bytes)`` of one image from its header (module level: worker processes
    run it); raises ``ImageLoadError`` for an unreadable image."""
    info = image_info(source, base_dir, max_pixels=max_pixels)
    return info["width"] * info["height"], info["width"], info["height"], info["file_bytes"]


def keep_scorer(column: str):
    """A per-image evaluator that writes ``column`` and loads no model, built with its defaults (the first
    by name among the operators imported so far), or None. It computes ``keep=column`` for rows without
    that column, with the values a step of it would have written."""
    from dataflow.core.evaluator import ImageEvaluator
    from dataflow.core.registry import OPERATOR_REGISTRY

    for cls in OPERATOR_REGISTRY.loaded().values():
        if not issubclass(cls, ImageEvaluator) or cls.loads_model or cls.score is ImageEvaluator.score:
            continue
        try:
            scorer = cls()
        except Exception:  # needs arguments, or cannot be built here: not a default scorer
            continue
        if column in scorer.score_columns():
            return scorer
    return None


def column_producers(column: str) -> list[str]:
    """Operators imported so far (built-ins; user operators only if loaded) that write ``column``: declared
    in ``columns`` or as the default of an ``output_*`` run key."""
    import inspect

    from dataflow.core.registry import OPERATOR_REGISTRY

    found = []
    for name, cls in OPERATOR_REGISTRY.loaded().items():
        declared = set(getattr(cls, "columns", ()) or ())
        run = getattr(cls.run, "__wrapped_run__", cls.run)
        params = inspect.signature(run).parameters.values()
        declared |= {p.default for p in params if p.name.startswith("output_") and isinstance(p.default, str)}
        if column in declared:
            found.append(name)
    return found


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
    info: dict | None = None  # how the search went, for the manifest (an approximate search's recall)

    def touched(self, n: int) -> np.ndarray:
        """bool[n]: the rows in some pair (or sharing an item with another row); only they can be dropped."""
        ends = _pair_array(self.pairs)[:, :2].ravel()
        if self.inverse is None:
            mask = np.zeros(n, dtype=bool)
            mask[ends] = True
            return mask
        inverse = np.asarray(self.inverse, dtype=np.int64)
        counts = np.bincount(inverse, minlength=int(inverse.max()) + 1 if n else 0)
        items = counts > 1
        items[ends] = True
        return items[inverse]

    def row_pairs(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pair of rows ``(i, j, weight)``, i < j, with rows of one item expanded (weight 0)."""
        if self.inverse is None:
            pairs = _pair_array(self.pairs)
            weights = self.weights if self.weights is not None else np.zeros(len(pairs))
            return pairs[:, 0], pairs[:, 1], np.asarray(weights, dtype=np.float64)
        from dataflow.algorithms.hamming_search import expand_unique_pairs

        items = _pair_array(self.pairs)
        if items.shape[1] == 2:  # pairs of items without a weight of their own
            items = np.column_stack([items, np.zeros(len(items), dtype=np.int64)])
        rows = expand_unique_pairs(items[:, :3], self.inverse)
        return rows[:, 0], rows[:, 1], rows[:, 2].astype(np.float64)


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
    linked_by: np.ndarray | None = None  # object: the row a dropped row joined its group through (chains)

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
        linked_by = np.full(len(labels), None, dtype=object)
        if groups.linked is not None:
            via = np.flatnonzero(groups.linked >= 0)
            linked_by[via] = [row_name(images[r], labels[r]) for r in groups.linked[via]]
        return cls(
            groups.keep,
            labels[keeper] if len(labels) else labels,
            groups.group_size,
            groups.weight,
            dup_of,
            best,
            keys,
            linked_by,
        )


@dataclass
class Candidates:
    """A local run's readable rows and their candidate pairs, for :meth:`DedupFilter.duplicates_map`."""

    images: np.ndarray
    labels: np.ndarray
    pairs: Pairs
    closer: str  # "smaller" (distances) or "larger" (similarities)


def check_vector_search(value: str) -> str:
    if value not in VECTOR_SEARCHES:
        raise ValueError(f"search must be one of {VECTOR_SEARCHES}, got {value!r}")
    return value


def approximate(vector_search: str, n: int) -> bool:
    """Whether a cosine search over ``n`` rows runs inside partitions."""
    return vector_search == "approximate" or vector_search == "auto" and n >= AUTO_APPROXIMATE_ROWS


def find_pairs(
    search: str, keys: Any, *, max_distance: int = 0, threshold: float = 1.0, vector_search: str = "exact"
) -> Pairs:
    """Phase 2 on one machine: every candidate pair among ``keys`` (the readable rows' keys)."""
    if search == "exact":
        _, inverse = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
        return Pairs(np.empty((0, 2), dtype=np.int64), inverse=inverse.ravel())
    if search == "hamming":
        from dataflow.algorithms.hamming_search import find_near_duplicate_unique

        found = find_near_duplicate_unique(np.asarray(keys, dtype=np.uint64), max_distance)
        return Pairs(found.pairs, inverse=found.inverse)
    if search == "cosine" and approximate(vector_search, len(keys)):
        return _partitioned_pairs(keys, threshold)
    if search == "cosine":
        from dataflow.algorithms.cosine_search import find_similar_pairs

        found = find_similar_pairs(np.ascontiguousarray(keys, dtype=np.float32), threshold)
        return Pairs(found.pairs, found.similarities, best=found.max_similarity)
    raise ValueError(f"unknown search {search!r}; expected one of {SEARCHES}")


def _partitioned_pairs(keys: Any, threshold: float) -> Pairs:
    """The approximate cosine search, and its recall against the exact search on a sample of rows."""
    from dataflow.algorithms.partitioned_search import estimate_recall, find_similar_pairs_partitioned, search_note

    vectors = keys if isinstance(keys, np.memmap) else np.ascontiguousarray(keys, dtype=np.float32)
    found, stats = find_similar_pairs_partitioned(vectors, threshold)
    recall, exact_pairs = estimate_recall(vectors, threshold, found.pairs, sample=RECALL_SAMPLE)
    info = search_note(stats, len(vectors), recall, exact_pairs, RECALL_SAMPLE)
    logger.info(
        "approximate search: %d partitions, %.2f per row; recall on %d sampled rows' %d exact pairs: %s",
        stats.n_partitions,
        stats.cells_per_row,
        info["recall_sample_rows"],
        exact_pairs,
        "n/a (no pair in the sample)" if recall is None else f"{recall:.4f}",
    )
    return Pairs(found.pairs, found.similarities, best=found.max_similarity, info=info)


def unit_vectors(values: list) -> np.ndarray:
    """Rows of float32 scaled to unit length (zero vectors stay zero)."""
    if not values:
        return np.zeros((0, 1), dtype=np.float32)
    vectors = np.stack(values).astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1)).astype(np.float32)


class DedupFilter(OperatorABC):
    """Base of duplicate filters. Subclasses set ``search`` and write :meth:`row_keys`.

    Instances carry ``keep`` and ``transitive`` (and ``max_distance`` for hamming, ``threshold`` for
    cosine searches). Class attributes: ``reason`` of dropped rows, ``weight_name`` (the rejected column
    holding the distance or similarity; None for none), ``score_key`` (the run key naming the column that
    gets each kept row's best similarity; cosine searches), ``group_key`` (the run key naming the group
    id column; None for no group columns), ``cli_methods`` (the ``dataflow dedup --method`` names it
    answers to, with ``cli_command = "dedup"`` and :meth:`from_cli`).
    """

    execution = "dedup"
    category = "filter"
    search: ClassVar[str] = "exact"
    reason: ClassVar[str] = "near_duplicate"
    weight_name: ClassVar[str | None] = None
    score_key: ClassVar[str | None] = None
    group_key: ClassVar[str | None] = "output_group_key"
    cli_methods: ClassVar[tuple[str, ...]] = ()
    # A subclass whose keys are worth keeping (hashes, vectors of decoded images) sets cache_rows = True: a
    # rerun with another threshold or keep policy then reads them from the score cache instead of the images.
    cache_rows: ClassVar[bool] = False
    cache_ignores: ClassVar[tuple[str, ...]] = (
        "keep",
        "transitive",
        "rule",
        "max_distance",
        "threshold",
        "search",
        "num_workers",
    )
    keep: str = "first"
    transitive: bool = True
    candidates: Candidates | None = None  # the last local run's, for duplicates_map()

    @classmethod
    def from_cli(cls, args) -> DedupFilter:
        """The operator ``dataflow dedup --method M`` runs, M one of ``cli_methods``.

        ``args`` is the parsed command line: ``method`` (str), ``max_distance`` (int, None when not
        given), ``keep`` (str, None when not given: the operator's default), ``non_transitive`` (bool),
        ``num_workers`` (int or None). The command then calls ``run(storage.step(), input_image_key=...)``.
        """
        raise NotImplementedError(f"{cls.__name__} declares cli_methods but no from_cli classmethod")

    @property
    def chains(self) -> bool:
        """Whether a dropped row can join its group through another dropped row (then ``linked_by``)."""
        return self.search != "exact" and bool(self.transitive)

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
        """Per readable row, what ``keep`` ranks by (highest first; unused for ``"first"``).

        ``"best"`` and ``"largest"`` take ``width`` / ``height`` / ``file_bytes`` columns where the rows have
        them and read the image headers where not. A ``keep`` column the rows lack is read from the headers
        (:data:`HEADER_KEEP_COLUMNS`) or computed by the evaluator that writes it (:func:`keep_scorer`).
        Rows without a readable image get NaN (ranked last).
        """
        if self.keep == "first":
            return np.zeros(len(good))
        if self.keep == "best":
            pixels, size = self._header(good, base_dir, keys, num_workers, ("pixels", "file_bytes"))
            sharp = _numeric(good[SHARPNESS]) if SHARPNESS in good.columns else None
            return best_copy_values(pixels, size, sharp)
        if self.keep == "largest":
            return self._header(good, base_dir, keys, num_workers, ("pixels",))[0]
        if self.keep in good.columns:
            return _numeric(good[self.keep])
        if self.keep in HEADER_KEEP_COLUMNS:
            return self._header(good, base_dir, keys, num_workers, (self.keep,))[0]
        scorer = keep_scorer(self.keep)
        if scorer is None:
            raise KeyError(
                f"keep={self.keep!r} is not a column (columns: {', '.join(map(str, good.columns))}); {KEEP_HELP}"
            )
        values = np.full(len(good), np.nan)
        sources = self._sources(good, keys)
        if sources is not None and len(good):
            results = map_items(
                scorer.score, sources, num_workers=num_workers, desc=f"keep={self.keep}", base_dir=base_dir
            )
            values[:] = [_number(r.value.get(self.keep)) if r.error is None else np.nan for r in results]
        return values

    def _sources(self, good: pd.DataFrame, keys: dict) -> list | None:
        """The images of ``good`` (the image column), or None when it has none."""
        image_key = self.image_key(keys, good.columns) or ("image" if "image" in good.columns else None)
        return good[image_key].tolist() if image_key else None

    def _header(self, good: pd.DataFrame, base_dir: str, keys: dict, num_workers, names: tuple) -> list[np.ndarray]:
        """Per name in :data:`HEADER_KEEP_COLUMNS`: the rows' column where present, else the image header's."""
        out = [self._column_fact(good, name) for name in names]
        todo = np.flatnonzero(np.any([np.isnan(v) for v in out], axis=0)) if len(good) else np.zeros(0, int)
        sources = self._sources(good, keys)
        if sources is None or not len(todo):
            return out
        results = map_items(
            header_facts,
            [sources[i] for i in todo],
            num_workers=num_workers,
            desc=f"keep={self.keep}",
            base_dir=base_dir,
            max_pixels=getattr(self, "max_pixels", DEFAULT_MAX_PIXELS),
        )
        for at, result in zip(todo, results):
            if result.error is None:
                facts = dict(zip(HEADER_KEEP_COLUMNS, result.value))
                for values, name in zip(out, names):
                    if np.isnan(values[at]):
                        values[at] = facts[name]
        return out

    @staticmethod
    def _column_fact(good: pd.DataFrame, name: str) -> np.ndarray:
        if name == "pixels" and "pixels" not in good.columns and {"width", "height"} <= set(good.columns):
            return _numeric(good["width"]) * _numeric(good["height"])
        if name in good.columns:
            return _numeric(good[name])
        return np.full(len(good), np.nan)

    # ------------------------------------------------------------------ phase 2 (one machine)
    def find_pairs(self, keys: Any) -> Pairs:
        return find_pairs(
            self.search,
            keys,
            max_distance=int(getattr(self, "max_distance", 0)),
            threshold=float(getattr(self, "threshold", 1.0)),
            vector_search=getattr(self, "vector_search", "exact"),
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

    def measure(self, keys: Any, rows: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Distance (hamming) or similarity (cosine) between the keys of ``rows`` and of ``others``.

        ``keys`` is only indexed by row arrays (``keys[rows]``). A subclass with another ``search`` and a
        ``weight_name`` overrides this."""
        if self.search == "hamming":
            from dataflow.algorithms.hamming_search import hamming_distance

            return hamming_distance(keys[rows], keys[others]).astype(np.float64)
        if self.search == "cosine":  # keys is indexed, never read whole: an engine may load rows on demand
            a, b = np.asarray(keys[rows], dtype=np.float32), np.asarray(keys[others], dtype=np.float32)
            return np.einsum("ij,ij->i", a, b).astype(np.float64)
        if self.search == "exact":
            return np.zeros(len(rows))
        raise NotImplementedError(f"{type(self).__name__}: search {self.search!r} needs its own measure()")

    def provenance(self, groups: DuplicateGroups, keys: Any) -> DuplicateGroups:
        """``groups`` with every dropped row's weight taken against its kept row, ``keys`` being the
        phase 1 keys of the same rows. Rows with a direct pair to it keep the search's own weight (what
        the threshold was decided on); rows linked through a chain are measured."""
        if self.weight_name is None:
            return groups
        far = np.flatnonzero(~groups.keep & ~groups.direct)
        if not len(far):
            return groups
        weight = np.array(groups.weight, dtype=np.float64)
        weight[far] = self.measure(keys, far, groups.group_id[far])
        return dataclasses.replace(groups, weight=weight)

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
        if self.chains and self.weight_name:
            linked = decided.linked_by[~keep].tolist() if decided.linked_by is not None else [None] * len(dups)
            dups["linked_by"] = pd.Series(linked, index=dups.index, dtype=object)
        if self.group_key:
            dups["group"] = decided.group[~keep]
        return kept, dups

    # ------------------------------------------------------------------ the local engine
    def deduplicate(self, storage, **keys) -> list[str]:
        """All three phases over the whole step, then one write of kept and rejected rows."""
        df = storage.read("dataframe")
        results = cached_rows(self, storage, df, keys, lambda rows: self.row_keys(rows, storage.image_base, keys))
        readable, unreadable = rejected_unreadable(df, results)
        good = df[readable.to_numpy()]
        values = self.stack_keys([r.value for r in results if r.error is None])
        found = self.find_pairs(values)
        if found.info:
            storage.note("pair_search", found.info)
        # Keep values matter only where there is a choice: rows that have a pair (header reads saved).
        touched = found.touched(len(good))
        ranks = np.full(len(good), np.nan)
        ranks[touched] = self.keep_values(good[touched], storage.image_base, keys, getattr(self, "num_workers", None))
        groups = self.provenance(self.group(len(good), found, ranks), values)
        image_key = self.image_key(keys, df.columns)
        labels = good.index.to_numpy()
        images = good[image_key].to_numpy(dtype=object) if image_key else labels.astype(object)
        self.candidates = Candidates(images, labels, found, "larger" if self.search == "cosine" else "smaller")
        decided = Decisions.from_groups(groups, labels, images, best=found.best, keys=values)
        kept, dups = self.split(good, decided, keys)
        storage.write(kept, rejected=concat_rejected(unreadable, dups))
        return self.output_columns(keys)

    def duplicates_map(self) -> dict[Any, list[tuple[Any, Any]]]:
        """imagededup's ``find_duplicates(..., scores=True)`` map of the last local run: every readable
        image -> ``[(duplicate, score), ...]``, every image within the radius (or at the threshold) of it,
        not only its group's survivor; hash distances closest first, similarities in row order (as
        imagededup's hashes and CNN list them). Images with no duplicate map to ``[]``."""
        if self.candidates is None:
            raise RuntimeError(f"{type(self).__name__}.duplicates_map(): run the operator (local engine) first")
        c = self.candidates
        n = len(c.labels)
        i, j, w = c.pairs.row_pairs(n)
        src, dst, weight = np.concatenate([i, j]), np.concatenate([j, i]), np.concatenate([w, w])
        order = np.lexsort((dst, weight) if c.closer == "smaller" else (dst,)) if len(src) else np.zeros(0, int)
        order = order[np.argsort(src[order], kind="stable")]
        names = [row_name(v, label) for v, label in zip(c.images, c.labels)]
        as_score = int if self.search in ("hamming", "exact") else float
        out: dict[Any, list] = {name: [] for name in names}
        for a, b, s in zip(src[order].tolist(), dst[order].tolist(), weight[order].tolist()):
            out[names[a]].append((names[b], as_score(s) if math.isfinite(s) else None))
        return out

    def required_columns(self, keys: dict) -> dict[str, str]:
        """The run's input columns, and ``keep`` when it names a column that nothing here can compute (so
        that ``compile()`` says which step would write it)."""
        need = super().required_columns(keys)
        computable = self.keep in KEEP_POLICIES or self.keep in HEADER_KEEP_COLUMNS
        if not computable and keep_scorer(self.keep) is None:
            writers = column_producers(self.keep)
            label = f"keep (written by {' or '.join(writers[:3])}: run it first)" if writers else "keep"
            need[label] = self.keep
        return need

    def output_columns(self, keys: dict) -> list[str]:
        cols = [keys[self.score_key]] if self.score_key and keys.get(self.score_key) else []
        group = keys.get(self.group_key) if self.group_key else None
        return cols + ([group, f"{group}_size"] if group else [])


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def _numeric(values) -> np.ndarray:
    """A fresh float64 array (NaN where not a number): callers fill it in without touching the frame."""
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64, copy=True, na_value=np.nan)


def _pair_array(pairs) -> np.ndarray:
    """``pairs`` as an (M, 2) or (M, 3) int64 array (an empty one of any shape as (0, 2))."""
    arr = np.asarray(pairs)
    return arr.astype(np.int64) if arr.ndim == 2 and arr.size else np.zeros((0, 2), dtype=np.int64)
