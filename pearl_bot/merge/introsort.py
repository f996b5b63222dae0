"""The set of the first k indices of torch's CPU `argsort(descending=True)`, found in O(n).

torch (aten/src/ATen/native/cpu/SortingKernel.cpp) sorts a CPU tensor that is not routed to
x86-simd-sort or fbgemm's radix sort with `std::sort` over (key, index) pairs, comparing
`key_a > key_b` for a descending sort. libstdc++'s `std::sort` is an introsort:

- `__introsort_loop(first, last, 2 * floor(log2(n)))` partitions while a range has more than
  16 elements: the median of `first + 1`, the middle and `last - 1` is swapped to `first`, and
  an unguarded Hoare partition of `[first + 1, last)` around it returns a cut. The loop recurses
  on `[cut, last)` and continues on `[first, cut)` (the pivot stays at `first`), each level with
  one less depth; at depth 0 the range is heapsorted instead.
- `__final_insertion_sort` then runs a stable insertion sort over the whole array. It never
  moves an element across a cut (every key left of a cut is >= every key right of it), so it
  sorts each range of <= 16 elements stably in place.

Which tied elements end among the first k therefore depends only on the partition steps of the
ranges that contain the boundary k, and this module follows just those, which costs O(n). A
partition step is computed without a loop over elements: the left scanner stops at the
positions (ascending from `first + 1`) whose key is <= the pivot, the right one at the positions
(descending from `last - 1`) whose key is >= it; the t-th stops of both are swapped while the
left one is below the right one, and every position is read by at most one scanner before they
cross, so all stops follow from the keys before the step. After T swaps the cut is the
(T+1)-th left stop or, when that lies beyond it, the T-th right stop.

A range that reaches depth 0 on the followed path (a heapsort, which this module does not
replicate) falls back to the real argsort of its row.

Evidence: SortingKernel.cpp routes Int/Long/Float/Double to x86-simd-sort when torch is built
with it (AVX2/AVX512), and ascending 1-D integer sorts to fbgemm's radix sort; everything else,
and int16 always, goes to `std::sort`. With the torch 2.13 CPU wheel on an AVX2 host, a scalar
transcription of the introsort above gave torch's whole permutation for int16, int32, int64,
float32 and float64 keys (6,600 inputs, 1 and 2 threads, batched rows), and this module's set
matched torch's on 3,830 [rows, n] inputs up to n = 1.1e6 with no heapsort fallback.

NOTE: not used by the trim yet. Its torch ops (two nonzero, gathers and scatters per level)
cost more per element than the whole std::sort on a 2-core host: two bf16 rows of 16.7M keys
took 1.59 s against 1.30 s for the batched argsort; nonzero alone was 48% of the time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

#: libstdc++'s `_S_threshold`: ranges at most this long are left to the insertion sort.
INSERTION_THRESHOLD = 16


@dataclass
class ReplicaStats:
    """How many rows the replica answered and how many fell back to a full argsort."""

    rows: int = 0
    heapsort_fallbacks: int = 0


stats = ReplicaStats()


def topk_like_argsort(keys: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Mask [rows, n] of `torch.argsort(keys[r], descending=True)[:counts[r]]` for every row.

    `keys` is an integer tensor [rows, n]; the selected set equals torch's exactly, ties
    included, as long as torch sorts it with libstdc++'s `std::sort`.
    """
    mask = torch.zeros(keys.shape, dtype=torch.bool)
    for row, k in enumerate(counts):
        stats.rows += 1
        if k >= keys.shape[1]:
            mask[row] = True
        elif k > 0 and not _mask_row(keys[row], k, mask[row]):
            stats.heapsort_fallbacks += 1
            logger.debug("introsort replica: depth limit reached, full argsort of one row")
            order = torch.argsort(keys[row], descending=True)
            mask[row, order[:k]] = True
    return mask


