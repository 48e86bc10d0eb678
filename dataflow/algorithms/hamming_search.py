"""All pairs of 64-bit hashes within a Hamming distance: exact, via the block (multi-index) method.

Method
------
Split the 64 bits into ``m`` blocks of widths ``w_b`` and give each block a radius ``r_b`` with
``sum(r_b + 1) > t``. If two hashes differ in at most ``t`` bits, at least one block differs in at most
``r_b`` bits (otherwise the total would be at least ``sum(r_b + 1) > t``). So every pair is found by
bucketing each block's values (a counting sort over the ``2**w_b`` possible values) and comparing each
bucket with itself and with the buckets whose value is within ``r_b`` bits. Candidates are verified by
popcount, and a pair is recorded only by the first block that can find it, so no global set is needed.

The search always runs over the *unique* hash values: identical hashes (flat, dark and letterboxed
images collide a lot) would otherwise make one bucket quadratic. :func:`find_near_duplicate_unique`
returns pairs over unique values plus the inverse mapping (what the dedup operator uses);
:func:`find_near_duplicates` expands them to every row pair, the brute-force contract.

Block layout (:func:`choose_layout`)
------------------------------------
For each block count ``m`` from 3 to ``min(max(t + 1, 3), 16)``, the widths are as equal as possible
(``m = 4``: four 16-bit blocks) and the ``max(0, t + 1 - m)`` radius units are handed out greedily to
the block where one more unit adds the least estimated work (:func:`hamming_layout._block_cost`: a fixed overhead
per bucket value and neighbour mask, plus ``n**2 / 2**w / 2`` candidate checks per mask for
uniformly spread hashes). The cheapest ``m`` wins, or brute force (every pair, in chunks) where that
is estimated cheaper: tiny inputs (up to about 1,000 hashes at t = 10) and large ``t`` (from t = 19
at 10,000 hashes, t = 26 at a million). Given the hashes, the three best layouts are priced again on
a sample of them, so the hot buckets of skewed data count as they are.

Examples: t = 10 at a million hashes gives four 16-bit blocks with radii (2, 2, 2, 1); at 200,000
hashes five blocks (13, 13, 13, 13, 12) with radii (2, 1, 1, 1, 1); t <= 3 gives four 16-bit blocks
searched exactly. t = 0 needs no search: distinct values differ in at least one bit.

Both kernels run on a thread pool (they release the GIL), one task per slice of bucket values or
rows, and write into a fixed buffer that the caller drains, so memory is O(n + pairs found).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from dataflow.algorithms.hamming_layout import MAX_BLOCK_WIDTH, BlockLayout, choose_layout, masks_within

__all__ = [
    "BlockLayout",
    "UniquePairs",
    "choose_layout",
    "expand_unique_pairs",
    "find_near_duplicate_unique",
    "find_near_duplicates",
    "hamming_distance",
    "search_unique",
]

# --------------------------------------------------------------------------------------------------
# popcount


@intrinsic
def _popcount64(typingctx, x):
    """LLVM ctpop: a single POPCNT instruction on x86-64 (numba has no popcount of its own)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


