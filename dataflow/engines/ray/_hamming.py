"""Hamming near-duplicate search shaped for a shuffle: block keys, partitions, group verification.

Layout: the 64 bits are split into ``m`` blocks (widths ``w_b`` <= 24) and each block gets a ball radius
``rho_b``. A hash has one key ``(b, c)`` for every ``c`` within ``rho_b`` bits of its block value ``v_b``.
Two hashes whose block values differ in at most ``2 * rho_b`` bits share at least one key (a "midpoint"
of the two values), and if ``sum(2 * rho_b + 1) > t`` every pair within ``t`` bits differs in at most
``2 * rho_b`` bits on some block (pigeonhole). So grouping by key and comparing the members of each group
by popcount finds every pair: the guarantee of :mod:`dataflow.algorithms.hamming_search`, which searches
neighbouring buckets on one machine instead. With ``rho = 0`` and ``t + 1`` blocks this is the plain
"two hashes within t share one block exactly" scheme; :func:`choose_key_layout` prices the options.

Shuffle: a hash is not sent once per key but once per *partition* its keys fall in, ``(block, top k bits
of the key)`` (``1 + k`` partitions per block at radius 1); each partition task expands its hashes' keys,
counting-sorts them and verifies every group (:func:`verify_partition`).

A pair is recorded once: only in the first block where it is within ``2 * rho_b``, and there only in the
smallest key the two balls share. Identical hashes meet in every group; a group keeps distinct values,
and the group of a hash's own block-0 value reports the values seen more than once (the "copies" the
local engine folds with ``inverse``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from numba import njit

from dataflow.algorithms.hamming_search import _nearest, _popcount64

MAX_WIDTH = 24  # key = (block << 24) | value fits a uint32
KEY_SHIFT = 24

# Cost model (nanoseconds), measured on this repository's benchmark machine: an emitted key costs its
# share of a shuffle; a candidate check is one vectorised popcount.
_EMIT_NS = 150.0
_EXPAND_NS = 15.0
_CHECK_NS = 0.5


@dataclass(frozen=True)
class KeyLayout:
    """Block widths and ball radii; every pair within ``max_distance`` shares a key when ``covers``."""

    widths: tuple[int, ...]
    radii: tuple[int, ...]

    @property
    def shifts(self) -> tuple[int, ...]:
        return tuple(int(s) for s in np.cumsum((0,) + self.widths[:-1]))

    def covers(self, t: int) -> bool:
        return sum(2 * r + 1 for r in self.radii) > t

    def keys_per_hash(self) -> int:
        return sum(_ball(w, r) for w, r in zip(self.widths, self.radii))

    def arrays(self) -> dict:
        """Numba-friendly arrays: widths, shifts, radii, block masks, ball masks (flat + starts)."""
        balls = [_ball_masks(w, r) for w, r in zip(self.widths, self.radii)]
        starts = np.zeros(len(balls) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in balls], out=starts[1:])
        return {
            "widths": np.array(self.widths, dtype=np.int64),
            "shifts": np.array(self.shifts, dtype=np.int64),
            "radii": np.array(self.radii, dtype=np.int64),
            "block_masks": np.array([((1 << w) - 1) << s for w, s in zip(self.widths, self.shifts)], dtype=np.uint64),
            "ball": np.concatenate(balls).astype(np.int64),
            "ball_start": starts,
        }


def _ball(width: int, radius: int) -> int:
    return sum(math.comb(width, k) for k in range(radius + 1))


def _ball_masks(width: int, radius: int) -> np.ndarray:
    masks = [0]
    for k in range(1, radius + 1):
        for bits in combinations(range(width), k):
            masks.append(sum(1 << b for b in bits))
    return np.array(masks, dtype=np.int64)


def _cost(n: int, widths: list[int], radii: list[int]) -> float:
    """Shuffled rows (about ``1 + 6 r`` partitions per hash and block), keys expanded in the task, and
    candidate checks (``2**w`` groups of ``n * V / 2**w`` hashes)."""
    total = 0.0
    for w, r in zip(widths, radii):
        v = _ball(w, r)
        group = n * v / 2.0**w
        total += _EMIT_NS * n * (1 + 6 * r) + _EXPAND_NS * n * v + _CHECK_NS * 2.0**w * group * group / 2.0
    return total


def choose_key_layout(max_distance: int, n: int) -> KeyLayout:
    """The layout with the least estimated emitted keys + candidate checks for ``n`` uniform hashes."""
    t = int(max_distance)
    best = None
    for m in range(3, 17):
        widths = [64 // m + (1 if b < 64 % m else 0) for b in range(m)]
        if max(widths) > MAX_WIDTH:
            continue
        radii = [0] * m
        units = max(0, math.ceil((t + 1 - m) / 2))
        feasible = True
        for _ in range(units):  # each unit adds 2 to the coverage sum; the cost is convex per block
            options = [
                (_cost(n, [widths[b]], [radii[b] + 1]) - _cost(n, [widths[b]], [radii[b]]), b)
                for b in range(m)
                if 2 * (radii[b] + 1) < widths[b]
            ]
            if not options:
                feasible = False
                break
            radii[min(options)[1]] += 1
        if not feasible:
            continue
        layout = KeyLayout(tuple(widths), tuple(radii))
        if not layout.covers(t):
            continue
        cost = _cost(n, widths, radii)
        if best is None or cost < best[0]:
            best = (cost, layout)
    if best is None:
        raise ValueError(f"no key layout covers max_distance={t}")
    return best[1]


def top_bits(layout: KeyLayout, n_partitions: int) -> int:
    """Bits of each block's key value that pick its partition, for about ``n_partitions`` partitions."""
    m = len(layout.widths)
    k = max(0, math.ceil(math.log2(max(1, n_partitions) / m)))
    return int(min(k, min(layout.widths) - 1, 12))


