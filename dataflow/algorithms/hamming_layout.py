"""Block layouts for the Hamming multi-index search: how to split 64 bits, and which split is cheapest.

A layout gives each of ``m`` blocks a width and a radius with ``sum(radius + 1) > t`` (see
:mod:`dataflow.algorithms.hamming_search`). Its cost is estimated from the number of hashes, and on
request from a sample of them, so the search can fall back to brute force where blocks would not pay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np

# Tables of 2**w int64 offsets per block; wider blocks would cost more memory than they save.
MAX_BLOCK_WIDTH = 22
_MAX_BLOCKS = 16


@dataclass(frozen=True)
class BlockLayout:
    """Block split of the 64 bits: ``widths[b]`` bits starting at ``shifts[b]``, searched within ``radii[b]``."""

    widths: tuple[int, ...]
    radii: tuple[int, ...]

    @property
    def shifts(self) -> tuple[int, ...]:
        return tuple(int(s) for s in np.cumsum((0,) + self.widths[:-1]))

    def covers(self, max_distance: int) -> bool:
        """True when every pair within ``max_distance`` is guaranteed to match on some block."""
        return sum(r + 1 for r in self.radii) > max_distance


def _neighbours(width: int, radius: int) -> int:
    return sum(math.comb(width, k) for k in range(radius + 1))


def _block_overhead(n: int, width: int, radius: int) -> float:
    """Estimated nanoseconds of one block's search over ``n`` hashes, candidate checks excluded.

    Fitted on measurements (one core, see ``benchmarks/README.md``, Hamming search): each (non-empty bucket,
    neighbour mask) visit costs a few ns, plus about 20 ns and 1.5 ns per item when the neighbouring
    bucket is non-empty (gathering it); bucketing costs about 10 ns per hash.
    """
    density = n / 2.0**width
    p_nonempty = -math.expm1(-density)
    buckets = 2.0**width * p_nonempty
    visit = (2.0 if width <= 16 else 4.0) + p_nonempty * (20.0 + 1.5 * density / p_nonempty)
    return _neighbours(width, radius) * buckets * visit + 10.0 * n


_CANDIDATE_NS = 0.2  # one popcount check in the vectorised scan
_BRUTE_PAIR_NS = 0.22


def _block_cost(n: int, width: int, radius: int) -> float:
    """Estimated nanoseconds of one block for uniformly spread hashes (n**2 / 2**w / 2 candidates per mask)."""
    candidates = n * n / 2.0**width / 2.0 * _neighbours(width, radius)
    return _block_overhead(n, width, radius) + _CANDIDATE_NS * candidates


def _brute_cost(n: int) -> float:
    return _BRUTE_PAIR_NS * n * n / 2.0


def _layout_for(t: int, n: int, m: int) -> BlockLayout | None:
    """Near-equal widths for ``m`` blocks, radii handed out greedily by estimated cost."""
    widths = [64 // m + (1 if b < 64 % m else 0) for b in range(m)]
    if max(widths) > MAX_BLOCK_WIDTH:
        return None
    radii = [0] * m
    for _ in range(max(0, t + 1 - m)):
        # Greedy is optimal here: each block's cost is convex in its radius.
        options = [
            (_block_cost(n, widths[b], radii[b] + 1) - _block_cost(n, widths[b], radii[b]), b)
            for b in range(m)
            if radii[b] + 1 < widths[b]
        ]
        if not options:
            return None
        radii[min(options)[1]] += 1
    return BlockLayout(tuple(widths), tuple(radii))


def _sampled_cost(hashes: np.ndarray, layout: BlockLayout, rng: np.random.Generator) -> float:
    """Estimated nanoseconds of ``layout`` on these very hashes, so hot buckets of clustered data are
    priced as they are: bucket sizes are counted on a random subset of the hashes and scaled up, and
    each of 1,024 random hashes is charged the items of its own and its neighbouring buckets."""
    n = hashes.shape[0]
    subset = hashes[rng.integers(0, n, min(n, 1 << 16))]
    queries = hashes[rng.integers(0, n, 1024)]
    scale = n / subset.shape[0]
    cost = 0.0
    for width, shift, radius in zip(layout.widths, layout.shifts, layout.radii):
        mask = np.uint64((1 << width) - 1)
        counts = np.bincount(((subset >> np.uint64(shift)) & mask).astype(np.int64), minlength=1 << width)
        query_values = ((queries >> np.uint64(shift)) & mask).astype(np.int64)
        per_hash = counts[query_values[:, None] ^ masks_within(width, radius)[None, :]].sum(axis=1) * scale
        cost += _block_overhead(n, width, radius) + _CANDIDATE_NS * n * float(per_hash.mean()) / 2.0
    return cost


def choose_layout(max_distance: int, n: int, *, allow_brute: bool = True, hashes=None) -> BlockLayout | None:
    """The block layout with the least estimated work for ``n`` unique hashes, or None for brute force
    (always None when no layout can cover ``max_distance``).

    Without ``hashes`` the estimate assumes uniformly spread hashes. With them (the unique values to
    search), the three best layouts by that estimate are priced again on a sample of the data, so a
    layout whose blocks hit hot buckets gives way to another one, or to brute force.
    """
    t = int(max_distance)
    if t >= 64:
        return None
    brute = _brute_cost(n) if allow_brute else math.inf
    layouts = [lay for m in range(3, min(max(t + 1, 3), _MAX_BLOCKS) + 1) if (lay := _layout_for(t, n, m))]
    priced = sorted(
        ((sum(_block_cost(n, w, r) for w, r in zip(lay.widths, lay.radii)), lay) for lay in layouts),
        key=lambda item: item[0],
    )
    if hashes is not None and n >= 4096 and priced:
        arr = np.asarray(hashes, dtype=np.uint64)
        rng = np.random.default_rng(0)
        priced = sorted(((_sampled_cost(arr, lay, rng), lay) for _, lay in priced[:3]), key=lambda item: item[0])
    if not priced or priced[0][0] >= brute:
        return None
    return priced[0][1]


def masks_within(width: int, radius: int) -> np.ndarray:
    """All ``width``-bit masks with at most ``radius`` bits set, the zero mask first."""
    masks = [0]
    for k in range(1, radius + 1):
        for bits in combinations(range(width), k):
            masks.append(sum(1 << b for b in bits))
    return np.array(masks, dtype=np.int64)