def _popcount_numpy(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(np.int64)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
    x = np.ascontiguousarray(x, dtype=np.uint64)
    return table[x.view(np.uint8).reshape(x.shape + (8,))].sum(axis=-1)


def hamming_distance(a, b) -> np.ndarray:
    """Number of differing bits between 64-bit hashes ``a`` and ``b`` (broadcast), as int64."""
    x = np.bitwise_xor(_as_uint64(a), _as_uint64(b))
    return _popcount_numpy(x)


def _as_uint64(values) -> np.ndarray:
    """Hashes as uint64; signed int64 (as pandas stores them) is reinterpreted bit for bit."""
    arr = np.asarray(values)
    if arr.dtype == np.uint64:
        return arr
    if arr.dtype == np.int64:
        return arr.view(np.uint64)
    if arr.dtype.kind == "u":
        return arr.astype(np.uint64)
    if arr.dtype.kind == "i":  # two's complement, as int64 would store it
        return arr.astype(np.int64).view(np.uint64)
    if arr.dtype == object:  # Python ints, possibly >= 2**63
        flat = [int(v) & 0xFFFFFFFFFFFFFFFF for v in arr.ravel()]
        return np.array(flat, dtype=np.uint64).reshape(arr.shape)
    raise TypeError(f"hashes must be integers (uint64), got dtype {arr.dtype}")


# --------------------------------------------------------------------------------------------------
# numba kernels. Each writes pair keys ``(i << 32) | j`` (i < j, unique indices) into a caller-given
# buffer and stops early when it could overflow, returning how far it got; the caller saves the keys
# and resumes. (Growing the buffer inside the loop would make numba reference-count it per candidate.)


@njit(cache=True, nogil=True)
def _pair_key(a, b):
    if a < b:
        return (np.uint64(a) << np.uint64(32)) | np.uint64(b)
    return (np.uint64(b) << np.uint64(32)) | np.uint64(a)


@njit(cache=True, nogil=True)
def _found_earlier(x, block, block_masks, radii):
    # The pair is recorded by the first block where it is within that block's radius.
    for bb in range(block):
        if np.int64(_popcount64(x & block_masks[bb])) <= radii[bb]:
            return True
    return False


@njit(cache=True, nogil=True)
def _nearest(h, hashes):
    # Branch-free, so LLVM vectorises it (vpopcntq where the CPU has it): the common case is "no hit".
    best = np.int64(64)
    for b in range(hashes.shape[0]):
        best = min(best, np.int64(_popcount64(h ^ hashes[b])))
    return best


@njit(cache=True, nogil=True)
def _emit(h, h_id, cand, cand_ids, block, block_masks, radii, t, buf, k):
    """Append pairs of ``h`` with the candidates within ``t``; returns the new count, -1 when ``buf`` is full."""
    if cand.shape[0] == 0 or _nearest(h, cand) > t:
        return k
    for x in range(cand.shape[0]):
        y = h ^ cand[x]
        if np.int64(_popcount64(y)) <= t and not _found_earlier(y, block, block_masks, radii):
            if k == buf.shape[0]:
                return -1
            buf[k] = _pair_key(h_id, cand_ids[x])
            k += 1
    return k


@njit(cache=True, nogil=True)
def _search_block(sorted_hashes, sorted_ids, offsets, masks, block, block_masks, radii, t, values, q_lo, q_hi, buf):
    """Pairs within ``t`` whose block-``block`` values lie within its radius, for bucket values
    ``values[q_lo:q_hi]`` (sorted, non-empty buckets).

    Each bucket ``v`` is compared with itself and with the buckets ``u = v ^ mask > v`` (each pair of
    values from one side only). Those neighbouring buckets are small and scattered, so their hashes
    are first gathered into one contiguous run, which the popcount loop then scans vectorised.
    Returns ``(k, q_next)``: ``buf[:k]`` holds the pairs of values [q_lo, q_next); q_next < q_hi means
    the buffer filled up at value q_next.
    """
    tt = np.int64(t)
    gather = 4096
    g_hashes = np.empty(gather, dtype=np.uint64)
    g_ids = np.empty(gather, dtype=np.int64)
    k = 0
    for q in range(q_lo, q_hi):
        v = values[q]
        s0 = offsets[v]
        s1 = offsets[v + 1]
        k_start = k
        for a in range(s0, s1):  # same bucket: each pair once (b after a)
            k = _emit(
                sorted_hashes[a],
                sorted_ids[a],
                sorted_hashes[a + 1 : s1],
                sorted_ids[a + 1 : s1],
                block,
                block_masks,
                radii,
                tt,
                buf,
                k,
            )
            if k < 0:
                return k_start, q
        m = 0
        for mi in range(1, masks.shape[0] + 1):
            u0 = 0
            size = 0
            if mi < masks.shape[0]:
                u = v ^ masks[mi]
                if u <= v:
                    continue
                u0 = offsets[u]
                size = offsets[u + 1] - u0
                if size == 0:
                    continue
            # Scan what was gathered when it is full, before a big bucket, and at the end.
            if m > 0 and (mi == masks.shape[0] or m + size > gather or size > gather // 2):
                for a in range(s0, s1):
                    k = _emit(
                        sorted_hashes[a], sorted_ids[a], g_hashes[:m], g_ids[:m], block, block_masks, radii, tt, buf, k
                    )
                    if k < 0:
                        return k_start, q
                m = 0
            if size > gather // 2:  # a big bucket is contiguous already
                for a in range(s0, s1):
                    k = _emit(
                        sorted_hashes[a],
                        sorted_ids[a],
                        sorted_hashes[u0 : u0 + size],
                        sorted_ids[u0 : u0 + size],
                        block,
                        block_masks,
                        radii,
                        tt,
                        buf,
                        k,
                    )
                    if k < 0:
                        return k_start, q
            elif size > 0:
                g_hashes[m : m + size] = sorted_hashes[u0 : u0 + size]
                g_ids[m : m + size] = sorted_ids[u0 : u0 + size]
                m += size
    return k, q_hi


@njit(cache=True, nogil=True)
def _search_brute(hashes, t, i_lo, i_hi, buf):
    """Pairs within ``t`` with the smaller index in [i_lo, i_hi), comparing every pair; returns like
    :func:`_search_block`."""
    cap = buf.shape[0]
    k = 0
    n = hashes.shape[0]
    tt = np.int64(t)
    step = 512
    for i in range(i_lo, i_hi):
        k_start = k
        hi = hashes[i]
        for c in range(i + 1, n, step):
            end = min(c + step, n)
            if _nearest(hi, hashes[c:end]) > tt:
                continue
            for j in range(c, end):
                if np.int64(_popcount64(hi ^ hashes[j])) <= tt:
                    if k == cap:
                        return k_start, i
                    buf[k] = (np.uint64(i) << np.uint64(32)) | np.uint64(j)
                    k += 1
    return k, i_hi


def _collect(kernel, args: tuple, lo: int, hi: int) -> np.ndarray:
    """Call a kernel over units [lo, hi) (bucket values or rows) until done, saving its keys and
    doubling the buffer when one unit fills more than half of it."""
    buf = np.empty(1 << 14, dtype=np.uint64)
    parts = []
    while lo < hi:
        k, lo = kernel(*args, lo, hi, buf)
        parts.append(buf[:k].copy())
        if lo < hi and k < buf.shape[0] // 2:
            buf = np.empty(buf.shape[0] * 2, dtype=np.uint64)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)


# --------------------------------------------------------------------------------------------------
# unique-level search


def _n_jobs(n_jobs: int | None) -> int:
    if n_jobs is not None and n_jobs > 0:
        return int(n_jobs)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _run_tasks(kernel, tasks: list[tuple[tuple, int, int]], n_jobs: int) -> np.ndarray:
    """Run ``(args, lo, hi)`` kernel tasks (they release the GIL) on threads; concatenate their keys."""
    if n_jobs == 1 or len(tasks) <= 1:
        parts = [_collect(kernel, *task) for task in tasks]
    else:
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            parts = list(pool.map(lambda task: _collect(kernel, *task), tasks))
    if not parts:
        return np.empty(0, dtype=np.uint64)
    return np.concatenate(parts)


def _brute_tasks(hashes: np.ndarray, t: int, n_chunks: int) -> list[tuple]:
    # Row i compares with n - i - 1 others: cut the triangle into chunks of equal area.
    n = hashes.shape[0]
    fractions = np.linspace(0.0, 1.0, n_chunks + 1)
    bounds = np.unique(np.round(n - n * np.sqrt(1.0 - fractions)).astype(np.int64))
    return [((hashes, t), int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


@njit(cache=True)
def _bucket_sort(hashes, shift, width):
    """Counting sort by one block's value: bucket offsets (2**width + 1) and the hash indices in order."""
    mask = np.uint64((1 << width) - 1)
    sh = np.uint64(shift)
    offsets = np.zeros((1 << width) + 1, dtype=np.int64)
    for i in range(hashes.shape[0]):
        offsets[np.int64((hashes[i] >> sh) & mask) + 1] += 1
    for v in range(1 << width):
        offsets[v + 1] += offsets[v]
    fill = offsets[:-1].copy()
    order = np.empty(hashes.shape[0], dtype=np.int64)
    for i in range(hashes.shape[0]):
        v = np.int64((hashes[i] >> sh) & mask)
        order[fill[v]] = i
        fill[v] += 1
    return offsets, order


def _block_tasks(hashes: np.ndarray, t: int, layout: BlockLayout, n_chunks: int) -> list[tuple]:
    n = hashes.shape[0]
    block_masks = np.array([((1 << w) - 1) << s for w, s in zip(layout.widths, layout.shifts)], dtype=np.uint64)
    radii = np.array(layout.radii, dtype=np.int64)
    tasks = []
    for block, (width, shift, radius) in enumerate(zip(layout.widths, layout.shifts, layout.radii)):
        offsets, sorted_ids = _bucket_sort(hashes, shift, width)
        sorted_hashes = hashes[sorted_ids]
        masks = masks_within(width, radius)
        nonempty = np.flatnonzero(offsets[1:] > offsets[:-1])
        # Cut the values where the cumulative item count crosses equal steps, for balance.
        cuts = np.searchsorted(offsets[nonempty + 1], np.linspace(0, n, n_chunks + 1)[1:-1], side="left")
        bounds = np.unique(np.concatenate(([0], cuts, [nonempty.shape[0]])))
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            values = nonempty[lo:hi]
            if values.shape[0]:
                args = (sorted_hashes, sorted_ids, offsets, masks, block, block_masks, radii, t, values)
                tasks.append((args, 0, int(values.shape[0])))
    return tasks


def search_unique(
    unique_hashes: np.ndarray,
    max_distance: int,
    *,
    method: str | BlockLayout = "auto",
    n_jobs: int | None = None,
) -> np.ndarray:
    """All pairs of *distinct* hashes within ``max_distance`` bits.

    ``unique_hashes`` must hold no repeated value (use :func:`find_near_duplicate_unique` otherwise).
    Returns an (M, 3) int64 array of ``(i, j, distance)`` over positions in ``unique_hashes``, i < j,
    sorted lexicographically. ``method`` is "auto" (see :func:`choose_layout`), "blocks" (the cheapest
    block layout even where brute force would be cheaper), "brute", or a given :class:`BlockLayout`.
    """
    hashes = np.ascontiguousarray(_as_uint64(unique_hashes))
    t = _check_distance(max_distance)
    if hashes.ndim != 1:
        raise ValueError("hashes must be a 1-D array")
    n = hashes.shape[0]
    if n >= 2**31:
        raise ValueError("at most 2**31 - 1 unique hashes are supported")
    if isinstance(method, BlockLayout):
        if sum(method.widths) != 64 or not method.covers(t) or max(method.widths) > MAX_BLOCK_WIDTH:
            raise ValueError(f"{method} does not cover max_distance={t} with 64 bits in blocks of <= 22 bits")
    elif method not in ("auto", "blocks", "brute"):
        raise ValueError(f"method must be 'auto', 'blocks', 'brute' or a BlockLayout, got {method!r}")
    if n < 2 or t == 0:  # distinct values are at least 1 bit apart
        return np.empty((0, 3), dtype=np.int64)
    # Below a few thousand hashes the search takes microseconds: a thread pool would only add overhead.
    jobs = _n_jobs(n_jobs) if n >= 8192 or n_jobs else 1
    if isinstance(method, BlockLayout):
        layout = method
    elif method == "blocks":
        layout = _cheapest_block_layout(t, n)
    else:
        layout = choose_layout(t, n, hashes=hashes) if method == "auto" else None
    if layout is None:
        keys = _run_tasks(_search_brute, _brute_tasks(hashes, t, 4 * jobs), jobs)
    else:
        keys = _run_tasks(_search_block, _block_tasks(hashes, t, layout, 4 * jobs), jobs)
    keys.sort()
    return _decode_keys(keys, hashes)


@njit(cache=True)
def _decode_keys(keys, hashes):
    """(M, 3) rows ``(i, j, distance)`` from pair keys ``(i << 32) | j``."""
    out = np.empty((keys.shape[0], 3), dtype=np.int64)
    for k in range(keys.shape[0]):
        i = np.int64(keys[k] >> np.uint64(32))
        j = np.int64(keys[k] & np.uint64(0xFFFFFFFF))
        out[k, 0] = i
        out[k, 1] = j
        out[k, 2] = np.int64(_popcount64(hashes[i] ^ hashes[j]))
    return out


def _cheapest_block_layout(t: int, n: int) -> BlockLayout:
    """The block layout even when brute force would be cheaper (tests and benchmarks force blocks)."""
    layout = choose_layout(t, n, allow_brute=False)
    if layout is None:
        raise ValueError(f"no block layout can cover max_distance={t}; use method='brute'")
    return layout


def _check_distance(max_distance: int) -> int:
    t = int(max_distance)
    if t != max_distance or t < 0:
        raise ValueError(f"max_distance must be a non-negative integer, got {max_distance!r}")
    return min(t, 64)


@dataclass(frozen=True)
class UniquePairs:
    """Near-duplicate pairs over the unique values of a hash array.

    ``unique[inverse] == hashes``; ``counts[u]`` rows carry unique value ``u`` (those rows are
    distance-0 duplicates of each other); ``pairs`` is (M, 3) int64 ``(u, v, distance)`` over
    unique indices, u < v, sorted.
    """

    unique: np.ndarray
    inverse: np.ndarray
    counts: np.ndarray
    pairs: np.ndarray


def find_near_duplicate_unique(
    hashes: np.ndarray,
    max_distance: int,
    *,
    method: str | BlockLayout = "auto",
    n_jobs: int | None = None,
) -> UniquePairs:
    """Merge identical hashes, then find all pairs of distinct values within ``max_distance`` bits."""
    arr = _as_uint64(hashes)
    if arr.ndim != 1:
        raise ValueError("hashes must be a 1-D array")
    unique, inverse, counts = np.unique(arr, return_inverse=True, return_counts=True)
    pairs = search_unique(unique, max_distance, method=method, n_jobs=n_jobs)
    return UniquePairs(unique, inverse.astype(np.int64).ravel(), counts.astype(np.int64), pairs)


# --------------------------------------------------------------------------------------------------
# row expansion


@njit(cache=True)
def _expand_count(inverse, rank, counts, group_rows, group_start, adj_start, adj_v):
    """Per row i: pairs (i, j > i) with its identical rows, and with rows of neighbouring values."""
    n = inverse.shape[0]
    same = np.empty(n, dtype=np.int64)
    other = np.empty(n, dtype=np.int64)
    for i in range(n):
        u = inverse[i]
        same[i] = counts[u] - rank[i] - 1  # identical rows after i
        c = 0
        for e in range(adj_start[u], adj_start[u + 1]):
            v = adj_v[e]
            s0 = group_start[v]
            s1 = group_start[v + 1]
            c += s1 - s0 - np.searchsorted(group_rows[s0:s1], i, side="right")
        other[i] = c
    return same, other


@njit(cache=True)
def _expand_fill(inverse, rank, group_rows, group_start, adj_start, adj_v, adj_d, row_start, same, other, out):
    n = inverse.shape[0]
    max_other = 0
    for i in range(n):
        max_other = max(max_other, other[i])
    tmp_j = np.empty(max_other, dtype=np.int64)
    tmp_d = np.empty(max_other, dtype=np.int64)
    for i in range(n):
        u = inverse[i]
        # Rows of neighbouring values, gathered then sorted (usually few)...
        m = 0
        for e in range(adj_start[u], adj_start[u + 1]):
            v = adj_v[e]
            s0 = group_start[v]
            s1 = group_start[v + 1]
            for p in range(s0 + np.searchsorted(group_rows[s0:s1], i, side="right"), s1):
                tmp_j[m] = group_rows[p]
                tmp_d[m] = adj_d[e]
                m += 1
        if m > 1:
            order = np.argsort(tmp_j[:m])
            tmp_j[:m] = tmp_j[:m][order]
            tmp_d[:m] = tmp_d[:m][order]
        # ...merged with the identical rows after i, which are already in row order.
        p = group_start[u] + rank[i] + 1
        p_end = p + same[i]
        q = 0
        for k in range(row_start[i], row_start[i + 1]):
            out[k, 0] = i
            if q == m or (p < p_end and group_rows[p] < tmp_j[q]):
                out[k, 1] = group_rows[p]
                out[k, 2] = 0
                p += 1
            else:
                out[k, 1] = tmp_j[q]
                out[k, 2] = tmp_d[q]
                q += 1


def expand_unique_pairs(pairs: np.ndarray, inverse: np.ndarray, n_unique: int | None = None) -> np.ndarray:
    """Row-level pairs from unique-level ``pairs`` and ``inverse`` (row -> unique index).

    Returns (M, 3) int64 ``(i, j, distance)`` over rows, i < j, sorted lexicographically: every pair
    of rows sharing a unique value (distance 0) plus every row pair of each unique-level pair.
    """
    inverse = np.asarray(inverse, dtype=np.int64).ravel()
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 3)
    n = inverse.shape[0]
    u_count = int(n_unique) if n_unique is not None else (int(inverse.max()) + 1 if n else 0)
    counts = np.bincount(inverse, minlength=u_count).astype(np.int64)
    group_rows = np.argsort(inverse, kind="stable").astype(np.int64)  # rows ascending within a group
    group_start = np.zeros(u_count + 1, dtype=np.int64)
    np.cumsum(counts, out=group_start[1:])
    rank = np.empty(n, dtype=np.int64)
    rank[group_rows] = np.arange(n, dtype=np.int64) - group_start[inverse[group_rows]]
    # Both directions of every unique pair, as CSR adjacency.
    src = np.concatenate((pairs[:, 0], pairs[:, 1]))
    dst = np.concatenate((pairs[:, 1], pairs[:, 0]))
    dist = np.concatenate((pairs[:, 2], pairs[:, 2]))
    order = np.argsort(src, kind="stable")
    adj_v, adj_d = dst[order], dist[order]
    adj_start = np.zeros(u_count + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=u_count), out=adj_start[1:])
    same, other = _expand_count(inverse, rank, counts, group_rows, group_start, adj_start, adj_v)
    row_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(same + other, out=row_start[1:])
    out = np.empty((int(row_start[-1]), 3), dtype=np.int64)
    _expand_fill(inverse, rank, group_rows, group_start, adj_start, adj_v, adj_d, row_start, same, other, out)
    return out


def find_near_duplicates(
    hashes: np.ndarray,
    max_distance: int,
    *,
    method: str | BlockLayout = "auto",
    n_jobs: int | None = None,
) -> np.ndarray:
    """Every pair of rows whose 64-bit hashes differ in at most ``max_distance`` bits.

    Returns an (M, 3) int64 array of ``(i, j, distance)`` with i < j, sorted lexicographically: exactly
    what comparing all pairs would return. Identical hashes are merged before the search, so large
    groups of equal hashes cost only their output.
    """
    found = find_near_duplicate_unique(hashes, max_distance, method=method, n_jobs=n_jobs)
    return expand_unique_pairs(found.pairs, found.inverse, found.unique.shape[0])