def partition_masks(layout: KeyLayout, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block, the distinct top-``k``-bit patterns of its ball masks (flat array + starts)."""
    parts = [
        np.unique(_ball_masks(w, r) >> (w - k)) if k else np.zeros(1, np.int64)
        for w, r in zip(layout.widths, layout.radii)
    ]
    starts = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=starts[1:])
    return np.concatenate(parts).astype(np.int64), starts


@njit(cache=True)
def emit_partitions(hashes, shifts, widths, k, top_masks, top_start):
    """``(partition, hash)`` rows: a hash goes to every partition ``(block, top k bits of a key)`` that
    one of its ball keys falls in (``1 + k`` partitions per block at radius 1, not the whole ball)."""
    n = hashes.shape[0]
    m = shifts.shape[0]
    per = top_start[m]
    parts = np.empty(n * per, dtype=np.int32)
    out_h = np.empty(n * per, dtype=np.uint64)
    j = 0
    for i in range(n):
        h = hashes[i]
        for b in range(m):
            v = np.int64((h >> np.uint64(shifts[b])) & np.uint64((1 << widths[b]) - 1))
            top = v >> (widths[b] - k)
            for e in range(top_start[b], top_start[b + 1]):
                parts[j] = np.int32((b << k) | (top ^ top_masks[e]))
                out_h[j] = h
                j += 1
    return parts, out_h


@njit(cache=True)
def _records_here(x, h1, block, key_value, shifts, widths, radii, block_masks, ball, ball_start):
    """Whether group (block, key_value) is the smallest key both balls share (the pair's owner)."""
    w_mask = np.uint64((1 << widths[block]) - 1)
    sh = np.uint64(shifts[block])
    v1 = np.int64((h1 >> sh) & w_mask)
    v2 = np.int64(((h1 ^ x) >> sh) & w_mask)
    r = radii[block]
    best = np.int64(1) << 40
    for e in range(ball_start[block], ball_start[block + 1]):
        c = v1 ^ ball[e]
        if c < best and np.int64(_popcount64(np.uint64(c ^ v2))) <= r:
            best = c
    return best == key_value


@njit(cache=True)
def _push(out_a, out_b, out_d, k, a, b, d):
    """Append one record, doubling the buffers when full (only ever on a hit, which is rare)."""
    if k == out_a.shape[0]:
        grow_a = np.empty(2 * k, dtype=np.uint64)
        grow_b = np.empty(2 * k, dtype=np.uint64)
        grow_d = np.empty(2 * k, dtype=np.int64)
        grow_a[:k] = out_a
        grow_b[:k] = out_b
        grow_d[:k] = out_d
        out_a, out_b, out_d = grow_a, grow_b, grow_d
    out_a[k] = a
    out_b[k] = b
    out_d[k] = d
    return out_a, out_b, out_d, k + 1


@njit(cache=True)
def _earlier_block(x, block, block_masks, radii):
    for bb in range(block):  # an earlier block already holds the pair
        if np.int64(_popcount64(x & block_masks[bb])) <= 2 * radii[bb]:
            return True
    return False


@njit(cache=True)
def _rotl(x, s):
    if s == 0:
        return x
    return (x << np.uint64(s)) | (x >> np.uint64(64 - s))


@njit(cache=True)
def _verify_run(run, block, c, t, shifts, widths, radii, block_masks, ball, ball_start, out_a, out_b, out_d, k):
    """Records of one group (the hashes sharing key ``(block, c)``), appended to ``out_*``.

    The group's distinct hashes are sorted by their block value (a rotation puts the block's bits on
    top: Hamming distances are rotation-invariant), so members with one block value form a run. Pairs
    within such a run agree on this block, so they meet in every group of the value's ball: only the
    group whose key is the smallest value of that ball compares them. Pairs across runs are compared
    here and recorded here only if this group is their owner.
    """
    w = widths[block]
    rot = 64 - shifts[block] - w
    n = run.shape[0]
    rotated = np.empty(n, dtype=np.uint64)
    for q in range(n):
        rotated[q] = _rotl(run[q], rot)
    rotated.sort()
    m = 0
    distinct = np.empty(n, dtype=np.uint64)
    counts = np.empty(n, dtype=np.int64)
    for q in range(n):
        if m > 0 and rotated[q] == distinct[m - 1]:
            counts[m - 1] += 1
        else:
            distinct[m] = rotated[q]
            counts[m] = 1
            m += 1
    back = (64 - rot) % 64
    top = np.uint64(64 - w)
    if block == 0:  # values seen more than once, reported by the group of their own block-0 value
        w0 = np.uint64((1 << widths[0]) - 1)
        for a in range(m):
            h = _rotl(distinct[a], back)
            if counts[a] > 1 and np.int64(h & w0) == c:
                out_a, out_b, out_d, k = _push(out_a, out_b, out_d, k, h, h, 0)
    # end of each block-value run, and whether this group owns the pairs inside it
    run_end = np.empty(m, dtype=np.int64)
    own = np.zeros(m, dtype=np.bool_)
    q = m - 1
    while q >= 0:
        u = np.int64(distinct[q] >> top)
        lo = q
        while lo > 0 and np.int64(distinct[lo - 1] >> top) == u:
            lo -= 1
        smallest = u
        for e in range(ball_start[block], ball_start[block + 1]):
            smallest = min(smallest, u ^ ball[e])
        for p in range(lo, q + 1):
            run_end[p] = q + 1
            own[p] = smallest == c
        q = lo - 1
    for a in range(m - 1):
        ra = distinct[a]
        same_end = run_end[a]
        lo = a + 1 if own[a] else same_end  # skip pairs inside the run unless this group owns them
        if lo >= m or _nearest(ra, distinct[lo:m]) > t:  # branch-free vectorised scan: usually no hit
            continue
        ha = _rotl(ra, back)
        for b in range(lo, m):
            d = np.int64(_popcount64(ra ^ distinct[b]))
            if d > t:
                continue
            hb = _rotl(distinct[b], back)
            x = ha ^ hb
            if _earlier_block(x, block, block_masks, radii):
                continue
            if b >= same_end and not _records_here(
                x, ha, block, c, shifts, widths, radii, block_masks, ball, ball_start
            ):
                continue
            lo_h, hi_h = (ha, hb) if ha < hb else (hb, ha)
            out_a, out_b, out_d, k = _push(out_a, out_b, out_d, k, lo_h, hi_h, d)
    return out_a, out_b, out_d, k


@njit(cache=True)
def verify_partition_kernel(hashes, block, top, k_bits, t, shifts, widths, radii, block_masks, ball, ball_start):
    """Records of one shuffled partition ``(block, top)``: each hash's ball keys with those top bits,
    bucketed by a counting sort on the remaining key bits, then every bucket (group) verified.

    Returns ``(a, b, d)``: pairs ``a < b`` within ``t`` recorded by their owning group, and ``(h, h, 0)``
    for values seen more than once. Memory is O(partition + hits), however hot a key is: a group is
    scanned row by row against the rest of it, never materialised as pairs.
    """
    n = hashes.shape[0]
    w = widths[block]
    low_bits = w - k_bits
    sh = np.uint64(shifts[block])
    wm = np.uint64((1 << w) - 1)
    low_mask = (np.int64(1) << low_bits) - 1
    offsets = np.zeros((np.int64(1) << low_bits) + 1, dtype=np.int64)
    for i in range(n):
        v = np.int64((hashes[i] >> sh) & wm)
        for e in range(ball_start[block], ball_start[block + 1]):
            c = v ^ ball[e]
            if (c >> low_bits) == top:
                offsets[(c & low_mask) + 1] += 1
    for q in range(offsets.shape[0] - 1):
        offsets[q + 1] += offsets[q]
    fill = offsets[:-1].copy()
    bucketed = np.empty(offsets[-1], dtype=np.uint64)
    for i in range(n):
        v = np.int64((hashes[i] >> sh) & wm)
        for e in range(ball_start[block], ball_start[block + 1]):
            c = v ^ ball[e]
            if (c >> low_bits) == top:
                bucketed[fill[c & low_mask]] = hashes[i]
                fill[c & low_mask] += 1
    out_a = np.empty(1024, dtype=np.uint64)
    out_b = np.empty(1024, dtype=np.uint64)
    out_d = np.empty(1024, dtype=np.int64)
    k = 0
    tt = np.int64(t)
    for q in range(offsets.shape[0] - 1):
        s0, s1 = offsets[q], offsets[q + 1]
        if s1 - s0 < 2:
            continue
        c = (np.int64(top) << low_bits) | q
        out_a, out_b, out_d, k = _verify_run(
            bucketed[s0:s1], block, c, tt, shifts, widths, radii, block_masks, ball, ball_start, out_a, out_b, out_d, k
        )
    return out_a[:k].copy(), out_b[:k].copy(), out_d[:k].copy()


def verify_partition(
    partition: int, hashes: np.ndarray, t: int, arrays: dict, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Records of one shuffled partition ``(block << k) | top`` (see :func:`verify_partition_kernel`)."""
    block, top = int(partition) >> k, int(partition) & ((1 << k) - 1)
    return verify_partition_kernel(
        np.ascontiguousarray(hashes, dtype=np.uint64),
        block,
        top,
        k,
        int(t),
        arrays["shifts"],
        arrays["widths"],
        arrays["radii"],
        arrays["block_masks"],
        arrays["ball"],
        arrays["ball_start"],
    )