def _mask_row(keys: torch.Tensor, k: int, out: torch.Tensor) -> bool:
    """Set `out` to the first-k mask of one row (0 < k < n); False where introsort heapsorts."""
    pieces = _first_k_pieces(keys, k)
    if pieces is None:
        return False
    last = int(pieces[-1][0].min())
    torch.gt(keys, last, out=out)
    for piece_keys, piece_idx in pieces:
        out[piece_idx[piece_keys == last]] = True
    return True


def _first_k_pieces(keys: torch.Tensor, k: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """(keys, indices) of the ranges that together hold the sort's first k elements."""
    seg_keys = keys.clone()
    seg_idx = torch.arange(keys.numel(), dtype=torch.int32)
    pieces: list[tuple[torch.Tensor, torch.Tensor]] = []
    depth = depth_limit(keys.numel())
    while seg_keys.numel() > INSERTION_THRESHOLD:
        if depth == 0:
            return None
        depth -= 1
        cut = partition_step(seg_keys, seg_idx, k)
        if k >= cut:
            pieces.append((seg_keys[:cut], seg_idx[:cut]))
            if k == cut:
                return pieces
            seg_keys, seg_idx, k = seg_keys[cut:], seg_idx[cut:], k - cut
        else:
            seg_keys, seg_idx = seg_keys[:cut], seg_idx[:cut]
    # The final insertion sort is stable and stays inside this range.
    order = torch.sort(seg_keys, descending=True, stable=True).indices[:k]
    pieces.append((seg_keys[order], seg_idx[order]))
    return pieces


def depth_limit(size: int) -> int:
    """libstdc++'s introsort depth budget, `2 * __lg(n)`."""
    return 2 * (size.bit_length() - 1)


def partition_step(seg_keys: torch.Tensor, seg_idx: torch.Tensor, k: int) -> int:
    """One `__unguarded_partition_pivot` on the range, in place; returns the cut.

    The right side receives its swapped-in elements only when k is beyond the cut: otherwise
    it is never read again.
    """
    size = seg_keys.numel()
    _move_median_to_first(seg_keys, seg_idx, (1, size // 2, size - 1))
    pivot = int(seg_keys[0])
    body = seg_keys[1:]
    left = torch.nonzero(body <= pivot).squeeze(1)
    right = torch.nonzero(body >= pivot).squeeze(1)
    swaps = _count_swaps(left, right)
    cut = int(left[swaps]) + 1 if swaps < left.numel() else size
    if swaps:
        cut = min(cut, int(right[right.numel() - swaps]) + 1)
        # Left stops ascending pair with right stops descending.
        lefts, rights = left[:swaps] + 1, right[right.numel() - swaps :].flip(0) + 1
        for values in (seg_keys, seg_idx):
            moved = values[lefts]
            values[lefts] = values[rights]
            if k >= cut:
                values[rights] = moved
    if not 0 < cut < size:
        raise AssertionError(f"partition cut {cut} outside (0, {size})")
    return cut


def _count_swaps(left: torch.Tensor, right: torch.Tensor) -> int:
    """How many stop pairs the scanners swap: the t with left[t] < right[-1 - t], a prefix."""
    lo, hi = 0, min(left.numel(), right.numel())
    last = right.numel() - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if int(left[mid]) < int(right[last - mid]):
            lo = mid + 1
        else:
            hi = mid
    return lo


def _move_median_to_first(
    seg_keys: torch.Tensor, seg_idx: torch.Tensor, where: tuple[int, int, int]
) -> None:
    """libstdc++'s `__move_median_to_first(first, a, b, c)` with comp(x, y) = x > y."""
    a, b, c = where
    ka, kb, kc = (int(seg_keys[i]) for i in where)
    if ka > kb:
        chosen = b if kb > kc else (c if ka > kc else a)
    else:
        chosen = a if ka > kc else (c if kb > kc else b)
    for values in (seg_keys, seg_idx):
        first = values[0].clone()
        values[0] = values[chosen]
        values[chosen] = first
